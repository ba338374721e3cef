"""The cross experiment's statistics and figures (figures/cross.py) on synthetic runs with known effects:
paired differences by replicate computed by hand, verdicts, the deepest n without loss at its boundaries,
the source-less base nets shared by every source, the caveat of an unconverged reference, the Markdown page
and the two figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from transferable.figures import cross

T975_3 = 3.18244630528  # Student's t, 0.975 quantile, 3 df
ANB = {1: 0.0, 2: 0.0, 4: -0.08, 5: -0.08}
PLUS = {1: 0.05, 4: 0.05}
RANDOM = {1: -0.02, 2: -0.2}


def make_runs(sources=("demo",), targets=("negative",), replicates=4, anb=ANB, plus=PLUS, random=RANDOM,
              late_gain=0.0, noise=0.001, seed=0) -> pd.DataFrame:
    """Base top-1 ~0.6 per replicate; each treatment = its replicate's base + a known effect + small noise.
    Base and random nets once per target and replicate, with source ""."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(source, target, r, treatment, n, top1):
        rows.append({"source": source, "target": target, "replicate": r, "treatment": treatment, "n": n,
                     "top1": top1, "late_gain": late_gain if treatment == "base" else 0.0,
                     "net": f"{treatment}{n}", "run": f"all.s{r}" if r else "all"})

    for target in targets:
        for r in range(replicates):
            b = 0.6 + rng.normal(0, 0.02)
            add("", target, r, "base", 0, b)
            for n, e in random.items():
                add("", target, r, "random", n, b + e + rng.normal(0, noise))
            for s in sources:
                for n, e in anb.items():
                    add(s, target, r, "AnB", n, b + e + rng.normal(0, noise))
                for n, e in plus.items():
                    add(s, target, r, "AnB+", n, b + e + rng.normal(0, noise))
    return pd.DataFrame(rows)


def _row(eff, treatment, n, source="demo", target="negative"):
    r = eff[(eff.source == source) & (eff.target == target) & (eff.treatment == treatment) & (eff.n == n)]
    assert len(r) == 1
    return r.iloc[0]


# ---------------------------------------------------------------------------------------------------------
# effects


def test_estimates_are_mean_paired_differences_with_t_intervals():
    runs = make_runs()
    eff = cross.cross_effects(runs)
    assert set(eff.columns) >= {"source", "target", "treatment", "label", "n", "replicates", "estimate", "ci_lo",
                                "ci_hi", "p", "p_eq", "p_adj", "p_eq_adj", "verdict", "caveat"}
    assert len(eff) == len(ANB) + len(PLUS) + len(RANDOM)
    base = runs[runs.treatment == "base"].set_index("replicate")["top1"]
    for t, effects in (("AnB", ANB), ("AnB+", PLUS), ("random", RANDOM)):
        for n in effects:
            x = runs[(runs.treatment == t) & (runs.n == n)].set_index("replicate")["top1"]
            d = (x - base).to_numpy()
            half = T975_3 * d.std(ddof=1) / math.sqrt(4)
            r = _row(eff, t, n)
            assert r.replicates == 4 and r.label == cross.TREATMENT[t].label
            assert r.estimate == pytest.approx(d.mean(), abs=1e-12)
            assert (r.ci_lo, r.ci_hi) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
            assert r.ci_lo < d.mean() < r.ci_hi
            assert r.p_adj >= r.p and r.p_eq_adj >= r.p_eq


def test_verdicts_loss_equivalent_gain():
    eff = cross.cross_effects(make_runs())
    v = {(r.treatment, r.n): r.verdict for r in eff.itertuples()}
    assert v[("AnB", 1)] == v[("AnB", 2)] == "equivalent"
    assert v[("AnB", 4)] == v[("AnB", 5)] == "loss"
    assert v[("AnB+", 1)] == v[("AnB+", 4)] == "gain"
    assert v[("random", 2)] == "loss"
    assert set(eff.verdict) <= set(cross.VERDICTS)


def test_large_noise_is_inconclusive_and_one_replicate_no_interval():
    eff = cross.cross_effects(make_runs(anb={1: 0.0}, plus={}, random={}, noise=0.05))
    assert _row(eff, "AnB", 1).verdict == "inconclusive"
    eff = cross.cross_effects(make_runs(replicates=1))
    assert set(eff.verdict) == {"no interval"} and eff.replicates.eq(1).all() and eff.ci_lo.isna().all()


def test_pairs_only_replicates_holding_both():
    runs = make_runs()
    runs = runs[~((runs.treatment == "base") & (runs.replicate == 3))]  # replicate 3 has no base net
    eff = cross.cross_effects(runs)
    base = runs[runs.treatment == "base"].set_index("replicate")["top1"]
    x = runs[(runs.treatment == "AnB") & (runs.n == 4)].set_index("replicate")["top1"]
    r = _row(eff, "AnB", 4)
    assert r.replicates == 3
    assert r.estimate == pytest.approx((x[[0, 1, 2]] - base[[0, 1, 2]]).mean(), abs=1e-12)


