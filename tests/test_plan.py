import copy

import pytest
import yaml

from transferable import paths, plan

from conftest import ROOT


@pytest.fixture
def cfg():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_net_names_round_trip():
    for name, treatment, n, src in [("baseB", "base", 0, ""), ("A3B", "AnB", 3, "A"), ("B5B_ft", "BnB+", 5, "B"),
                                    ("A7B_ft", "AnB+", 7, "A"), ("R2A", "random", 2, "R"),
                                    ("A12B", "AnB", 12, "A"), ("B17B_ft", "BnB+", 17, "B"),  # ResNet-50 units
                                    ("baseB_ft", "base+", 0, "B")]:  # the control: baseB trained on
        p = paths.parse_net(name)
        assert (p.treatment, p.n, p.source) == (treatment, n, src)
        assert paths.net_name(p.target, p.n, p.source, p.finetune) == name
    for bad in ("A0B", "A012B", "A100B", "baseb", "R2A_ft", "x", "baseB_ft_ft", "baseBft"):
        with pytest.raises(ValueError):
            paths.parse_net(bad)


def test_net_file_paths_round_trip():
    for run, net in (("rand0", "baseB"), ("natman.s2", "A3B_ft"), ("all.s1", "R7A")):
        assert paths.parse_net_file(paths.net_file(run, net, "model.pt")) == (run, net)
    for bad in ("model.pt", "results/nets/rand0/notanet/model.pt", "results/nets/bad name!/baseA/model.pt"):
        with pytest.raises(ValueError):
            paths.parse_net_file(bad)


def test_demo_plan_counts(cfg):
    fig2 = plan.figure_nets(cfg, "fig2")
    # 6 splits, target B only (the split is the unit): baseA (source), baseB, BnB and AnB at n = 1, 3, 5, 7,
    # BnB+ and AnB+ at n = 3, 7
    assert len(fig2) == 6 * (2 + 2 * 4 + 2 * 2)
    assert {n.parsed.n for n in fig2 if n.parsed.finetune} == {3, 7}
    assert {n.parsed.target for n in fig2} == {"A", "B"} and {n.parsed.target for n in fig2 if not n.parsed.is_base} == {"B"}
    fig3 = plan.figure_nets(cfg, "fig3")
    assert not any(n.parsed.treatment in ("BnB", "BnB+", "AnB+") and n.split == "rand0" for n in fig3)
    assert {n.name for n in fig3 if n.split == "all"} == {"baseA"} | {f"R{i}A" for i in (1, 3, 5, 7)}
    assert {n.split for n in fig3 if n.parsed.treatment == "random"} == {"all", "all.s1"}  # 2 seeds
    assert len(plan.figure_nets(cfg, "all")) == 84 + 4 * 10 + 2 * 5


def test_the_control_base_plus_is_one_net_per_cell_copying_its_own_base(cfg):
    """Issue 22/23: base+ (the base net trained on) comes from the treatment table alone: one net per
    (split, target), whatever the layers, copying the target's own base net, trained in that half's group."""
    cfg = copy.deepcopy(cfg)
    cfg["experiment"]["random_splits"]["treatments"].append("base+")
    plan.check(cfg)
    ctl = [n for n in plan.figure_nets(cfg, "fig2") if n.parsed.treatment == "base+"]
    assert sorted(n.split for n in ctl) == [f"rand{s}" for s in range(6)] and {n.name for n in ctl} == {"baseB_ft"}
    assert plan.source_of(plan.Net("rand0", "baseB_ft")) == plan.Net("rand0", "baseB")
    assert paths.parse_net("baseB_ft").frozen == 0 and paths.parse_net("A3B").frozen == 3
    groups = {(s, t): nets for s, t, nets in plan.stream_groups(cfg)}
    assert "baseB_ft" in groups[("rand0", "B")]
    import re

    assert re.fullmatch(paths.NET_WILDCARD, "baseB_ft") and not re.fullmatch(paths.BASE_NET_WILDCARD, "baseB_ft")


def test_every_similarity_analysis_has_a_random_split_seed_floor(cfg):
    """Issue 24: the noise floor of CKA between random-split nets: rand0's two base nets once more with
    another seed (rand0.s1), by default (experiment.similarity.seed_floor: 1) in every design that runs
    the analysis, the paper's included; 0 turns it off; they are not figure nets (no table changes)."""
    floor = {(n.split, n.name) for n in plan.seed_floor_nets(cfg)}
    assert floor == {("rand0", "baseA"), ("rand0", "baseB"), ("rand0.s1", "baseA"), ("rand0.s1", "baseB")}
    assert floor <= {(n.split, n.name) for n in plan.similarity_nets(cfg)}
    assert not {n.split for n in plan.figure_nets(cfg, "all")} & {"rand0.s1"}
    paper = yaml.safe_load((ROOT / "configs/paper.yaml").read_text())
    assert {("rand0.s1", "baseA"), ("rand0.s1", "baseB")} <= {(n.split, n.name) for n in plan.similarity_nets(paper)}
    cfg = copy.deepcopy(cfg)
    cfg["experiment"]["similarity"]["seed_floor"] = 2
    assert {n.split for n in plan.seed_floor_nets(cfg)} == {"rand0", "rand0.s1", "rand1", "rand1.s1"}
    cfg["experiment"]["similarity"]["seed_floor"] = 0
    assert plan.seed_floor_nets(cfg) == []


def test_fig2_plans_no_natman_or_random(cfg):
    assert {n.split for n in plan.figure_nets(cfg, "fig2")} == {f"rand{s}" for s in range(6)}


def test_sources(cfg):
    assert plan.source_of(plan.Net("rand0", "A3B_ft")) == plan.Net("rand0", "baseA")
    assert plan.source_of(plan.Net("all", "R3A")) is None


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c["experiment"]["random_splits"].update(splits=["nope"]), "not defined"),
        (lambda c: c["experiment"]["natman"].update(targets=["C"]), "not a half"),
        (lambda c: c["experiment"]["random_filters"].update(split="rand0"), "kind"),
        (lambda c: c["experiment"]["natman"].update(layers=[0, 8]), "outside the allowed 1..7"),
    ],
)
def test_semantic_errors_name_the_key(cfg, edit, match):
    bad = copy.deepcopy(cfg)
    edit(bad)
    with pytest.raises(plan.ConfigError, match=match):
        plan.check(bad)


def test_stream_groups(cfg):
    groups = {(s, t): nets for s, t, nets in plan.stream_groups(cfg)}
    assert set(groups) == ({(f"rand{s}", "B") for s in range(6)}
                           | {(s, t) for s in ("natman", "natman.s1", "natman.s2", "natman.s3") for t in "AB"}
                           | {("all", "A"), ("all.s1", "A")})
    assert len(groups[("rand0", "B")]) == 12 and "baseB" not in groups[("rand0", "B")]
    assert groups[("all", "A")] == [f"R{n}A" for n in (1, 3, 5, 7)]


def test_finetune_layers_default_to_layers(cfg):
    cfg = copy.deepcopy(cfg)
    del cfg["experiment"]["random_splits"]["finetune_layers"]
    assert {n.parsed.n for n in plan.figure_nets(cfg, "fig2") if n.parsed.finetune} == {1, 3, 5, 7}
    cfg["experiment"]["random_splits"]["finetune_layers"] = [0, 9]
    with pytest.raises(plan.ConfigError, match="finetune_layers"):
        plan.check(cfg)
