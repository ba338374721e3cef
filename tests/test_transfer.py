"""Copy / freeze / re-initialise semantics and the solver's per-parameter multipliers (reference §2)."""

import torch
import torch.nn.functional as F

from transferable.models.caffenet import LAYERS, CaffeNet, param_counts, spec_from_config
from transferable.transfer import CaffeSGD, build_net, param_groups

SMALL = {"arch": "caffenet-small", "widths": [8, 8, 12, 12, 8, 16, 16], "crop": 16, "init": "caffe", "dropout": 0.5}


def _step(net, frozen, steps=3, lr=0.1):
    opt = CaffeSGD(param_groups(net), lr=lr, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x, frozen=frozen), y).backward()
        opt.step()


def test_paper_caffenet_parameter_counts():
    # From the layer table (reference §1): (in/groups * k*k) * out + out.
    table = {"conv1": (3, 11, 96, 1), "conv2": (96, 5, 256, 2), "conv3": (256, 3, 384, 1),
             "conv4": (384, 3, 384, 2), "conv5": (384, 3, 256, 2)}
    expected = {n: (cin // g) * k * k * cout + cout for n, (cin, k, cout, g) in table.items()}
    expected.update(fc6=256 * 6 * 6 * 4096 + 4096, fc7=4096 * 4096 + 4096, fc8=4096 * 1000 + 1000)
    expected["total"] = sum(expected.values())
    net = CaffeNet(spec_from_config({"arch": "caffenet", "crop": 227}, 1000))
    assert param_counts(net) == expected


def test_paper_caffenet_fillers():
    net = CaffeNet(spec_from_config({"arch": "caffenet", "crop": 227, "init": "caffe"}, 1000))
    for name, (std, bias) in {"conv1": (0.01, 0), "conv2": (0.01, 1), "conv3": (0.01, 0), "conv4": (0.01, 1),
                              "conv5": (0.01, 1), "fc6": (0.005, 1), "fc7": (0.005, 1), "fc8": (0.01, 0)}.items():
        layer = net.layer(name)
        assert abs(layer.weight.std().item() - std) < 0.1 * std, name
        assert torch.all(layer.bias == bias), name


def test_copied_layers_equal_source_and_rest_reinitialised():
    spec = spec_from_config(SMALL, 10)
    source = build_net(spec, seed=1)
    _step(source, 0)
    net = build_net(spec, n=3, source_state=source.state_dict(), freeze=True, seed=2)
    fresh = build_net(spec, seed=2)
    for i, name in enumerate(LAYERS):
        w, w_src, w_fresh = net.layer(name).weight, source.layer(name).weight, fresh.layer(name).weight
        if i < 3:
            assert torch.equal(w, w_src), name
        else:
            assert torch.equal(w, w_fresh), name  # drawn from the filler with the net's own seed
            assert not torch.equal(w, w_src), name


def test_frozen_layers_are_bit_identical_after_steps_and_not_decayed():
    spec = spec_from_config(SMALL, 10)
    source = build_net(spec, seed=1)
    net = build_net(spec, n=4, source_state=source.state_dict(), freeze=True, seed=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _step(net, frozen=4)
    after = net.state_dict()
    for name in LAYERS:
        for p in ("weight", "bias"):
            same = torch.equal(before[f"{name}.{p}"], after[f"{name}.{p}"])
            assert same == (name in LAYERS[:4]), f"{name}.{p}"
    names = {g["name"] for g in param_groups(net)}
    assert not any(n.split(".")[0] in LAYERS[:4] for n in names)


def test_finetuned_layers_train():
    spec = spec_from_config(SMALL, 10)
    source = build_net(spec, seed=1)
    net = build_net(spec, n=4, source_state=source.state_dict(), freeze=False, seed=2)
    before = net.conv1.weight.clone()
    _step(net, frozen=0)
    assert not torch.equal(before, net.conv1.weight)
    assert len(param_groups(net)) == 16


def test_the_whole_net_copied_is_the_source_and_trains_everywhere():
    """The control base+ copies every layer, fc8 included, and freezes nothing: before a step it computes
    exactly its source's function; after, every layer has moved."""
    import pytest

    spec = spec_from_config(SMALL, 10)
    source = build_net(spec, seed=1)
    _step(source, 0)
    net = build_net(spec, n=None, source_state=source.state_dict(), seed=2)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in net.state_dict().items())
    assert len(param_groups(net)) == 16 and net.frozen_units == 0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _step(net, frozen=0)
    assert all(not torch.equal(before[f"{name}.weight"], net.layer(name).weight) for name in LAYERS)
    with pytest.raises(ValueError, match="head is copied only with every unit"):
        net.transfer(3, source.state_dict(), False, head=True)


def test_lr_and_decay_multipliers():
    net = build_net(spec_from_config(SMALL, 10), seed=0)
    for g in param_groups(net):
        if g["name"].endswith("weight"):
            assert (g["lr_mult"], g["decay_mult"]) == (1.0, 1.0)
        else:
            assert (g["lr_mult"], g["decay_mult"]) == (2.0, 0.0)


def test_caffe_sgd_update_rule():
    # One parameter, by hand: v = m v + lr_eff (g + wd_eff w); w -= v; bias: lr x2, no decay.
    w = torch.nn.Parameter(torch.tensor([1.0]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = CaffeSGD([{"params": [w], "lr_mult": 1.0, "decay_mult": 1.0},
                    {"params": [b], "lr_mult": 2.0, "decay_mult": 0.0}], lr=0.1, momentum=0.9, weight_decay=0.5)
    vw = vb = 0.0
    wv, bv = 1.0, 1.0
    for step in range(3):
        w.grad, b.grad = torch.tensor([0.2]), torch.tensor([0.2])
        opt.step()
        vw = 0.9 * vw + 0.1 * (0.2 + 0.5 * wv)
        vb = 0.9 * vb + 0.2 * 0.2
        wv, bv = wv - vw, bv - vb
        assert abs(w.item() - wv) < 1e-6 and abs(b.item() - bv) < 1e-6


def test_frozen_forward_matches_full_forward():
    net = build_net(spec_from_config(SMALL, 10), seed=0).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(net(x), net(x, frozen=5))


def test_fused_caffe_sgd_equals_the_per_tensor_update_bit_for_bit():
    """CaffeSGD updates tensors of equal lr and decay with foreach kernels; every weight must be exactly
    what Caffe's update applied one tensor at a time gives, over steps with an lr change and a frozen part."""
    spec = spec_from_config(SMALL, 10)
    source = build_net(spec, seed=1).state_dict()
    fused, ref = (build_net(spec, n=2, source_state=source, freeze=True, seed=0) for _ in range(2))
    opt = CaffeSGD(param_groups(fused), lr=0.01, momentum=0.9, weight_decay=5e-4)
    groups = param_groups(ref)
    bufs = {}
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        lr = 0.01 if step < 2 else 0.001
        for pg in opt.param_groups:
            pg["lr"] = lr
        for pf, grp in zip((p for pg in opt.param_groups for p in pg["params"]), groups):
            (pr,) = grp["params"]
            pf.grad = torch.randn(pf.shape, generator=g)
            pr.grad = pf.grad.clone()
        opt.step()
        with torch.no_grad():
            for grp in groups:
                (p,) = grp["params"]
                wd = 5e-4 * grp["decay_mult"]
                d = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                buf = bufs.setdefault(id(p), torch.zeros_like(p))
                buf.mul_(0.9).add_(d, alpha=lr * grp["lr_mult"])
                p.sub_(buf)
    for (k, a), b in zip(fused.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_fc8_runs_in_fp32_under_bf16_autocast():
    """Issue 17 (minor): the logits come from an fp32 fc8 whatever the autocast, on CPU as on GPU."""
    spec = spec_from_config({"arch": "caffenet-small", "crop": 16, "widths": [8, 8, 8, 8, 8, 16, 16],
                             "init": "kaiming"}, 5)
    net = build_net(spec, seed=0).eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        feats = x
        for i in range(7):
            feats = net._block(i, feats)
        assert feats.dtype == torch.bfloat16  # the layers below run in bf16
    assert logits.dtype == torch.float32
    with torch.no_grad():
        want = net.fc8(feats.float())
    assert torch.equal(logits, want)