def test_sources_share_the_targets_sourceless_base_and_random_nets():
    runs = make_runs(sources=("demo", "imagenet"))
    assert set(runs.loc[runs.treatment.isin(["base", "random"]), "source"]) == {""}
    eff = cross.cross_effects(runs)
    assert set(eff.source) == {"demo", "imagenet"} and "" not in set(eff.source)
    base = runs[runs.treatment == "base"].set_index("replicate")["top1"]
    for s in ("demo", "imagenet"):
        x = runs[(runs.source == s) & (runs.treatment == "AnB") & (runs.n == 1)].set_index("replicate")["top1"]
        assert _row(eff, "AnB", 1, source=s).estimate == pytest.approx((x - base).mean(), abs=1e-12)
    # the random rows: the same nets, the same hypothesis under each source, counted once by Holm
    a, b = _row(eff, "random", 2, "demo"), _row(eff, "random", 2, "imagenet")
    assert a.estimate == b.estimate and a.p_adj == b.p_adj
    hypotheses = len(eff) - len(RANDOM)  # each random row is repeated once
    raw = np.concatenate([eff.p.to_numpy(), eff.p_eq.to_numpy()])
    adj = np.concatenate([eff.p_adj.to_numpy(), eff.p_eq_adj.to_numpy()])
    k = int(np.argmin(raw))
    assert adj[k] == pytest.approx(min(1.0, hypotheses * raw[k]))


def test_caveat_only_when_base_nets_still_improving():
    hot = cross.cross_effects(make_runs(late_gain=0.05))
    flagged = hot[hot.caveat != ""]
    assert len(flagged) == len(PLUS) and set(flagged.treatment) == {"AnB+"} and set(flagged.verdict) == {"gain"}
    assert "still improving" in flagged.caveat.iloc[0] and "+5.0 points" in flagged.caveat.iloc[0]
    for gain in (0.0, 0.01, np.nan):  # at a plateau (0.01: not above the default plateau_gain), or unknown
        eff = cross.cross_effects(make_runs(late_gain=gain))
        assert (eff.caveat == "").all(), gain
    eff = cross.cross_effects(make_runs(late_gain=0.05), plateau_gain=0.1)
    assert (eff.caveat == "").all()


def test_no_source_rows_give_no_pairs():
    runs = make_runs(sources=())
    eff = cross.cross_effects(runs)
    assert eff.empty and list(eff.columns) == cross.EFFECT_COLUMNS
    assert cross.cross_summary(eff).empty


# ---------------------------------------------------------------------------------------------------------
# deepest n without loss


def _d(verdicts: dict, treatment="AnB") -> dict:
    rows = pd.DataFrame({"n": list(verdicts), "verdict": list(verdicts.values()), "treatment": treatment})
    return cross.deepest_without_loss(rows.sample(frac=1, random_state=0))  # order must not matter


@pytest.mark.parametrize("verdicts, no_loss, equivalent, first_loss", [
    ({1: "equivalent", 2: "equivalent", 3: "inconclusive"}, 3, 2, None),  # no loss anywhere
    ({1: "loss", 2: "equivalent"}, 0, 0, 1),  # a loss at the first n
    ({1: "equivalent", 2: "gain", 3: "loss"}, 2, 2, 3),  # a loss only at the last
    ({1: "equivalent", 3: "equivalent", 5: "loss", 7: "loss"}, 3, 3, 5),  # gaps
    ({1: "equivalent", 3: "loss", 5: "equivalent"}, 1, 1, 3),  # non-monotone: stays at 1
    ({1: "inconclusive", 2: "inconclusive"}, 2, 0, None),  # all inconclusive
    ({1: "equivalent", 2: "no interval", 3: "equivalent", 4: "loss"}, 3, 1, 4),  # no interval stops equivalent
    ({3: "loss", 5: "equivalent"}, 0, 0, 3),  # the smallest tested n is a loss
])
def test_deepest_without_loss(verdicts, no_loss, equivalent, first_loss):
    d = _d(verdicts)
    assert (d["no_loss"], d["equivalent"], d["first_loss"]) == (no_loss, equivalent, first_loss)
    assert d["tested"] == sorted(verdicts)


def test_deepest_without_loss_reads_only_frozen_rows_and_empty_input():
    rows = pd.DataFrame({"n": [1, 2, 1], "verdict": ["equivalent", "equivalent", "loss"],
                         "treatment": ["AnB", "AnB", "random"]})
    assert cross.deepest_without_loss(rows)["no_loss"] == 2
    d = cross.deepest_without_loss(pd.DataFrame({"n": [], "verdict": [], "treatment": []}))
    assert d == {"no_loss": 0, "equivalent": 0, "first_loss": None, "tested": []}


# ---------------------------------------------------------------------------------------------------------
# summary and markdown


