"""A checkpoint file as the source of transfer (sources.py): a torchvision state_dict, in the wrappings
training scripts save it in, mapped onto the config's units bit for bit; a checkpoint of another architecture
or image size, a damaged file or a pickled object refused with the file and the keys named."""

import json

import pytest
import torch
import torchvision

from transferable import similarity, sources
from transferable.models.units import build
from transferable.sources import SourceError, check_source, import_source, read_state_dict
from transferable.transfer import build_net, spec_from_config

R18 = {"arch": "resnet18", "crop": 32}
VIT = {"arch": "vit-small", "crop": 16}
SMALL = {"arch": "resnet-small", "crop": 16}
MEAN = (123.675, 116.28, 103.53)


def _trained_looking(model: torch.nn.Module, seed: int) -> dict:
    """A state_dict whose BatchNorm buffers are not their initial values (zeros, ones, 0 batches), so that
    a buffer left uncopied shows."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith(("running_mean", "running_var")):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith("num_batches_tracked"):
            v.fill_(7)
    return state


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """(path, state_dict) of a torchvision ResNet-18 checkpoint (random weights: nothing is downloaded)."""
    torch.manual_seed(3)
    state = _trained_looking(torchvision.models.resnet18(weights=None), 3)
    path = tmp_path_factory.mktemp("r18") / "r18.pth"
    torch.save(state, path)
    return path, state


def _vit(image_size: int) -> torch.nn.Module:
    # exactly models/units.py's vit-small, as a user would build it with torchvision
    return torchvision.models.VisionTransformer(image_size=image_size, patch_size=4, num_layers=4, num_heads=4,
                                               hidden_dim=64, mlp_dim=128)


def _assert_units_equal(net, state: dict, n: int, absent: tuple = ()) -> int:
    """Every parameter and buffer of units 1..n of ``net`` (but those ending in ``absent``) bit-identical to
    ``state``'s; their count."""
    own = net.state_dict()
    keys = [k for i in range(n) for k in net.unit_keys(i) if not (absent and k.endswith(absent))]
    for k in keys:
        assert torch.equal(own[net.key_prefix + k], state[k]), k
    return len(keys)


def test_resnet18_checkpoint_maps_onto_every_unit_bit_for_bit(r18, tmp_path):
    path, state = r18
    assert check_source(read_state_dict(path), R18, path) == 1000
    out = tmp_path / "sources" / "r18" / "model.pt"
    info = import_source(path, R18, 40, str(out))
    assert info == {"format": "state_dict", "keys": len(state), "units": 9, "head": True, "outputs": 1000}
    net, mean, scale, crop = similarity.load_net(str(out))
    assert (mean.shape, crop, scale) == ((3, 40, 40), 32, 1.0)
    assert mean[:, 5, 7].tolist() == pytest.approx(MEAN) and (mean == mean[:, :1, :1]).all()
    loaded = torch.load(out, map_location="cpu", weights_only=True)
    assert set(loaded["state_dict"]) == {"model." + k for k in state}
    assert loaded["net"] == "source" and loaded["classes"].numel() == 0 and loaded["outputs"] == 1000
    assert json.loads(loaded["config"]) == {"net": R18}
    assert torch.equal(loaded["state_dict"]["model.fc.weight"], state["fc.weight"])  # the head copied too
    from transferable.train.loop import load_source  # here: the training package's imports are many

    src_state, src_mean = load_source(str(out), "all", "X9A")
    assert src_mean.shape == (3, 40, 40) and src_state.keys() == loaded["state_dict"].keys()
    spec = spec_from_config(R18, 10)
    k = len(net.units)
    tnet = build_net(spec, n=k, source_state=loaded["state_dict"], freeze=True, seed=1)
    # parameters AND BatchNorm buffers (moved off their initial values above) of all 9 units
    assert _assert_units_equal(tnet, state, k) == len(state) - 2
    assert any(k.endswith("running_var") for i in range(k) for k in tnet.unit_keys(i))
    assert not any(p.requires_grad for n_, p in tnet.named_parameters() if tnet.unit_of(n_) < k)
    assert tnet.model.fc.weight.shape == (10, 512)  # the head: the target's width, drawn afresh


def _failure(state: dict, cfg: dict, path) -> str:
    torch.save(state, path)
    with pytest.raises(SourceError) as e:
        check_source(read_state_dict(path), cfg, path)
    return str(e.value)


