"""The cross experiment's plan (issue 25): two data roots in one config, their path layout (no collision),
each source trained once and shared by every target, and the checks made before any job."""

import copy

import pytest
import yaml

from transferable import crossplan, paths, plan

from conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def cfg():
    c = yaml.safe_load((ROOT / "configs/demo-cross.yaml").read_text())
    crossplan.check_config(c, str(SCHEMA))
    return c


def _checked(c):
    crossplan.check_config(c, str(SCHEMA))
    return c


def test_two_data_roots_never_share_a_path():
    """Every data-dependent path of a further dataset sits under results/datasets/<name>/, and a cross net
    under its target's transfer/<source>/: the same run and net name on two data roots are two files."""
    makers = [lambda d: paths.catalog(d), lambda d: paths.images(d), lambda d: paths.split_manifest("all", d),
              lambda d: paths.shard_index("warp20", d), lambda d: paths.shard_part("warp20", 0, d),
              lambda d: paths.demo_files(d)[0], lambda d: paths.net_file("all", "baseA", "model.pt", d),
              lambda d: paths.checkpoint("all", "baseA", d), lambda d: paths.raw_identity("0" * 64, d)]
    for make in makers:
        got = {d: make(d) for d in ("", "shapes", "negative")}
        assert len(set(got.values())) == 3, got
        assert got[""].startswith("results/") and "datasets" not in got[""]
        assert got["shapes"].startswith("results/datasets/shapes/")
    # two sources' nets on one target, and a target's own nets: three folders
    files = {paths.net_file("all.s1", "X3A", "model.pt", "negative", s) for s in ("demo", "r18")}
    files.add(paths.net_file("all.s1", "X3A", "model.pt", "negative"))
    assert len(files) == 3
    assert paths.checkpoint("all", "X3A", "negative", "demo") != paths.checkpoint("all", "X3A", "negative", "r18")


def test_net_locations_round_trip():
    for dataset, via, run, net in [("", "", "rand0", "baseB"), ("negative", "", "all.s2", "R3A"),
                                   ("negative", "demo", "all", "X3A_ft"), ("", "r18", "all.s1", "X7A")]:
        f = paths.net_file(run, net, "metrics.json", dataset, via)
        assert paths.locate_net_file(f) == paths.NetLocation(dataset, via, run, net)
    assert paths.parse_net("X3A").treatment == "AnB" and paths.parse_net("X3A_ft").treatment == "AnB+"


def test_demo_cross_plan(cfg):
    """Each target trains per replicate its base net, 7 random-filter nets, 7 frozen and 4 fine-tuned
    transfers; the source (rand0's baseA on the demo's data) is one net, shared by both targets."""
    nets = crossplan.cross_nets(cfg)
    per_replicate = 1 + 7 + 7 + 4
    assert len(nets) == 2 * 5 * per_replicate
    assert crossplan.source_nets(cfg) == [plan.Net("rand0", "baseA", "", "")]
    src_model = crossplan.sources(cfg)["demo"].model()
    assert src_model == "results/nets/rand0/baseA/model.pt"
    copying = [n for n in nets if n.via]
    assert copying and all(crossplan.source_model(cfg, n) == src_model for n in copying)
    assert {n.dataset for n in nets} == {"shapes", "negative"}
    assert not any(n.via for n in nets if n.parsed.treatment in ("base", "random"))
    assert {n.split for n in nets} == {"all", *(f"all.s{r}" for r in range(1, 5))}
    assert crossplan.pairs(cfg) == [("demo", "negative"), ("demo", "shapes")]
    # the dataset views: their own data, demo and splits; the splits they train on
    view = crossplan.dataset_config(cfg, "negative")
    assert view["demo"]["style"] == "negative" and view["demo"]["seed"] == 2 and view["splits"] == {"all": {"kind": "all"}}
    assert plan.used_splits(view) == ["all"] and plan.known_num_classes(view) == 10
    assert plan.known_num_classes(cfg) == 20
    # the main tree holds only the source; the groups of one stream never mix two folders
    assert crossplan.own_tree_nets(cfg, "") == [plan.Net("rand0", "baseA")]
    for dataset, via, run, half, names in crossplan.stream_groups(cfg):
        assert len({paths.net_dir(run, n, dataset, via).rsplit("/", 1)[0] for n in names}) == 1