def test_summary_answers_in_plain_words():
    runs = make_runs(sources=("demo", "imagenet"), targets=("negative", "shapes"))
    runs["unit"] = runs["n"].map({1: "conv1", 2: "conv2", 4: "conv4", 5: "conv5"}).fillna("")
    eff = cross.cross_effects(runs)
    s = cross.cross_summary(eff)
    assert list(s.columns) == cross.SUMMARY_COLUMNS and len(s) == 4
    r = s[(s.source == "demo") & (s.target == "negative")].iloc[0]
    assert (r.deepest_no_loss, r.deepest_equivalent, r.first_loss) == (2, 2, 4)
    assert r.tested == "1, 2, 4, 5" and r.finetune_gain == "1, 4" and r.finetune_worse == "" and r.random_loss
    assert r.first_loss_ci_hi < 0 and r.first_loss_estimate == pytest.approx(_row(eff, "AnB", 4).estimate)
    a = r.answer
    assert a.startswith("demo \u2192 negative:")
    assert "units 1\u20132 (conv1\u2013conv2) transfer without a significant loss" in a
    assert "first loss at n = 4, \u22128.0 points [" in a and "better than scratch at n = 1, 4" in a
    assert "still improving" not in a


def test_summary_says_the_caveat_and_a_loss_at_the_first_n():
    eff = cross.cross_effects(make_runs(anb={1: -0.08, 2: -0.1}, late_gain=0.05))
    r = cross.cross_summary(eff).iloc[0]
    assert r.deepest_no_loss == 0 and r.first_loss == 1 and r.caveat
    assert "a significant loss already at the first tested n" in r.answer and "still improving" in r.answer


def test_markdown_has_pairs_answers_tables_and_how_to_read():
    eff = cross.cross_effects(make_runs(sources=("demo", "imagenet"), late_gain=0.05))
    s = cross.cross_summary(eff)
    md = cross.cross_markdown(eff, s, 0.05)
    for name in ("## demo \u2192 negative", "## imagenet \u2192 negative", *s.answer):
        assert name in md
    assert "| 4 | transfer AnB | \u22128.0 [" in md and "**loss**" in md and "**equivalent**" in md
    assert "still improving" in md and "\u2020" in md
    assert "paired by seed replicate" in md and "Holm" in md and "±1.0 points" in md and "α = 0.05" in md


# ---------------------------------------------------------------------------------------------------------
# figures


def _similarity(source="demo", target="negative", vit=False):
    rows = []
    for n in range(1, 6):
        for k in (("class token", "patch mean") if vit else ("output",)):
            if vit and n == 1 and k == "class token":
                continue
            rows.append({"source": source, "target": target, "n": n, "unit": f"block{n}", "features": k,
                         "cka": 1 - 0.15 * n, "probe_top1": 0.7 - 0.05 * n, "probe_lambda": 1e-3,
                         "own_probe_top1": 0.7})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("vit", [False, True, None])
def test_profile_figure_writes_pdf_and_png(tmp_path, monkeypatch, vit):
    titles = []
    save = cross._save
    monkeypatch.setattr(cross, "_save", lambda fig, out: (titles.append(fig._suptitle.get_text()), save(fig, out))[1])
    runs = make_runs()
    eff = cross.cross_effects(runs)
    sim = None if vit is None else _similarity(vit=vit)
    pdf, png = cross.profile_figure(runs, eff, sim, "demo", "negative", tmp_path / "demo_to_negative.pdf")
    assert pdf == tmp_path / "demo_to_negative.pdf" and png == pdf.with_suffix(".png")
    assert pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 1000 and png.stat().st_size > 1000
    assert titles == ["demo \u2192 negative: no significant frozen loss up to n = 2"]


def test_grid_figure_writes_pdf_and_png(tmp_path):
    runs = make_runs(sources=("demo", "imagenet"), targets=("negative", "shapes"))
    runs = runs[~((runs.source == "imagenet") & (runs.target == "shapes"))]  # a pair not run: left blank
    eff = cross.cross_effects(runs)
    assert len(cross.pairs(runs)) == 3
    pdf, png = cross.grid_figure(runs, eff, tmp_path / "grid.pdf")
    assert pdf.stat().st_size > 1000 and png.stat().st_size > 1000


def test_adequacy_says_which_nets_were_not_trained_enough():
    """The confound the pipeline can detect, said in its output: base nets still improving (a fine-tuned net
    is compared with an unfinished scratch net), a source still improving; nothing when both are at a plateau."""
    eff = pd.DataFrame({"target": ["neg", "neg", "flat"], "base_late_gain": [0.03, 0.03, 0.002]})
    src = pd.DataFrame({"source": ["demo", "done"], "top1": [0.5, 0.7], "late_gain": [0.045, 0.0]})
    lines = cross.adequacy(eff, src, plateau_gain=0.01)
    assert len(lines) == 2
    assert "neg: its base nets were not at a plateau" in lines[0] and "+3.0 points" in lines[0]
    assert "source demo was not at a plateau" in lines[1] and "+4.5 points" in lines[1]
    assert cross.adequacy(eff.assign(base_late_gain=0.0), src.iloc[1:], plateau_gain=0.01) == []
    e = cross.cross_effects(make_runs())
    md = cross.cross_markdown(e, cross.cross_summary(e),
                              sources=src, plateau_gain=0.01)
    assert "source demo was not at a plateau" in md