def test_a_missing_or_an_extra_key_is_named(r18, tmp_path):
    _, state = r18
    msg = _failure({k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}, R18, tmp_path / "cut.pth")
    assert "cut.pth" in msg and "resnet18" in msg and "1 missing key(s): layer2.0.conv1.weight" in msg
    msg = _failure({**state, "foo.weight": torch.zeros(3)}, R18, tmp_path / "extra.pth")
    assert "extra.pth" in msg and "1 unexpected key(s)" in msg and "foo.weight" in msg and "missing key" not in msg
    msg = _failure({**state, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, R18, tmp_path / "shape.pth")
    assert "layer1.0.conv1.weight: checkpoint (64, 64, 1, 1), resnet18 (64, 64, 3, 3)" in msg


@pytest.mark.parametrize("units", ["blocks", "stages"])
def test_a_resnet50_checkpoint_for_resnet18_names_its_keys(tmp_path, units):
    state = torchvision.models.resnet50(weights=None).state_dict()
    msg = _failure(state, {**R18, "units": units}, tmp_path / "r50.pth")
    assert "r50.pth" in msg and f"net.arch resnet18 (units {units})" in msg
    assert "unexpected key(s)" in msg and "layer1.0.conv3.weight" in msg and "and 188 more" in msg
    assert "layer1.0.conv1.weight: checkpoint (64, 64, 1, 1), resnet18 (64, 64, 3, 3)" in msg


def _small_state(seed: int = 0) -> dict:
    return _trained_looking(build("resnet-small", 10, seed=seed, image_size=16).model, seed)


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {"state_dict": s, "epoch": 90},
    lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    lambda s: {"model_state_dict": s, "epoch": 3},
    lambda s: {"module." + k: v for k, v in s.items()},
    lambda s: {"state_dict": {"_orig_mod." + k: v for k, v in s.items()}},
    lambda s: {"module._orig_mod." + k: v for k, v in s.items()},
], ids=["plain", "state_dict", "model", "model_state_dict", "ddp", "compiled", "ddp-compiled"])
def test_training_script_wrappings_load(tmp_path, wrap):
    state = _small_state()
    torch.save(wrap(state), tmp_path / "ckpt.pth")
    got = read_state_dict(tmp_path / "ckpt.pth")
    assert list(got) == list(state) and all(torch.equal(got[k], state[k]) for k in state)
    assert check_source(got, SMALL, tmp_path / "ckpt.pth") == 10


def test_a_checkpoint_without_head_or_batch_counters_keeps_the_nets_own(tmp_path):
    # torchvision's published ImageNet weights have no num_batches_tracked (saved before torch 0.4.1)
    state = {k: v for k, v in _small_state(2).items() if not k.startswith("fc.") and "num_batches" not in k}
    torch.save(state, tmp_path / "headless.pth")
    assert check_source(read_state_dict(tmp_path / "headless.pth"), SMALL, "headless.pth") == 1000
    info = import_source(tmp_path / "headless.pth", SMALL, 16, str(tmp_path / "model.pt"), seed=5)
    assert (info["head"], info["outputs"], info["keys"]) == (False, 1000, len(state))
    assert "not copied" in info["head_note"] and "seed 5" in info["head_note"]
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    fresh = build("resnet-small", 1000, seed=5, image_size=16).state_dict()
    assert torch.equal(saved["model.fc.weight"], fresh["model.fc.weight"])  # the seed's head
    assert int(saved["model.bn1.num_batches_tracked"]) == 0
    net = similarity.load_net(str(tmp_path / "model.pt"))[0]
    assert _assert_units_equal(net, state, len(net.units), absent=("num_batches_tracked",)) == len(state)


def test_a_head_of_another_structure_is_not_copied(tmp_path):
    # a classifier with more than the net's head (here a scale beside fc): units copied, head the seed's
    state = {**_small_state(3), "fc.scale": torch.ones(10)}
    torch.save(state, tmp_path / "scaled.pth")
    assert check_source(read_state_dict(tmp_path / "scaled.pth"), SMALL, "scaled.pth") == 10
    info = import_source(tmp_path / "scaled.pth", SMALL, 16, str(tmp_path / "model.pt"))
    assert (info["head"], info["outputs"], info["keys"]) == (False, 10, len(state) - 3)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert not torch.equal(saved["model.fc.weight"], state["fc.weight"]) and "model.fc.scale" not in saved


def test_vit_checkpoint_maps_onto_vit_small(tmp_path):
    torch.manual_seed(4)
    state = _vit(16).state_dict()
    torch.save(state, tmp_path / "vit16.pth")
    assert check_source(read_state_dict(tmp_path / "vit16.pth"), VIT, "vit16.pth") == 1000
    info = import_source(tmp_path / "vit16.pth", VIT, 16, str(tmp_path / "model.pt"))
    assert (info["units"], info["head"], info["keys"]) == (5, True, len(state))
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert similarity.load_net(str(tmp_path / "model.pt"))[3] == 16
    tnet = build_net(spec_from_config(VIT, 7), n=5, source_state=loaded["state_dict"], freeze=True, seed=1)
    assert _assert_units_equal(tnet, state, 5) == len(state) - 4  # all but encoder.ln and heads.head
    assert not torch.equal(tnet.model.encoder.layers[0].mlp[0].weight, _vit(16).encoder.layers[0].mlp[0].weight)


