"""Networks as ordered transferable units (issue 12, first part): every architecture's unit list, and the
transfer mechanics on it (copy exactly units 1..n, freeze with fixed normalisation, re-initialise the rest)."""

import pytest
import torch

from transferable.models.units import build

# (arch, units, image size, expected unit count); the full-size nets are only built, never trained here
ARCHS = [("resnet18", "blocks", 64, 9), ("resnet18", "stages", 64, 5), ("resnet50", "blocks", 64, 17),
         ("resnet50", "stages", 64, 5), ("vit_b_16", "blocks", 32, 13), ("resnet-small", "blocks", 16, 5),
         ("vit-small", "blocks", 16, 5)]


@pytest.mark.parametrize("arch, units, size, k", ARCHS)
def test_units_cover_every_parameter_and_buffer_exactly_once(arch, units, size, k):
    net = build(arch, 10, seed=0, image_size=size, units=units)
    assert len(net.units) == k
    owners = {key: net.unit_of(key) for key in net.model.state_dict()}  # raises if 0 or 2 units match
    assert set(owners.values()) == set(range(k + 1))  # every unit and the head own something
    order = [owners[key] for key, _ in net.model.named_parameters()]
    assert order == sorted(order)  # units in forward (definition) order
    x = torch.randn(2, 3, size, size)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), net.model(x), atol=1e-5)  # the unit forward is the model's forward


SMALL = [("resnet-small", 16), ("vit-small", 16)]
# issue 24: the transfer mechanics on the full-size networks too, on small inputs (a ViT-B/16 at 32 px has
# 4 patches): the unit cut, the frozen BatchNorm and the no-decay names are theirs, not the small variants'
# (marked slow: about 20 s together on 2 cores; make test runs them)
FULL = [pytest.param(a, 32, marks=pytest.mark.slow) for a in ("resnet18", "resnet50", "vit_b_16")]


def _step(net, size, n, steps=2):
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    net.train()
    for _ in range(steps):
        x, y = torch.randn(8, 3, size, size, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, frozen=n), y).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("arch, size", SMALL + FULL)
def test_copy_freeze_and_reinit_units(arch, size):
    source = build(arch, 10, seed=1, image_size=size)
    _step(source, size, 0)  # trained a little: its BatchNorm statistics moved
    src = {k: v.clone() for k, v in source.model.state_dict().items()}
    k = len(source.units)
    fresh = build(arch, 10, seed=7, image_size=size).model.state_dict()
    # every n on the small nets; a middle unit on the full-size ones (copied and frozen below, fresh above)
    for n in range(1, k + 1) if (arch, size) in SMALL else (k // 2,):
        net = build(arch, 10, seed=7, image_size=size).transfer(n, src, freeze=True)
        state = net.model.state_dict()
        for key, v in state.items():
            want = src[key] if net.unit_of(key) < n else fresh[key]
            assert torch.equal(v, want), (n, key)  # units 1..n copied, everything else the seed's fresh draw
        before = {key: v.clone() for key, v in state.items()}
        opt = _step(net, size, n)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        for name, p in net.model.named_parameters():
            assert (id(p) in in_opt) == (net.unit_of(name) >= n), name
        after = net.model.state_dict()
        for key in before:
            if net.unit_of(key) < n:  # parameters and BatchNorm running statistics bit-identical
                assert torch.equal(after[key], before[key]), (n, key)
        changed = [key for key in before if net.unit_of(key) >= n and not torch.equal(after[key], before[key])]
        assert changed  # the trainable part did train


@pytest.mark.parametrize("arch, size", SMALL)
def test_a_copy_or_a_saved_net_runs_its_own_modules(arch, size, tmp_path):
    """Issue 23: the stem/embedding and head were closures over the original model, so a deepcopy (EMA,
    AveragedModel, a best-model snapshot) ran the original's, and torch.save(net) could not pickle them."""
    import copy

    net = build(arch, 10, seed=3, image_size=size).eval()
    x = torch.randn(2, 3, size, size)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))
        for p in twin.parameters():
            p.add_(torch.randn_like(p))
        assert not torch.equal(twin(x), net(x))  # the copy's own weights (its stem and head included)
        for name, p in twin.model.named_parameters():  # a change to the head alone shows in the copy only
            p.copy_(dict(net.model.named_parameters())[name])
        head = [p for n, p in twin.model.named_parameters() if twin.unit_of(n) == len(twin.units)]
        head[-1].add_(1.0)  # the classifier's bias (a ViT's classifier starts at zero)
        assert not torch.equal(twin(x), net(x))
    torch.save(net, tmp_path / "net.pt")
    back = torch.load(tmp_path / "net.pt", weights_only=False).eval()  # our own file, written just now
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_frozen_batchnorm_stays_fixed_whoever_calls_train():
    """Issue 23: `net.model.train()` (not the wrapper's train) put frozen BatchNorm back in train mode and
    its running statistics moved."""
    src = build("resnet-small", 10, seed=1, image_size=16).model.state_dict()
    net = build("resnet-small", 10, seed=7, image_size=16).transfer(2, src, freeze=True)
    sd = net.model.state_dict()
    before = {k: sd[k].clone() for i in range(2) for k in net.unit_keys(i)}
    net.model.train()  # bypasses UnitNet.train
    with torch.no_grad():
        net(torch.randn(8, 3, 16, 16) * 5 + 3)
    assert all(torch.equal(net.model.state_dict()[k], v) for k, v in before.items())
    later = [k for k in net.unit_keys(3) if "running_mean" in k]
    assert later and not torch.equal(net.model.state_dict()[later[0]], src[later[0]])  # the rest still learns


