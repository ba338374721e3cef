"""Paired effects, intervals and verdicts: hand-computed examples, the boundaries of the verdict logic, and
the authors' own nets, from which Table 1 is recomputed pooled (the published values) and paired (derived
here independently from the parsed logs)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from transferable import paths, plan
from transferable.figures import effects as fx
from transferable.figures.tables import paper_runs
from transferable.figures.tables import coerce_runs

REPO = Path(__file__).resolve().parents[1]
T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528}  # Student's t, 0.975 quantile


def test_paired_t_by_hand():
    e = fx.cluster_mean([0.01, 0.02, 0.03], ["a", "b", "c"])
    se = 0.01 / math.sqrt(3)
    assert e.test == "paired t" and e.nets == 3 and e.units == 3 and e.df == 2
    assert e.estimate == pytest.approx(0.02)
    assert e.ci_lo == pytest.approx(0.02 - T975[2] * se) and e.ci_hi == pytest.approx(0.02 + T975[2] * se)
    t = 0.02 / se  # on 2 df the t CDF is closed-form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert e.p_value == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(2 + t * t))))


def test_unit_means_by_hand():
    # two units of two nets: unit means 2 and 4, mean 3, sd sqrt(2), se 1: t on 1 df
    e = fx.cluster_mean([1, 3, 2, 6], ["g1", "g1", "g2", "g2"])
    assert e.units == 2 and e.nets == 4 and e.df == 1 and e.se == pytest.approx(1.0)
    assert (e.ci_lo, e.ci_hi) == pytest.approx((3 - T975[1], 3 + T975[1]))
    assert "unit means" in e.test
    # a unit's value is the mean over its cells of the cells' means: a cell with more nets weighs no more
    v = fx.unit_values([1.0, 1.0, 1.0, 4.0], ["u", "u", "u", "u"], ["c1", "c1", "c1", "c2"])
    assert v.to_dict() == {"u": 2.5}


def test_welch_by_hand():
    # units 1: 1, 2, 3 (mean 2, se^2 1/3); units 2: 0, 0, 0, 4 (mean 1, se^2 4/4 = 1)
    e = fx.welch(pd.Series([1.0, 2, 3]), pd.Series([0.0, 0, 0, 4]), 7, "Welch")
    s1, s2 = 1 / 3, 1.0
    df = (s1 + s2) ** 2 / (s1**2 / 2 + s2**2 / 3)
    assert e.estimate == pytest.approx(1.0) and e.df == pytest.approx(df)
    assert e.se == pytest.approx(math.sqrt(s1 + s2)) and e.units == 7 and e.nets == 7
    one = fx.welch(pd.Series([1.0]), pd.Series([0.0, 1.0]), 3, "Welch")  # one unit: an estimate, no interval
    assert one.estimate == pytest.approx(0.5) and np.isnan(one.ci_lo)


def test_holm_by_hand():
    assert fx.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(fx.holm([0.01, np.nan])[1]) and fx.holm([0.01, np.nan])[0] == pytest.approx(0.01)
    # two rows, each a difference and an equivalence test, of which at most one null can be true: the
    # multiplier is the number of rows still holding an untested hypothesis (Shaffer), not of hypotheses
    p = [0.001, 0.8, 0.02, 0.9]
    rows = ["r1", "r1", "r2", "r2"]
    assert fx.holm(p, groups=rows) == pytest.approx([0.002, 1.0, 0.04, 1.0])
    assert fx.holm(p)[2] == pytest.approx(0.06)  # plain Holm over 4 would not reject r2's difference


def test_tost_at_its_boundaries():
    df, margin, est = 5, 0.01, 0.002
    q = stats.t.ppf(0.95, df)
    se = (margin - est) / q  # the 90% interval's upper end exactly at the margin
    assert fx.tost_p(est, se, df, margin) == pytest.approx(0.05)
    assert fx.tost_p(est, 0.99 * se, df, margin) < 0.05 < fx.tost_p(est, 1.01 * se, df, margin)
    assert fx.tost_p(-est, se, df, margin) == pytest.approx(0.05)  # symmetric
    assert fx.tost_p(0.02, 0.0, df, margin) == 1.0 and fx.tost_p(0.0, 0.0, df, margin) == 0.0
    assert np.isnan(fx.tost_p(est, se, df, None))


def test_verdicts_from_adjusted_p():
    def est(lo=-0.03, hi=-0.01):
        return fx.Estimate((lo + hi) / 2, lo, hi, 0.01, 5, 0.01, 6, 6, "t")

    assert fx._decide(est(), -1, 0.01, 0.9, 0.05) == "reproduced"
    assert fx._decide(est(), +1, 0.01, 0.9, 0.05) == "contradicted"
    assert fx._decide(est(), -1, 0.06, 0.9, 0.05) == "inconclusive"  # adjusted p decides, not the 95% CI
    assert fx._decide(est(-0.002, 0.002), -1, 1.0, 0.01, 0.05) == "equivalent"  # shown small: not the claim
    assert fx._decide(est(-0.002, 0.002), 0, 1.0, 0.01, 0.05) == "reproduced"  # "no difference" claims
    assert fx._decide(est(), 0, 0.01, 0.9, 0.05) == "contradicted"
    assert fx._decide(est(), 0, 0.2, 0.9, 0.05) == "inconclusive"
    one = fx.cluster_mean([-0.2, -0.3], ["c", "c"])  # two nets of one unit: no interval
    assert one.units == 1 and fx._decide(one, -1, np.nan, np.nan, 0.05) == "no interval"
    same = fx.cluster_mean([-0.1, -0.1, -0.1], ["a", "b", "c"])  # no spread: a point interval
    assert same.ci_lo == pytest.approx(-0.1) and same.ci_hi == pytest.approx(-0.1) and same.p_value == 0.0


def _runs(cells: dict, natman: dict | None = None) -> pd.DataFrame:
    """cells: {(split, target): {"base": acc, ("AnB", n): acc, ...}} -> a runs frame."""
    rows = []
    for (split, target), nets in cells.items():
        for key, acc in nets.items():
            t, n = (key, 0) if key in ("base", "base+") else key
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
    assert row["estimate"] == pytest.approx(0.0) and row["test"] == "paired t over splits"  # r0/A, r1/A hold both
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
    for s in ("nm", "nm.s1", "nm.s2"):
        for t in "AB":
            base = 0.5 + rng.normal(0, 0.02)
            nat[(s, t)] = {"base": base, **{("AnB", n): base - 0.03 * n + rng.normal(0, 0.003) for n in range(1, 8)}}
    eff = fx.effects(_runs(cells, nat))
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    assert claim.loc[("specificity_vs_base", "7"), "verdict"] == "reproduced"
    assert claim.loc[("specificity_vs_base", "7"), "estimate"] == pytest.approx(-0.07, abs=0.005)
    assert claim.loc[("specificity_grows", "1-7"), "verdict"] == "reproduced"
    assert claim.loc[("dissimilar_loses_more", "7"), "verdict"] == "reproduced"
    assert claim.loc[("dissimilar_loses_more", "7"), "units"] == 3 + 3  # splits + seed replicates
    # BnB equals base to within noise of 0.2 points: shown within the 1-point margin, against the paper
    assert claim.loc[("coadaptation", "3-6"), "verdict"] == "equivalent"
    assert claim.loc[("coadaptation", "3-6"), "agrees"] == "no"
    assert claim.loc[("boost_over_base", "1-7"), "nets"] == 0  # no AnB+ nets: no estimate, no verdict
    assert claim.loc[("boost_over_base", "1-7"), "verdict"] == "no interval"
    layer = eff[(eff["scope"] == "layer") & (eff["claim"] == "specificity_vs_base")].set_index("n_lo")
    assert layer.loc[7, "verdict"] == "exploratory" and layer.loc[7, "reason"].endswith("negative")
    assert layer.loc[7, "units"] == 3 and np.isnan(layer.loc[7, "p_adjusted"])  # exploratory: never adjusted


# ---------------------------------------------------------------------------------------------------------
# the authors' nets


@pytest.fixture(scope="module")
def logs() -> dict:
    return json.loads((REPO / "tests/data/paper_results.json").read_text())["networks"]


def _paired_table1_from_logs(logs: dict, lo: int, hi: int) -> tuple[float, float]:
    """Independently of the package: every fine-tuned net minus the base net of its own target half, averaged
    per split (the unit), then over splits; over BnB+: per split, the AnB+ gains' mean minus the BnB+ gains'."""
    acc = {k: v["top10_mean_acc"] for k, v in logs.items() if v.get("ntests")}  # 22 dirs have no log
    gains: dict = {"AnB+": {}, "BnB+": {}}
    for name, a in acc.items():
        if not name.startswith("transfer-ft"):
            continue
        pair, n = name[len("transfer-ft"):].split("_1_")
        if not lo <= int(n) <= hi:
            continue
        src, tgt = pair[:2], pair[2:]
        gains["BnB+" if src == tgt else "AnB+"].setdefault(tgt[0], []).append(a - acc[f"half{tgt}"])
    anb = {s: np.mean(v) for s, v in gains["AnB+"].items()}
    bnb = {s: np.mean(v) for s, v in gains["BnB+"].items()}
    both = sorted(set(anb) & set(bnb))
    return 100 * np.mean(list(anb.values())), 100 * np.mean([anb[s] - bnb[s] for s in both])


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
    assert t.loc[("paired", "1-7"), "paper_over_base"] == pytest.approx(0.95, abs=0.01)
    assert abs(t.loc[("paired", "1-7"), "paper_over_selffer"]) < 0.05
    assert t.loc[("paired", "1-7"), "paper_units"] == 2  # every fine-tuned net is on split 0 or 1
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
                ("specificity_grows", "1-7"), ("no_loss_low_layers", "1-2")]:
        assert claim.loc[key, "verdict"] == "reproduced", key
    assert claim.loc[("coadaptation", "3-6"), "units"] == 4 and claim.loc[("coadaptation", "3-6"), "df"] == 3
    # the authors' BnB+ nets sit 1 point above their base nets (2 splits): not shown within the 1-point
    # margin, so extra training cannot be ruled out and the claims it would explain are confounded
    back = claim.loc[("finetune_back_to_base", "1-7")]
    assert back["estimate"] == pytest.approx(0.0098, abs=5e-4) and back["verdict"] == "inconclusive"
    assert claim.loc[("boost_over_base", "1-7"), "verdict"] == "confounded"
    assert "extra training alone" in claim.loc[("boost_over_base", "1-7"), "reason"]
    # the mean of the two natural/man-made directions loses 16.7 points more than random-split transfer
    # (0.2501 - 0.0826, paper.md), but the authors trained one net per direction: one unit, no interval
    dis = claim.loc[("dissimilar_loses_more", "7")]
    assert dis["estimate"] == pytest.approx(-(0.2501 - 0.0826), abs=5e-4) and dis["verdict"] == "no interval"
    assert claim.loc[("random_filters_lose_more", "1-7"), "units"] == 1 + 4  # one all-class net per n
    assert claim.loc[("random_filters_lose_more_than_distant", "1-7"), "verdict"] == "no interval"
    # every claim row has its p adjusted; the family is the claim rows (both tests of each)
    tested = claim.dropna(subset=["p_value"])
    assert len(tested) >= 8 and (tested["p_adjusted"] >= tested["p_value"]).all()


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
    assert seventeen["specificity_vs_base"] == ((17, 17),) and seventeen["coadaptation"] == ((6, 14),)
    # issue 24: from 11 units on, round(n * K / 7) moved "layer 1" to unit 2; the first unit stays the first
    for k in (11, 13, 17):
        deep = {c.key: c.ranges for c in claims_for(k)}
        assert deep["no_loss_low_layers"][0][0] == 1 and deep["specificity_grows"] == ((1, k),), k
        assert deep["boost_over_base"][0] == (1, k), k
    assert {c.key: c.ranges for c in claims_for(13)}["no_loss_low_layers"] == ((1, 3),)  # ViT-B/16


# ---------------------------------------------------------------------------------------------------------
# the unit of replication, adequacy and confounds


def _split_effect_design(rng, splits: int, effect: float, split_sd: float, net_sd: float) -> pd.DataFrame:
    """Random splits with both target halves; AnB at n = 7 differs from its base by ``effect`` plus a split
    effect shared by both halves of the split (the design's dependence) plus noise of each net."""
    cells = {}
    for s in range(splits):
        u = rng.normal(0, split_sd)
        for t in "AB":
            base = 0.6 + rng.normal(0, 0.02)
            cells[(f"rand{s}", t)] = {"base": base, ("AnB", 7): base + effect + u + rng.normal(0, net_sd)}
    return _runs(cells)


@pytest.mark.slow
def test_unit_interval_covers_at_the_nominal_rate_when_halves_are_dependent():
    """A strong split effect makes the two halves of a split move together: the interval over splits covers
    the true effect ~95% of the time; counting the 2 x 6 cells as independent would cover far less."""
    rng = np.random.default_rng(20261203)
    claim = next(c for c in fx.CLAIMS if c.key == "specificity_vs_base")
    true, sims, hits, naive_hits = -0.02, 400, 0, 0
    for _ in range(sims):
        df = _split_effect_design(rng, 6, true, split_sd=0.02, net_sd=0.004)
        e = fx._estimate(fx.Pairs(df), claim, 7, 7, 0.95, None)
        assert e.units == 6 and e.df == 5 and e.nets == 12
        hits += e.ci_lo <= true <= e.ci_hi
        d = fx.paired_diffs(df, "random", "AnB", "base", 7, 7)  # the cells taken as independent
        naive = fx.one_sample(d["diff"], len(d), "naive")
        naive_hits += naive.ci_lo <= true <= naive.ci_hi
    assert 0.92 <= hits / sims <= 0.98, hits / sims
    assert naive_hits / sims < 0.88, naive_hits / sims


def test_one_target_per_split_makes_every_cell_a_unit():
    rng = np.random.default_rng(1)
    df = _split_effect_design(rng, 6, -0.05, 0.01, 0.004)
    df = df[df["target_half"] == "B"]
    claim = fx.effects(df).query("scope == 'claim'").set_index(["claim", "layers"])
    row = claim.loc[("specificity_vs_base", "7")]
    assert row["units"] == 6 and row["nets"] == 6 and row["df"] == 5 and row["unit"] == "split"
    assert row["verdict"] == "reproduced" and row["p_adjusted"] < 0.05


def test_seed_replicates_of_one_random_split_are_one_unit():
    cells = {(sp, t): {"base": 0.6, ("AnB", 7): 0.5 + 0.01 * i} for i, sp in enumerate(["rand0", "rand0.s1"])
             for t in "AB"}
    claim = fx.effects(_runs(cells)).query("scope == 'claim'").set_index(["claim", "layers"])
    row = claim.loc[("specificity_vs_base", "7")]
    assert row["units"] == 1 and row["nets"] == 4 and row["verdict"] == "no interval"
    assert row["estimate"] == pytest.approx(-0.095)


def _finetune_design(rng, bnb_plus_gain: float, late: float, splits: int = 6) -> pd.DataFrame:
    """Random splits, target B: BnB+ = base + ``bnb_plus_gain`` (what extra training alone gives), AnB+ 1.5
    points above BnB+, BnB 1 point below base; base nets gained ``late`` over their last quarter."""
    cells = {}
    for s in range(splits):
        base = 0.6 + rng.normal(0, 0.02)
        c = {"base": base}
        for n in (3, 5, 7):
            c[("BnB", n)] = base - 0.01 + rng.normal(0, 0.002)
            c[("BnB+", n)] = base + bnb_plus_gain + rng.normal(0, 0.002)
            c[("AnB+", n)] = base + bnb_plus_gain + 0.015 + rng.normal(0, 0.002)
        cells[(f"rand{s}", "B")] = c
    df = _runs(cells)
    df.loc[df["treatment"] == "base", "late_gain"] = late
    return df


def test_confounded_when_extra_training_alone_helps():
    df = _finetune_design(np.random.default_rng(2), bnb_plus_gain=0.05, late=0.0)
    eff = fx.effects(df)
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    assert claim.loc[("finetune_back_to_base", "1-7"), "verdict"] == "contradicted"
    for key in [("finetune_recovers", "3-6"), ("boost_over_base", "1-7"), ("boost_over_base", "5-7")]:
        assert claim.loc[key, "verdict"] == "confounded", key
        assert "extra training alone" in claim.loc[key, "reason"] and "the data alone: reproduced" in claim.loc[key, "reason"]
    # AnB+ against BnB+ had the same extra training: not confounded
    assert claim.loc[("boost_over_selffer", "1-7"), "verdict"] == "reproduced"
    ad = fx.adequacy(df, eff)
    assert not ad.ok and ad.extra_training == "contradicted"


def test_confounded_when_base_nets_have_not_plateaued():
    df = _finetune_design(np.random.default_rng(3), bnb_plus_gain=0.0, late=0.03)
    eff = fx.effects(df, margin=0.01, plateau_gain=0.01)
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    assert claim.loc[("finetune_back_to_base", "1-7"), "verdict"] == "reproduced"  # equivalent within 1 point
    assert claim.loc[("boost_over_base", "1-7"), "verdict"] == "confounded"
    assert "not at a plateau" in claim.loc[("boost_over_base", "1-7"), "reason"]
    # the same nets at a plateau: the claims stand on their own
    eff = fx.effects(df.assign(late_gain=0.0), margin=0.01, plateau_gain=0.01)
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    assert claim.loc[("boost_over_base", "1-7"), "verdict"] == "reproduced"
    assert claim.loc[("finetune_recovers", "3-6"), "verdict"] == "reproduced"
    assert fx.adequacy(df.assign(late_gain=0.0), eff).ok


def _with_control(df: pd.DataFrame, rng, gain: float) -> pd.DataFrame:
    """The design plus the control base+ (each cell's base net trained on) at base + ``gain``."""
    base = df[df["treatment"] == "base"]
    ctl = base.assign(treatment="base+", net="baseB_ft", top1=base["top1"] + gain + rng.normal(0, 0.002, len(base)))
    return coerce_runs(pd.concat([df, ctl], ignore_index=True))


def test_the_control_base_plus_takes_the_confound_out():
    """Issue 22: extra training alone helps by 5 points; AnB+ is 1.5 points above BnB+. Against base, the
    boost is confounded; against the equally trained base+ (the base net trained on), it is measured without
    the confound: AnB+ − base+ = +1.5 (reproduced), BnB+ − base+ = 0 (equivalent within 1 point: reproduced)."""
    rng = np.random.default_rng(4)
    df = _with_control(_finetune_design(rng, bnb_plus_gain=0.05, late=0.0), rng, gain=0.05)
    eff = fx.effects(df)
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    ad = fx.adequacy(df, eff)
    assert ad.control and not ad.ok and ad.extra_training == "contradicted"
    assert "base+ − base" in ad.extra_training_text and "+5.1 points [+5.0, +5.2]" in ad.extra_training_text
    assert claim.loc[("boost_over_base", "1-7"), "verdict"] == "confounded"
    assert "boost_over_control" in claim.loc[("boost_over_base", "1-7"), "reason"]
    row = claim.loc[("boost_over_control", "1-7")]
    assert row["verdict"] == "reproduced" and row["estimate"] == pytest.approx(0.015, abs=0.003)
    assert row["units"] == 6 and row["df"] == 5  # the split is the unit: one base+ per cell, n = 3, 5, 7 inside
    assert claim.loc[("finetune_back_to_control", "1-7"), "verdict"] == "reproduced"
    # the control shows a difference where there is one: base+ 3 points above BnB+ and AnB+
    df2 = _with_control(_finetune_design(np.random.default_rng(5), bnb_plus_gain=0.05, late=0.0),
                        np.random.default_rng(6), gain=0.08)
    claim2 = fx.effects(df2)
    claim2 = claim2[claim2["scope"] == "claim"].set_index(["claim", "layers"])
    assert claim2.loc[("finetune_back_to_control", "1-7"), "verdict"] == "contradicted"
    assert claim2.loc[("boost_over_control", "1-7"), "verdict"] == "contradicted"


def test_without_the_control_its_claims_say_how_to_get_it():
    df = _finetune_design(np.random.default_rng(2), bnb_plus_gain=0.05, late=0.0)
    eff = fx.effects(df)
    claim = eff[eff["scope"] == "claim"].set_index(["claim", "layers"])
    for key in [("boost_over_control", "1-7"), ("finetune_back_to_control", "1-7")]:
        assert claim.loc[key, "verdict"] == "no interval"
        assert "add base+ to experiment.random_splits.treatments" in claim.loc[key, "reason"]
    assert "add the control base+" in claim.loc[("boost_over_base", "1-7"), "reason"]
    ad = fx.adequacy(df, eff)
    assert not ad.control and "BnB+ − base" in ad.extra_training_text
    md = fx.effects_markdown(fx.effects_with_paper(df), ad)
    assert "Add the control base+" in md and "(the data alone: reproduced)" in md


def test_late_gain_of_a_history():
    from transferable.figures.tables import late_gain

    h = pd.DataFrame({"iter": [14, 28, 42, 56, 70, 84], "top1": [0.2, 0.4, 0.5, 0.55, 0.58, 0.6]})
    assert late_gain(h) == pytest.approx(0.6 - 0.55)  # the last evaluation at or before 63 is at 56
    assert np.isnan(late_gain(h.iloc[:1]))


def test_pooled_table1_uses_every_base_net():
    # rand2 has no fine-tuned net of the authors' kind: its base nets still belong to the pooled reference
    cells = {}
    for i, s in enumerate(("rand0", "rand1", "rand2")):
        for t in "AB":
            base = 0.50 + 0.02 * i + (0.01 if t == "B" else 0.0)
            cells[(s, t)] = {"base": base, **{(tr, n): base + 0.01 for tr in ("BnB+", "AnB+") for n in (1, 3, 5, 7)}}
    df = _runs(cells)
    t = fx.table1_three_ways(df).set_index(["method", "layers"])
    all_base = np.mean([c["base"] for c in cells.values()])
    for method in ("pooled", "authors_nets_pooled"):
        row = t.loc[(method, "1-7")]
        assert row["base_nets"] == 6, method
    sub = fx.authors_nets(df)
    anb = sub[(sub["treatment"] == "AnB+") & sub["n"].between(1, 7)]["top1"].mean()
    assert t.loc[("authors_nets_pooled", "1-7"), "over_base"] == pytest.approx(100 * (anb - all_base))


def test_claim_texts_use_the_dissimilar_splits_own_families():
    cells = {("r0", "B"): {"base": 0.6, ("AnB", 7): 0.5}}
    nat = {("ind", "A"): {"base": 0.5, ("AnB", 7): 0.4}, ("ind", "B"): {"base": 0.5, ("AnB", 7): 0.4}}
    df = _runs(cells, nat)
    df.loc[(df["split_kind"] == "natman") & (df["target_half"] == "A"), "target_family"] = "indoor"
    df.loc[(df["split_kind"] == "natman") & (df["target_half"] == "B"), "target_family"] = "outdoor"
    eff = fx.effects(df)
    text = eff.loc[eff["claim"] == "dissimilar_loses_more", "text"].iloc[0]
    assert text.startswith("indoor/outdoor transfer") and "natural" not in text


def test_the_random_filter_claims_name_the_normalisation_of_their_nets():
    """Issue 24: random frozen ResNet units are "random features" only with their BatchNorm statistics
    re-estimated (net.random_units_norm: recompute); the claim's text says which variant its nets used, and
    nothing for nets without BatchNorm in their random units."""
    from transferable.figures.effects import random_norm_text

    runs = pd.DataFrame({"treatment": ["base", "random", "random"], "random_norm": ["", "recompute", "recompute"]})
    assert random_norm_text(runs) == " (their BatchNorm statistics re-estimated on the target half)"
    assert "initial statistics" in random_norm_text(runs.assign(random_norm=["", "initial", "initial"]))
    assert "mixed" in random_norm_text(runs.assign(random_norm=["", "initial", "recompute"]))
    assert random_norm_text(runs.assign(random_norm=["", "none", "none"])) == ""  # CaffeNet, ViTs
    assert random_norm_text(runs.drop(columns="random_norm")) == ""  # a runs table from before the column
    nets = pd.DataFrame([{"split": "all", "split_kind": "all", "net": net, "treatment": t, "n": n, "target_half": "A",
                          "top1": 0.5, "random_norm": norm}
                         for net, t, n, norm in (("baseA", "base", 0, ""), ("R1A", "random", 1, "initial"))])
    eff = fx.effects(coerce_runs(nets))
    texts = set(eff.loc[eff["claim"] == "random_filters_lose_more", "text"])
    assert texts == {"random frozen filters (BatchNorm at its initial statistics: not normalising) lose more than "
                     "random-split transfer"}


def test_the_claims_are_data_and_a_wrong_entry_is_named():
    """The paper's claims live in figures/paper_claims.yaml (one entry each: a claim of one's own is one
    more); a wrong entry stops with the file, the claim and the field."""
    import yaml

    from transferable.figures.effects import CLAIMS, CLAIMS_FILE, load_claims

    assert len(CLAIMS) == 14 and CLAIMS[0].key == "no_loss_low_layers" and CLAIMS[0].ranges == ((1, 2),)
    mine = [{"key": "mine", "label": "x", "text": "base+ above base", "kind": "paired", "treatment": "base+",
             "reference": "base", "expected": 1, "ranges": [[1, 7]], "extra_training": True}]
    assert load_claims(yaml.safe_dump(mine))[0].ranges == ((1, 7),)
    for edit, message in ((dict(treatment="CnB"), "treatment 'CnB' is not a treatment"),
                          (dict(kind="ratio"), "kind 'ratio' is not one of paired, growth, versus"),
                          (dict(expected=2), "expected 2 is not 1, -1 or 0"),
                          (dict(ranges=[[3, 1]]), "ranges [(3, 1)] are not [lo, hi] pairs"),
                          (dict(split_kind="rand"), "split_kind 'rand' is not one of"),
                          (dict(colour="red"), "unknown field(s) colour")):
        with pytest.raises(ValueError, match=re.escape(f"my.yaml: claim mine: {message}")):
            load_claims(yaml.safe_dump([{**mine[0], **edit}]), "my.yaml")
    with pytest.raises(ValueError, match="same key"):
        load_claims(yaml.safe_dump(mine * 2))
    with pytest.raises(ValueError, match=f"{CLAIMS_FILE}: claim mine: .*missing"):
        load_claims(yaml.safe_dump([{k: v for k, v in mine[0].items() if k != "text"}]))