def test_vit_trained_at_another_image_size_names_it(tmp_path):
    msg = _failure(_vit(32).state_dict(), VIT, tmp_path / "vit32.pth")
    assert "vit32.pth" in msg and "encoder.pos_embedding: checkpoint (1, 65, 64), vit-small (1, 17, 64)" in msg
    assert "trained at image size 32" in msg and "net.crop is 16 and must equal 32" in msg


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "absent"])
def test_a_damaged_file_is_named(r18, tmp_path, damage):
    bad = tmp_path / f"{damage}.pth"
    if damage == "truncated":
        data = r18[0].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        bad.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    elif damage == "empty":
        bad.write_bytes(b"")
    with pytest.raises(SourceError, match="does not load as a checkpoint") as e:
        read_state_dict(bad)
    assert str(bad) in str(e.value)


def test_what_is_not_a_state_dict_is_refused(tmp_path):
    torch.save({"epoch": 3, "arch": "resnet18"}, tmp_path / "meta.pth")
    with pytest.raises(SourceError, match=r"meta\.pth: holds no tensors \(keys: arch, epoch\)"):
        read_state_dict(tmp_path / "meta.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(SourceError, match=r"list\.pth: holds a list, not a state_dict"):
        read_state_dict(tmp_path / "list.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module: never unpickled
    with pytest.raises(SourceError, match=r"module\.pth: .*save model\.state_dict\(\) instead"):
        read_state_dict(tmp_path / "module.pth")


def test_a_pipeline_model_pt_is_checked_by_its_config_and_copied_as_is(tmp_path):
    torch.save(_small_state(6), tmp_path / "small.pth")
    pt = tmp_path / "small" / "model.pt"
    import_source(tmp_path / "small.pth", SMALL, 20, str(pt))
    obj = sources.load_checkpoint(pt)
    with pytest.raises(SourceError) as e:
        check_source(obj, VIT, pt)
    assert str(pt) in str(e.value) and "'resnet-small'" in str(e.value) and "'vit-small'" in str(e.value)
    with pytest.raises(SourceError, match=r"net\.units 'blocks' .* net\.units is 'stages'"):
        check_source(obj, {**SMALL, "units": "stages"}, pt)
    assert check_source(obj, SMALL, pt) == 10
    assert check_source(read_state_dict(pt), SMALL, pt) == 10  # its bare state_dict ("model." keys) too
    info = import_source(pt, SMALL, 20, str(tmp_path / "copy.pt"))
    assert (info["format"], info["outputs"], info["head"]) == ("model.pt", 10, True)
    copy = torch.load(tmp_path / "copy.pt", weights_only=True)
    assert copy.keys() == obj.keys() and copy["config"] == obj["config"] and torch.equal(copy["mean"], obj["mean"])
    assert all(torch.equal(copy["state_dict"][k], v) for k, v in obj["state_dict"].items())


def test_a_mean_image_smaller_than_the_crop_is_refused(r18, tmp_path):
    with pytest.raises(ValueError, match="preprocess.size 16 is smaller than net.crop 32"):
        import_source(r18[0], R18, 16, str(tmp_path / "model.pt"))
    assert not (tmp_path / "model.pt").exists()


def test_a_pipeline_model_pt_of_another_preprocessing_or_scale_is_refused(tmp_path):
    """A model.pt's transferred units expect its own inputs: its mean image must be the config's image size
    (else training fails on the shapes) and its input scale the config's (else the frozen units see inputs on
    another scale, silently)."""
    torch.save(_small_state(6), tmp_path / "small.pth")
    pt = tmp_path / "small" / "model.pt"
    import_source(tmp_path / "small.pth", SMALL, 20, str(pt))
    obj = sources.load_checkpoint(pt)
    assert check_source(obj, SMALL, pt, size=20) == 10
    with pytest.raises(SourceError, match=r"mean image is \(3, 20, 20\).*preprocess.size 24"):
        check_source(obj, SMALL, pt, size=24)
    with pytest.raises(SourceError, match=r"net\.input_scale .*0\.5"):
        check_source(obj, {**SMALL, "input_scale": 0.5}, pt, size=20)
    with pytest.raises(SourceError, match="mean image"):
        import_source(pt, SMALL, 24, str(tmp_path / "copy.pt"))
    assert not (tmp_path / "copy.pt").exists()