def test_random_frozen_units_normalise_their_outputs_after_recompute():
    """Issue 24: a random frozen ResNet unit kept BatchNorm at its initial statistics (mean 0, variance 1),
    so it normalised nothing. recompute_norms re-estimates units 1..n's statistics on the given images (the
    cumulative average: the stem's running mean is the mean of its conv outputs over all of them); then they
    stay fixed while the net trains, and the units above n are untouched."""
    net = build("resnet-small", 10, seed=7, image_size=16).transfer(2, None, freeze=True)
    init = {k: v.clone() for k, v in net.model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 3, 16, 16, generator=g) * 3 + 2 for _ in range(3)]
    assert net.recompute_norms(2, iter(batches)) == 3  # the stem's bn1 and layer1.0's two
    with torch.no_grad():
        conv = torch.cat([net.model.conv1(b) for b in batches])
    assert torch.allclose(net.model.bn1.running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(net.model.bn1.running_var, torch.ones_like(net.model.bn1.running_var))
    assert net.model.bn1.momentum == 0.1 and not net.model.bn1.training  # left frozen, as it was
    after = {k: v.clone() for k, v in net.model.state_dict().items()}
    assert all(torch.equal(after[k], init[k]) for k in net.unit_keys(2))  # unit 3 untouched
    _step(net, 16, 2)
    assert all(torch.equal(net.model.state_dict()[k], after[k]) for i in range(2) for k in net.unit_keys(i))
    # a net without normalisation has nothing to re-estimate
    assert build("vit-small", 10, seed=0, image_size=16).transfer(2, None, freeze=True).recompute_norms(
        2, iter(batches)) == 0


@pytest.mark.parametrize("arch, size", SMALL)
def test_fine_tuned_units_train_and_random_frozen_units_stay(arch, size):
    src = build(arch, 10, seed=1, image_size=size).model.state_dict()
    tuned = build(arch, 10, seed=7, image_size=size).transfer(2, src, freeze=False)
    before = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    _step(tuned, size, 0)
    assert any(not torch.equal(tuned.model.state_dict()[k], before[k]) for k in tuned.unit_keys(0))
    rand = build(arch, 10, seed=7, image_size=size).transfer(2, None, freeze=True)
    keep = {k: v.clone() for k, v in rand.model.state_dict().items()}
    _step(rand, size, 2)
    assert all(torch.equal(rand.model.state_dict()[k], keep[k]) for i in range(2) for k in rand.unit_keys(i))


def test_impossible_transfers_are_refused():
    vit = build("vit-small", 10, seed=0, image_size=16)
    res = build("resnet-small", 10, seed=0, image_size=16)
    with pytest.raises(KeyError, match="another architecture"):
        vit.transfer(1, res.model.state_dict(), freeze=True)
    with pytest.raises(ValueError, match="n must be in 0..5"):
        res.transfer(6, res.model.state_dict(), freeze=True)
    with pytest.raises(ValueError, match="net.units"):
        build("vit-small", 10, seed=0, image_size=16, units="stages")
    with pytest.raises(ValueError, match="net.arch"):
        build("resnet9000", 10, seed=0)


def test_unit_names_the_plan_uses_are_the_built_nets():
    """paths.UNIT_NAMES (light, read by the Snakefile) names exactly the units models/units.py builds."""
    from transferable import paths

    for arch, units, size, _ in ARCHS:
        net = build(arch, 10, seed=0, image_size=size, units=units)
        assert tuple(u.name for u in net.units) == paths.unit_names({"arch": arch, "units": units})


def test_optimiser_recipes_decay_only_weights_and_skip_frozen():
    from transferable.transfer import make_optimizer

    import yaml
    from conftest import ROOT

    micro = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())["train"]
    train = dict(micro, lr=0.1, weight_decay=0.05, momentum=0.9)  # a whole train section, as a job gets it
    vit = build("vit-small", 10, seed=0, image_size=16).transfer(2, None, freeze=True)
    opt = make_optimizer(vit, dict(train, optimizer="adamw"))
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in vit.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed and all(vit.unit_of(n.removeprefix("model.")) >= 2 for n in decayed | plain)  # no frozen unit
    assert not any(n.endswith(("bias", "class_token", "pos_embedding")) or ".ln" in n for n in decayed)
    assert any(n.endswith("heads.head.weight") for n in decayed) and any(n.endswith("bias") for n in plain)
    res = build("resnet-small", 10, seed=0, image_size=16)
    opt = make_optimizer(res, dict(train, optimizer="sgd"))
    assert isinstance(opt, torch.optim.SGD)
    bn = {id(p) for n, p in res.named_parameters() if ".bn" in n or n.startswith("model.bn")}
    assert all(id(p) not in bn for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"])
    with pytest.raises(ValueError, match="caffe_sgd"):
        make_optimizer(res, dict(train, optimizer="caffe_sgd"))
    # the full-size nets: ViT-B/16's class token, position embedding, LayerNorms and biases, ResNet-50's
    # BatchNorm parameters are never decayed; frozen units are in no group
    for arch, optimizer, n in (("vit_b_16", "adamw", 3), ("resnet50", "sgd", 5)):
        net = build(arch, 10, seed=0, image_size=32).transfer(n, None, freeze=True)
        opt = make_optimizer(net, dict(train, optimizer=optimizer))
        names = {id(p): name for name, p in net.named_parameters()}
        decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        assert all(net.unit_of(name) >= n for name in decayed | plain)
        assert decayed | plain == {name for name, p in net.named_parameters() if net.unit_of(name) >= n}
        assert all(dict(net.named_parameters())[name].ndim > 1 for name in decayed)
        assert not any(name.endswith(("class_token", "pos_embedding")) for name in decayed)
        assert any(".bn" in name or "ln" in name for name in plain) and any(name.endswith("bias") for name in plain)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet_done", "vit_done"])
def test_micro_pipeline_on_a_unit_network(family, request):
    """The whole DAG (configs/micro.yaml's design) on a ResNet (SGD) and a ViT (AdamW), n = 1 and the top unit
    n = 5 (conftest's shared family runs): nets named by units, the claims at the top unit, the figures' x
    axis in unit names."""
    import json

    import pandas as pd

    wd = request.getfixturevalue(family)
    arch = {"resnet_done": "resnet-small", "vit_done": "vit-small"}[family]
    runs = pd.read_csv(wd / "results/tables/runs.csv")
    assert set(runs["n"]) == {0, 1, 5} and len(runs) == 20  # micro.yaml's 13 nets, 7 more at n = 5
    m = json.loads((wd / "results/nets/rand0/A5B/metrics.json").read_text())
    assert m["provenance"]["config"]["net"]["arch"] == arch and m["n"] == 5
    eff = pd.read_csv(wd / "results/tables/effects.csv")
    spec = eff[(eff["claim"] == "specificity_vs_selffer") & (eff["scope"] == "claim")]
    assert list(spec["layers"].astype(str)) == ["5"] and spec["units"].iloc[0] == 1
    assert (wd / "results/figures/fig2.pdf").stat().st_size > 0 and (wd / "results/figures/fig3.pdf").is_file()
