"""Building a net for one treatment, and the solver's per-parameter learning rates and decay.

Mechanics as in the authors' Caffe setup (reference §2):
* copied layers 1..n take the source net's FINAL weights and biases, by layer name;
* layers n+1..8 are re-initialised from the filler (Caffe: renamed ``*-new`` so nothing is copied);
* frozen layers (BnB, AnB, random filters) get lr 0 and no decay on weights and biases; here they are
  left out of the optimiser and run without autograd;
* fine-tuned layers ("+") keep the full schedule: weights lr x1 decay x1, biases lr x2 decay x0.
"""

from __future__ import annotations

import torch

from .models import caffenet, units
from .models.caffenet import LAYERS, CaffeNet, NetSpec
from .models.units import UnitNet, UnitSpec
from .settings import Net, Train


def spec_from_config(net: Net | dict, outputs: int) -> NetSpec | UnitSpec:
    """The spec of the config's ``net``: CaffeNet's (the paper's and the demo's), or a unit network's."""
    net = Net.from_dict(net)
    if net.arch.startswith("caffenet"):
        return caffenet.spec_from_config(net, outputs)
    return units.spec_from_config(net, outputs)


def build_net(spec: NetSpec | UnitSpec, *, n: int | None = 0, source_state: dict | None = None,
              freeze: bool = False, seed: int = 0) -> CaffeNet | UnitNet:
    """A net with layers (units) 1..n copied from ``source_state`` (or left random if None) and, when
    ``freeze``, those frozen; every other layer drawn from the filler with ``seed``. ``n`` None: the whole
    source net, head included (the base net trained on)."""
    if isinstance(spec, UnitSpec):
        net = units.build(spec.arch, spec.outputs, seed=seed, image_size=spec.crop, units=spec.units)
    else:
        torch.manual_seed(seed)
        net = CaffeNet(spec)
        net.reset_parameters(generator=torch.Generator().manual_seed(seed))
    if n is None:
        return net.transfer(len(net.units), source_state, freeze, head=True)
    return net.transfer(n, source_state, freeze)  # one copy/freeze for every family (models/protocol.py)


def param_groups(net: CaffeNet) -> list[dict]:
    """One group per trainable tensor, with Caffe's multipliers: weights (lr x1, decay x1), biases
    (lr x2, decay x0). Frozen tensors (requires_grad False) are not in any group."""
    groups = []
    for name in LAYERS:
        layer = net.layer(name)
        for p, lr_mult, decay_mult in ((layer.weight, 1.0, 1.0), (layer.bias, 2.0, 0.0)):
            if p.requires_grad:
                groups.append({"params": [p], "lr_mult": lr_mult, "decay_mult": decay_mult,
                               "name": f"{name}.{'weight' if p is layer.weight else 'bias'}"})
    return groups


def make_optimizer(net, train: Train | dict) -> torch.optim.Optimizer:
    """``train.optimizer``: Caffe's SGD with its multipliers (the paper, CaffeNet), torch's SGD with
    momentum (ResNets) or AdamW (ViTs). The last two decay only weight matrices and kernels: not biases,
    normalisation parameters, the class token or position embeddings (all of at most one dimension, or
    named so: each family's ``decays``). Frozen parameters are in no group."""
    train = Train.from_dict(train)
    kind, lr, wd = train.optimizer, train.lr, train.weight_decay
    if kind == "caffe_sgd":
        if not isinstance(net, CaffeNet):
            raise ValueError("train.optimizer: caffe_sgd applies Caffe's per-layer multipliers to CaffeNet only")
        return CaffeSGD(param_groups(net), lr=lr, momentum=train.momentum, weight_decay=wd)
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (decay if net.decays(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=train.momentum)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    raise ValueError(f"train.optimizer: unknown {kind!r} (allowed: caffe_sgd, sgd, adamw)")


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's SGD update: v = momentum * v + lr_eff * (grad + decay_eff * w); w -= v.

    Unlike torch.optim.SGD the learning rate sits inside the momentum buffer, so after a step drop the
    velocity already carries the old, larger steps (as in the paper's runs)."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, weight_decay: float):
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "lr_mult": 1.0, "decay_mult": 1.0})

    # torch wraps these four Optimizer methods in torch._disable_dynamo, whose first call imports
    # torch._dynamo: 1.5-3 s of CPU in every training job, more than a micro net's whole training. The
    # wrapper only matters while torch.compile traces the method; the trainer compiles nets' forwards
    # (train.compile), never the optimizer, so CaffeSGD calls the plain methods (tests/test_train.py checks
    # that a CaffeNet job never imports torch._dynamo, and that its results do not change).
    add_param_group = torch.optim.Optimizer.add_param_group.__wrapped__
    zero_grad = torch.optim.Optimizer.zero_grad.__wrapped__
    state_dict = torch.optim.Optimizer.state_dict.__wrapped__
    load_state_dict = torch.optim.Optimizer.load_state_dict.__wrapped__

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401
        # Tensors with the same lr and decay are updated together, one fused (foreach) kernel per
        # operation instead of one per tensor: on a GPU the step is a handful of launches. Per element the
        # arithmetic is exactly the one-tensor-at-a-time update's.
        buckets: dict[tuple, tuple[list, list, list]] = {}
        for g in self.param_groups:
            lr = g["lr"] * g["lr_mult"]
            wd = g["weight_decay"] * g["decay_mult"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p)
                ps, grads, bufs = buckets.setdefault((lr, wd, g["momentum"], p.device, p.dtype), ([], [], []))
                ps.append(p)
                grads.append(p.grad)
                bufs.append(st["momentum_buffer"])
        for (lr, wd, momentum, _, _), (ps, grads, bufs) in buckets.items():
            d = grads if wd == 0 else torch._foreach_add(grads, ps, alpha=wd)
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, d, alpha=lr)
            torch._foreach_sub_(ps, bufs)
