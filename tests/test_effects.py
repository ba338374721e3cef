"""Paired effects, intervals and verdicts: hand-computed examples, the boundaries of the verdict logic, and
the authors' own nets, from which Table 1 is recomputed pooled (the published values) and paired (derived
here independently from the parsed logs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transferable import paths, plan
from transferable.figures import effects as fx
from transferable.figures.tables import paper_runs
from transferable.figures.tables import coerce_runs

REPO = Path(__file__).resolve().parents[1]
T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528}  # Student's t, 0.975 quantile


def test_paired_t_by_hand():
    e = fx.cluster_mean([0.01, 0.02, 0.03], ["a", "b", "c"])
    se = 0.01 / math.sqrt(3)
    assert e.test == "paired t" and e.nets == 3 and e.cells == 3 and e.df == 2
    assert e.estimate == pytest.approx(0.02)
    assert e.ci_lo == pytest.approx(0.02 - T975[2] * se) and e.ci_hi == pytest.approx(0.02 + T975[2] * se)
    t = 0.02 / se  # on 2 df the t CDF is closed-form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert e.p_value == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(2 + t * t))))


def test_cluster_robust_by_hand():
    # two cells of two nets: mean 3; cell sums of deviations -2 and +2; var = 2/1 * 8 / 16 = 1
    e = fx.cluster_mean([1, 3, 2, 6], ["g1", "g1", "g2", "g2"])
    assert e.cells == 2 and e.nets == 4 and e.df == 1 and e.se == pytest.approx(1.0)
    assert (e.ci_lo, e.ci_hi) == pytest.approx((3 - T975[1], 3 + T975[1]))
    assert "cluster-robust" in e.test


def test_welch_by_hand():
    # group 1: 1, 2, 3 (mean 2, se^2 1/3); group 2: 0, 0, 0, 4 (mean 1, se^2 4/4 = 1)
    e = fx.welch([1, 2, 3], ["a", "b", "c"], [0, 0, 0, 4], ["d", "e", "f", "g"])
    s1, s2 = 1 / 3, 1.0
    df = (s1 + s2) ** 2 / (s1**2 / 2 + s2**2 / 3)
    assert e.estimate == pytest.approx(1.0) and e.df == pytest.approx(df)
    assert e.se == pytest.approx(math.sqrt(s1 + s2)) and e.cells == 7


def test_welch_with_fixed_strata_by_hand():
    # the natural/man-made design: two directions (strata), two seeds each; the directions' different
    # levels (-0.21 and -0.11) are not noise, only the seeds' spread within a direction is
    e = fx.welch([-0.20, -0.22, -0.10, -0.12], ["nm/A", "nm.s1/A", "nm/B", "nm.s1/B"],
                 [-0.05, -0.07, -0.06, -0.06], ["r0/A", "r0/B", "r1/A", "r1/B"], strata1=["A", "A", "B", "B"])
    v_dir = (0.01**2) / 4  # each direction: se 0.01 (sd 0.01414 / sqrt 2), weight 1/2 -> variance / 4
    v_rand = (0.0002 / 3) / 4  # random splits: sd^2 = 0.0002 / 3, se^2 = sd^2 / 4
    var = 2 * v_dir + v_rand
    assert e.estimate == pytest.approx(-0.16 - -0.06) and e.se == pytest.approx(math.sqrt(var))
    assert e.df == pytest.approx(var**2 / (2 * v_dir**2 / 1 + v_rand**2 / 3))
    assert fx.verdict(e, -1) == "reproduced"
    # one seed per direction: no within-direction variance, no interval
    one = fx.welch([-0.2, -0.1], ["nm/A", "nm/B"], [-0.05, -0.07, -0.06], ["a", "b", "c"], strata1=["A", "B"])
    assert one.estimate == pytest.approx(-0.09) and np.isnan(one.ci_lo)


def test_verdict_boundaries():
    def est(lo, hi, cells=4):
        return fx.Estimate((lo + hi) / 2, lo, hi, 1, 3, 0.5, cells, cells, "t")

    assert fx.verdict(est(-0.03, -0.01), -1) == "reproduced"
    assert fx.verdict(est(-0.03, -0.01), +1) == "contradicted"
    assert fx.verdict(est(0.01, 0.03), +1) == "reproduced"
    assert fx.verdict(est(0.0, 0.03), +1) == "inconclusive"  # touching zero is not excluding it
    assert fx.verdict(est(-0.03, 0.0), -1) == "inconclusive"
    assert fx.verdict(est(-0.03, 0.02), -1) == "inconclusive"
    one = fx.cluster_mean([-0.2], ["only"])  # one net, one cell: an estimate but no interval
    assert one.estimate == pytest.approx(-0.2) and np.isnan(one.ci_lo) and fx.verdict(one, -1) == "inconclusive"
    two_nets_one_cell = fx.cluster_mean([-0.2, -0.3], ["c", "c"])
    assert two_nets_one_cell.cells == 1 and fx.verdict(two_nets_one_cell, -1) == "inconclusive"
    same = fx.cluster_mean([-0.1, -0.1, -0.1], ["a", "b", "c"])  # no spread: a point interval
    assert fx.verdict(same, -1) == "reproduced"
    assert same.ci_lo == pytest.approx(-0.1) and same.ci_hi == pytest.approx(-0.1)
    assert fx.layer_verdict(est(0.0, 0.03)) == "unresolved" and fx.layer_verdict(est(0.01, 0.03)) == "positive"


def _runs(cells: dict, natman: dict | None = None) -> pd.DataFrame:
    """cells: {(split, target): {"base": acc, ("AnB", n): acc, ...}} -> a runs frame."""
    rows = []
    for (split, target), nets in cells.items():
        for key, acc in nets.items():
            t, n = ("base", 0) if key == "base" else key
            rows.append({"split": split, "split_kind": "random", "net": f"{t}{n}{target}", "treatment": t, "n": n,
                         "target_half": target, "top1": acc})
    for (split, target), nets in (natman or {}).items():
        for key, acc in nets.items():
            t, n = ("base", 0) if key == "base" else key
            rows.append({"split": split, "split_kind": "natman", "net": f"{t}{n}{target}", "treatment": t, "n": n,
                         "target_half": target, "top1": acc})
    return coerce_runs(pd.DataFrame(rows))


def test_pairing_removes_the_difference_between_target_halves():
    # AnB+ is always 1 point above its own base, but the halves' bases differ by 5 points: pooled, the
    # "boost over BnB+" is the halves' difference; paired, it is zero
    cells = {("r0", "A"): {"base": 0.60, ("BnB+", 3): 0.61, ("AnB+", 3): 0.61},
             ("r0", "B"): {"base": 0.65, ("AnB+", 3): 0.66},
             ("r1", "A"): {"base": 0.61, ("BnB+", 3): 0.62, ("AnB+", 3): 0.62},
             ("r1", "B"): {"base": 0.66, ("AnB+", 3): 0.67}}
    df = _runs(cells)
    d = fx.paired_diffs(df, "random", "AnB+", "base", 3, 3)
    assert d["diff"].round(6).tolist() == [0.01] * 4
    eff = fx.effects(df)
    row = eff[(eff["claim"] == "boost_over_selffer") & (eff["layers"] == "3-7")].iloc[0]
    assert row["estimate"] == pytest.approx(0.0) and row["test"] == "paired t"  # r0/A and r1/A hold both
    # no nets at n = 5: no estimate, and no claim that the treatments sat in different cells
    row = eff[(eff["claim"] == "boost_over_selffer") & (eff["layers"] == "5")].iloc[0]
    assert row["nets"] == 0 and np.isnan(row["estimate"]) and "no cell has both" not in row["test"]


def test_effects_on_a_constructed_design():
    rng = np.random.default_rng(0)
    cells, nat = {}, {}
    for s in ("r0", "r1", "r2"):
        for t in "AB":
            base = 0.6 + rng.normal(0, 0.02)
            c = {"base": base}
            for n in range(1, 8):
                c[("AnB", n)] = base - 0.01 * n + rng.normal(0, 0.002)
                c[("BnB", n)] = base + rng.normal(0, 0.002)
            cells[(s, t)] = c
    for s in ("nm", "nm.s1"):
        for t in "AB":
            base = 0.5 + rng.normal(0, 0.02)
            nat[(s, t)] = {"base": base, **{("AnB", n): base - 0.03 * n + rng.normal(0, 0.003) for n in range(1, 8)}}
    eff = fx.effects(_runs(cells, nat))
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    assert claim.loc[("specificity_vs_base", "7"), "verdict"] == "reproduced"
    assert claim.loc[("specificity_vs_base", "7"), "estimate"] == pytest.approx(-0.07, abs=0.005)
    assert claim.loc[("specificity_grows", "1-7"), "verdict"] == "reproduced"
    assert claim.loc[("dissimilar_loses_more", "7"), "verdict"] == "reproduced"
    assert claim.loc[("dissimilar_loses_more", "7"), "cells"] == 6 + 4
    assert claim.loc[("coadaptation", "3-6"), "verdict"] == "inconclusive"
    assert claim.loc[("boost_over_base", "1-7"), "nets"] == 0  # no AnB+ nets: no estimate, no verdict
    assert claim.loc[("boost_over_base", "1-7"), "verdict"] == "inconclusive"
    layer = eff[(eff["scope"] == "layer") & (eff["claim"] == "specificity_vs_base")].set_index("n_lo")
    assert layer.loc[7, "verdict"] == "negative" and layer.loc[7, "cells"] == 6


# ---------------------------------------------------------------------------------------------------------
# the authors' nets


@pytest.fixture(scope="module")
def logs() -> dict:
    return json.loads((REPO / "tests/data/paper_results.json").read_text())["networks"]


def _paired_table1_from_logs(logs: dict, lo: int, hi: int) -> tuple[float, float]:
    """Independently of the package: every fine-tuned net minus the base net of its own target half."""
    acc = {k: v["top10_mean_acc"] for k, v in logs.items() if v.get("ntests")}  # 22 dirs have no log
    gains = {"AnB+": [], "BnB+": []}
    for name, a in acc.items():
        if not name.startswith("transfer-ft"):
            continue
        pair, n = name[len("transfer-ft"):].split("_1_")
        if not lo <= int(n) <= hi:
            continue
        src, tgt = pair[:2], pair[2:]
        gains["BnB+" if src == tgt else "AnB+"].append(a - acc[f"half{tgt}"])
    return 100 * np.mean(gains["AnB+"]), 100 * (np.mean(gains["AnB+"]) - np.mean(gains["BnB+"]))


def test_table1_of_the_authors_nets_pooled_and_paired(logs):
    t = fx.table1_three_ways(paper_runs()).set_index(["method", "layers"])
    published = {"1-7": (1.6, 1.4), "3-7": (1.8, 1.4), "5-7": (2.1, 1.7)}
    for layers, (over_base, over_selffer) in published.items():
        lo, hi = map(int, layers.split("-"))
        pooled = t.loc[("pooled", layers)]
        assert round(pooled["paper_over_base"], 1) == over_base
        assert round(pooled["paper_over_selffer"], 1) == over_selffer
        paired = t.loc[("paired", layers)]
        want_base, want_selffer = _paired_table1_from_logs(logs, lo, hi)
        assert paired["paper_over_base"] == pytest.approx(want_base, abs=1e-9)
        assert paired["paper_over_selffer"] == pytest.approx(want_selffer, abs=1e-9)
    # the paper's "1.4 points over BnB+" is the difference between the target halves: paired, it vanishes
    assert t.loc[("paired", "1-7"), "paper_over_base"] == pytest.approx(0.97, abs=0.01)
    assert abs(t.loc[("paired", "1-7"), "paper_over_selffer"]) < 0.05
    assert t.loc[("paired", "1-7"), "paper_cells"] == 2  # every AnB+ net targets 0B or 1B
    # on the authors' own nets, the restricted tables are the unrestricted ones
    for layers in published:
        for col in ("paper_over_base", "paper_over_selffer"):
            assert t.loc[("authors_nets_pooled", layers), col] == pytest.approx(t.loc[("pooled", layers), col])


def test_authors_nets_restricts_a_symmetric_design():
    cells = {}
    for s in ("rand0", "rand1", "rand2"):
        for t in "AB":
            cells[(s, t)] = {"base": 0.6, **{(tr, n): 0.6 for tr in ("BnB+", "AnB+") for n in range(1, 8)}}
    cells[("rand0.s1", "B")] = {"base": 0.6, **{("AnB+", n): 0.6 for n in range(1, 8)}}  # a seed replicate
    df = _runs(cells)
    sub = fx.authors_nets(df)
    plus = sub[sub["treatment"].str.endswith("+")]
    assert set(plus.loc[plus["treatment"] == "BnB+", "target_half"]) == {"A"}
    assert set(plus.loc[plus["treatment"] == "AnB+", "target_half"]) == {"B"}
    assert len(plus) == 20 + 7 and (sub["treatment"] == "base").sum() == 7
    assert (plus["split"] == "rand0.s1").sum() == 7  # a replicate of the authors' split 0 counts as split 0


def test_paper_effects_verdicts():
    eff = fx.effects(paper_runs())
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    for key in [("specificity_vs_base", "7"), ("specificity_vs_selffer", "7"), ("coadaptation", "3-6"),
                ("boost_over_base", "1-7")]:
        assert claim.loc[key, "verdict"] == "reproduced", key
    # the mean of the two natural/man-made directions loses 16.7 points more than random-split transfer
    # (0.2501 - 0.0826, paper.md), but the authors trained one net per direction: no seed variance, no CI
    dis = claim.loc[("dissimilar_loses_more", "7")]
    assert dis["estimate"] == pytest.approx(-(0.2501 - 0.0826), abs=5e-4) and dis["verdict"] == "inconclusive"
    assert claim.loc[("boost_over_selffer", "1-7"), "verdict"] == "inconclusive"
    assert claim.loc[("random_filters_lose_more", "1-7"), "cells"] == 1 + 8  # one random-filter cell: no CI
    assert claim.loc[("random_filters_lose_more", "1-7"), "verdict"] == "inconclusive"


# ---------------------------------------------------------------------------------------------------------
# replicates in the design


def test_replicate_names():
    assert paths.replicate_split("natman", 0) == "natman"
    assert paths.replicate_split("natman", 2) == "natman.s2"
    assert paths.parse_replicate("natman.s2") == ("natman", 2)
    assert paths.base_split("rand0") == "rand0"
    for bad in ("natman.s0", "a.b", "x/y", "natman.s"):
        with pytest.raises(ValueError):
            paths.parse_replicate(bad)


def test_replicates_in_the_plan():
    import yaml

    cfg = yaml.safe_load((REPO / "configs/micro.yaml").read_text())
    cfg["experiment"]["natman"]["replicates"] = 3
    cfg["experiment"]["random_filters"]["replicates"] = 2
    nets = plan.figure_nets(cfg, "all")
    assert {n.split for n in nets} == {"rand0", "natman", "natman.s1", "natman.s2", "all", "all.s1"}
    # each replicate has its own base nets, and its transfers copy from them
    assert plan.source_of(plan.Net("natman.s2", "A1B")) == plan.Net("natman.s2", "baseA")
    assert plan.split_kind(cfg, "natman.s1") == "natman" and plan.halves_of(cfg, "natman.s2") == ["A", "B"]
    assert plan.used_splits(cfg) == ["all", "natman", "rand0"]
    groups = {(s, t) for s, t, _ in plan.stream_groups(cfg)}
    assert ("natman.s2", "B") in groups and ("all.s1", "A") in groups


def test_claims_for_other_depths_keep_relative_depth():
    """Issue 12: a net of K units tests each claim at the same relative depth; CaffeNet's are unchanged."""
    from transferable.figures.effects import CLAIMS, claims_for

    assert claims_for(7) == CLAIMS
    five = {c.key: c.ranges for c in claims_for(5)}
    assert five["coadaptation"] == ((2, 4),) and five["specificity_vs_selffer"] == ((5, 5),)
    assert five["specificity_grows"] == ((1, 5),) and five["boost_over_base"] == ((1, 5), (2, 5), (4, 5))
    seventeen = {c.key: c.ranges for c in claims_for(17)}  # ResNet-50's blocks
    assert seventeen["specificity_vs_base"] == ((17, 17),) and seventeen["coadaptation"] == ((7, 15),)
