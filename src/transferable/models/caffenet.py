"""CaffeNet, the Caffe "reference ImageNet model" the paper used, with layers named conv1 ... fc8.

Paper layout (reference §1): conv1 96@11x11/4 -> ReLU -> maxpool 3/2 -> LRN; conv2 256@5x5 pad 2 groups 2
-> ReLU -> maxpool -> LRN; conv3 384@3x3; conv4 384@3x3 groups 2; conv5 256@3x3 groups 2 -> maxpool;
fc6 4096 -> ReLU -> dropout 0.5; fc7 4096 -> ReLU -> dropout 0.5; fc8. Pooling comes BEFORE LRN (CaffeNet
order, not AlexNet's). Caffe's LRN x / (1 + alpha/5 * sum x^2)^beta is torch's LocalResponseNorm(5, 1e-4,
0.75, k=1). Caffe pools with ceil rounding.

``caffenet-small`` keeps the same eight layers, groups, pooling/LRN order and names, with a 5x5 stride-1
conv1 for small inputs (the demo); widths come from the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .protocol import TransferNet, Unit

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


@dataclass(frozen=True)
class ConvSpec:
    out: int
    kernel: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    pool: bool = False
    lrn: bool = False


@dataclass(frozen=True)
class NetSpec:
    convs: tuple[ConvSpec, ...]
    fc: tuple[int, int] = (4096, 4096)
    outputs: int = 1000
    crop: int = 227
    in_channels: int = 3
    dropout: float = 0.5
    lrn: bool = True
    init: str = "caffe"  # "caffe": the paper's Gaussian fillers; "kaiming": He-normal (small demo nets)
    # (std, bias) per layer for init="caffe" (reference §1)
    caffe_fillers: dict = field(default_factory=lambda: {
        "conv1": (0.01, 0.0), "conv2": (0.01, 1.0), "conv3": (0.01, 0.0), "conv4": (0.01, 1.0),
        "conv5": (0.01, 1.0), "fc6": (0.005, 1.0), "fc7": (0.005, 1.0), "fc8": (0.01, 0.0)})


PAPER_WIDTHS = (96, 256, 384, 384, 256, 4096, 4096)  # conv1..conv5, fc6, fc7 (reference §1)


def spec_from_config(net, outputs: int) -> NetSpec:
    """Build a NetSpec from the config's ``net`` section (``settings.Net`` or its dict); ``outputs`` is
    fc8's width."""
    from ..settings import Net

    net = Net.from_dict(net)
    arch = net.arch
    w = list(net.widths or PAPER_WIDTHS)
    if len(w) != 7:
        raise ValueError(f"net.widths: need 7 values (conv1..conv5, fc6, fc7), got {w}")
    if arch == "caffenet":
        first = ConvSpec(w[0], 11, 4, 0, 1, pool=True, lrn=True)
    elif arch == "caffenet-small":
        first = ConvSpec(w[0], 5, 1, 2, 1, pool=True, lrn=True)
    else:
        raise ValueError(f"net.arch: unknown {arch!r} (allowed: caffenet, caffenet-small)")
    convs = (
        first,
        ConvSpec(w[1], 5, 1, 2, 2, pool=True, lrn=True),
        ConvSpec(w[2], 3, 1, 1, 1),
        ConvSpec(w[3], 3, 1, 1, 2),
        ConvSpec(w[4], 3, 1, 1, 2, pool=True),
    )
    return NetSpec(convs=convs, fc=(w[5], w[6]), outputs=int(outputs), crop=net.crop, dropout=net.dropout,
                   lrn=net.lrn, init=net.init)


class CaffeNet(TransferNet):
    """The paper's network on the pipeline's protocol (``protocol.TransferNet``): units conv1 ... fc7,
    head fc8."""

    arch = "caffenet"

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        self.units = [Unit(name, (name,)) for name in LAYERS[:7]]
        self.head = Unit("fc8", ("fc8",))
        blocks = []
        cin = spec.in_channels
        for i, c in enumerate(spec.convs, start=1):
            conv = nn.Conv2d(cin, c.out, c.kernel, c.stride, c.pad, groups=c.groups)
            setattr(self, f"conv{i}", conv)
            post: list[nn.Module] = [nn.ReLU(inplace=True)]
            if c.pool:
                post.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            if c.lrn and spec.lrn:
                post.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
            blocks.append(nn.Sequential(*post))
            cin = c.out
        self.post = nn.ModuleList(blocks)
        with torch.no_grad():
            flat = self._conv_forward(torch.zeros(1, spec.in_channels, spec.crop, spec.crop), 0, 5).numel()
        self.fc6 = nn.Linear(flat, spec.fc[0])
        self.fc7 = nn.Linear(spec.fc[0], spec.fc[1])
        self.fc8 = nn.Linear(spec.fc[1], spec.outputs)
        self.drop6 = nn.Dropout(spec.dropout)
        self.drop7 = nn.Dropout(spec.dropout)
        self.reset_parameters()

    def layer(self, name: str) -> nn.Module:
        return getattr(self, name)

    def reset_parameters(self, names=LAYERS, generator: torch.Generator | None = None) -> None:
        """Draw ``names`` from the filler (the paper's Gaussians, or He-normal for init='kaiming')."""
        with torch.no_grad():
            for name in names:
                m = self.layer(name)
                if self.spec.init == "caffe":
                    std, bias = self.spec.caffe_fillers[name]
                    m.weight.normal_(0.0, std, generator=generator)
                    m.bias.fill_(bias)
                elif self.spec.init == "kaiming":
                    fan_in = m.weight[0].numel()
                    gain = 1.0 if name == "fc8" else 2.0
                    m.weight.normal_(0.0, (gain / fan_in) ** 0.5, generator=generator)
                    m.bias.zero_()
                else:
                    raise ValueError(f"net.init: unknown {self.spec.init!r} (allowed: caffe, kaiming)")

    def _conv_forward(self, x, start: int, stop: int):
        for i in range(start, stop):
            x = self.post[i](self.layer(LAYERS[i])(x))
        return x

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Weight layer i (0-based) and what follows it."""
        if i < 5:
            return self.post[i](self.layer(LAYERS[i])(x))
        if i == 5:
            return self.drop6(torch.relu(self.fc6(torch.flatten(x, 1))))
        if i == 6:
            return self.drop7(torch.relu(self.fc7(x)))
        # fc8 in fp32 even under bf16 autocast: the logits feed a 1000-way softmax and top-k, where bf16's
        # 8-bit mantissa loses the loss's precision and ties the top classes (no-op without autocast)
        with torch.autocast(x.device.type, enabled=False):
            return self.fc8(x.float())

def param_counts(net: CaffeNet) -> dict[str, int]:
    counts = {name: sum(p.numel() for p in net.layer(name).parameters()) for name in LAYERS}
    counts["total"] = sum(counts.values())
    return counts