def test_a_target_on_the_configs_own_data_shares_its_nets(cfg):
    """main as a target: its base and random-filter nets are the config's own nets/ (trained in the paper's
    groups), its transfers under results/transfer/<source>/."""
    c = copy.deepcopy(cfg)
    c["splits"]["all"] = {"kind": "all"}
    c["experiment"]["cross"]["sources"] = {"neg": {"dataset": "negative"}}
    c["experiment"]["cross"]["targets"] = {"main": {}}
    _checked(c)
    nets = crossplan.cross_nets(c)
    assert {n.dataset for n in nets} == {""}
    assert plan.Net("all.s1", "R2A") in crossplan.own_tree_nets(c, "")
    assert crossplan.source_nets(c) == [plan.Net("all", "baseA", "negative")]
    x = next(n for n in nets if n.via)
    assert x.file("model.pt").startswith("results/transfer/neg/all")


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["datasets"].update(main={"data": {"source": "demo"}}), ["datasets.main", "rename"]),
    (lambda c: c["experiment"]["cross"]["targets"].update(nowhere={}), ["targets.nowhere", "no dataset 'nowhere'"]),
    (lambda c: c["experiment"]["cross"]["targets"].update(shapes={"split": "rand9"}), ["no split 'rand9'"]),
    (lambda c: c["experiment"]["cross"]["targets"].update(shapes={"half": "B"}), ["no half 'B'"]),
    (lambda c: c["experiment"]["cross"]["sources"].update(demo={"dataset": "main", "split": "nope"}),
     ["sources.demo", "no split 'nope'"]),
    (lambda c: c["experiment"]["cross"].update(layers=[1, 8]), ["experiment.cross.layers", "[8]", "1..7"]),
    (lambda c: c["experiment"]["cross"]["sources"].update(ck={"checkpoint": "/no/such/file.pth"}),
     ["sources.ck.checkpoint", "/no/such/file.pth"]),
    (lambda c: c["experiment"]["cross"]["sources"].update(ck={"checkpoint": __file__}),
     ["sources.ck", __file__]),
    (lambda c: c["datasets"]["shapes"]["data"].update(source="path", root="/no/such/dir"),
     ["datasets.shapes.data.root", "/no/such/dir"]),
    (lambda c: c["datasets"]["shapes"]["demo"].update(train_per_class=5), ["datasets.shapes", "batch_size"]),
    # review of issue 25: what passed the checks and failed in a job
    (lambda c: c["experiment"]["cross"].update(treatments=["random"]), ["experiment.cross.treatments", "AnB"]),
    (lambda c: c["experiment"]["cross"].update(replicates=1), ["replicates", "minimum"]),
    (lambda c: c["experiment"]["cross"]["sources"].update(own={"dataset": "main", "split": "rand0"}),
     ["sources.own", "reserved"]),
    (lambda c: c["datasets"].update(transfer=c["datasets"]["shapes"]), ["datasets.transfer", "reserved"]),
    (lambda c: (c["datasets"].update(to_shapes=c["datasets"]["shapes"]),
                c["experiment"]["cross"]["targets"].update(to_shapes={}),
                c["experiment"]["cross"]["sources"].update(demo_to={"dataset": "main", "split": "rand0"})),
     ["same file names", "demo_to_to_shapes"]),
    (lambda c: (c["splits"].update(all={"kind": "all"}), c["net"].update(outputs=12),
                c["experiment"]["cross"].update(targets={"main": {}}),
                c["experiment"]["cross"].update(sources={"neg": {"dataset": "negative", "split": "all"}})),
     ["net.outputs", "12", "20 classes"]),
])
def test_cross_config_errors_name_the_key(cfg, edit, words):
    c = yaml.safe_load((ROOT / "configs/demo-cross.yaml").read_text())
    edit(c)
    with pytest.raises(plan.ConfigError) as e:
        _checked(c)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_half_x_is_refused_by_the_schema():
    c = yaml.safe_load((ROOT / "configs/demo-cross.yaml").read_text())
    c["experiment"]["cross"]["targets"]["shapes"] = {"half": "X"}
    with pytest.raises(plan.ConfigError, match="half"):
        _checked(c)


def test_the_paper_configs_plan_no_cross_nets():
    for name in ("config.yaml", "configs/paper.yaml", "configs/micro.yaml"):
        c = yaml.safe_load((ROOT / name).read_text())
        assert crossplan.cross_nets(c) == [] and crossplan.stream_groups(c) == [] and crossplan.datasets(c) == []


def test_the_imagenet_to_folder_config_plans_on_a_folder_and_a_resnet50_file(tmp_path, monkeypatch):
    """configs/imagenet-to-folder.yaml as its header says to run it: ./resnet50.pth (torchvision's own
    state_dict) and --config data_root=<an image folder>; the checkpoint's keys are checked while planning,
    and a ResNet-18 file in its place is refused naming the file."""
    import torch
    import torchvision
    from PIL import Image

    for subset, k in (("train", 70), ("val", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / "folder" / subset / c
            d.mkdir(parents=True)
            for i in range(k):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    torch.save(torchvision.models.resnet50().state_dict(), "resnet50.pth")
    c = yaml.safe_load((ROOT / "configs/imagenet-to-folder.yaml").read_text())
    c["data_root"] = str(tmp_path / "folder")
    _checked(c)
    nets = crossplan.cross_nets(c)
    assert len(nets) == 3 * (1 + 5 + 5 + 5) and crossplan.sources(c)["imagenet"].model() == "results/sources/imagenet/model.pt"
    assert {n.dataset for n in nets} == {""}  # the folder is the config's own data
    torch.save(torchvision.models.resnet18().state_dict(), "resnet50.pth")
    c = yaml.safe_load((ROOT / "configs/imagenet-to-folder.yaml").read_text())
    c["data_root"] = str(tmp_path / "folder")
    with pytest.raises(plan.ConfigError, match=r"experiment\.cross\.sources\.imagenet: resnet50\.pth.*layer1\.0\.conv3"):
        _checked(c)
