"""The paper's claims as paired effects with 95% confidence intervals and a verdict each.

The unit of replication is a **cell**: one (split, target half) of one training-seed replicate, i.e. one
``(split, target_half)`` pair of the runs frame (a replicate's split is named ``{split}.s{r}``). Every net of
a cell is compared with the reference of the same cell (its own base net, or the selffer of the same n), so
the variation between target halves, which the paper's pooled means mix into its effects, cancels.

Estimators (:func:`cluster_mean`, :func:`welch`):

* a **paired effect** is the mean over nets of (net − its cell's reference). Nets of one cell share that
  reference, so they are not independent: the standard error is the cluster-robust one over cells
  (``G/(G-1) · Σ_g (Σ_{i in g} (d_i − d̄))² / N²``) and the interval is Student's t with G − 1 degrees of
  freedom. With one net per cell (a single n) this is exactly the paired t-test.
* a **difference of two paired effects** that share no cell (natural/man-made loss against random-split
  loss; the authors' AnB+ and BnB+ nets, which never target the same half) is Welch's t on the two
  cluster-robust means, with Satterthwaite's degrees of freedom. The natural/man-made split is one fixed
  split with two directions: its loss is the mean of the two directions (the paper's "mean of the two"),
  each direction's variance from its training-seed replicates (``experiment.natman.replicates``), so
  that the two directions' different levels are not mistaken for noise.

Verdict of a claim (:func:`verdict`): ``reproduced`` when the interval excludes zero on the side the paper claims,
``contradicted`` when it excludes zero on the other side, ``inconclusive`` when it contains or touches zero,
or when a group has fewer than two cells (no interval). The same effect at each single n (scope
``layer``), where the paper claims nothing by itself, is ``positive``, ``negative`` or ``unresolved``.
"""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
VERDICTS = ("reproduced", "contradicted", "inconclusive")


# ---------------------------------------------------------------------------------------------------------
# estimators


@dataclass(frozen=True)
class Estimate:
    """An effect with its interval. ``nets``/``cells`` count the nets and independent cells behind it."""

    estimate: float
    ci_lo: float
    ci_hi: float
    se: float
    df: float
    p_value: float
    nets: int
    cells: int
    test: str


def _nan_estimate(nets: int, cells: int, test: str, est: float = np.nan) -> Estimate:
    return Estimate(est, np.nan, np.nan, np.nan, np.nan, np.nan, nets, cells, test)


def _interval(est: float, se: float, df: float, nets: int, cells: int, test: str,
              confidence: float) -> Estimate:
    if se <= 1e-12 * max(1.0, abs(est)):  # every cell gave the same difference (to rounding): a point interval
        p = 1.0 if est == 0 else 0.0
        return Estimate(est, est, est, 0.0, df, p, nets, cells, test)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(est) / se, df)
    return Estimate(est, est - half, est + half, se, df, float(p), nets, cells, test)


def _cluster_se(d: np.ndarray, cells: np.ndarray) -> tuple[float, float, int]:
    """Mean, cluster-robust standard error and number of clusters."""
    mean = float(d.mean())
    uniq, inv = np.unique(cells, return_inverse=True)
    g = len(uniq)
    if g < 2:
        return mean, np.nan, g
    sums = np.bincount(inv, weights=d - mean, minlength=g)
    var = g / (g - 1) * float((sums**2).sum()) / len(d) ** 2
    return mean, math.sqrt(var), g


def cluster_mean(diffs, cells, confidence: float = CONFIDENCE, test: str | None = None) -> Estimate:
    """Mean of paired differences ``diffs`` (one per net) clustered by ``cells``; t interval, G − 1 df."""
    d = np.asarray(diffs, dtype=float)
    c = np.asarray(cells, dtype=object)
    ok = np.isfinite(d)
    d, c = d[ok], c[ok]
    if d.size == 0:
        return _nan_estimate(0, 0, test or "paired t")
    mean, se, g = _cluster_se(d, c)
    single = all(n == 1 for n in pd.Series(c).value_counts())
    test = test or ("paired t" if single else "paired, cluster-robust t over cells")
    if g < 2:
        return _nan_estimate(int(d.size), g, test, est=mean)
    return _interval(mean, se, g - 1, int(d.size), g, test, confidence)


def _components(d: np.ndarray, c: np.ndarray, strata: np.ndarray | None):
    """Mean and variance components [(variance, df)] of a cluster-robust mean, or of the mean over strata
    of per-stratum cluster-robust means (strata fixed, e.g. the two directions of one fixed split). None
    for the variance when a stratum has fewer than two cells."""
    if strata is None:
        mean, se, g = _cluster_se(d, c)
        return mean, ([(se**2, g - 1)] if g >= 2 else None), g
    keys = list(dict.fromkeys(strata))
    means, comps, cells = [], [], 0
    for h in keys:
        m = strata == h
        mean, se, g = _cluster_se(d[m], c[m])
        means.append(mean)
        cells += g
        comps = None if comps is None or g < 2 else comps + [(se**2 / len(keys) ** 2, g - 1)]
    return float(np.mean(means)), comps, cells


def stratified_mean(diffs, cells, strata, confidence: float = CONFIDENCE) -> Estimate:
    """The mean over fixed ``strata`` of per-stratum cluster-robust means of paired differences (the
    natural/man-made split's two directions); Satterthwaite's degrees of freedom."""
    d, c, h = (np.asarray(diffs, float), np.asarray(cells, dtype=object), np.asarray(strata, dtype=object))
    ok = np.isfinite(d)
    d, c, h = d[ok], c[ok], h[ok]
    test = "mean over strata of cluster-robust means"
    if d.size == 0:
        return _nan_estimate(0, 0, test)
    mean, comps, g = _components(d, c, h)
    if comps is None:
        return _nan_estimate(int(d.size), g, test, est=mean)
    var = sum(v for v, _ in comps)
    df = float(g - len(set(h))) if var == 0 else var**2 / sum(v**2 / k for v, k in comps)
    return _interval(mean, math.sqrt(var), df, int(d.size), g, test, confidence)


def drop_estimate(df: pd.DataFrame, kind: str, treatment: str, lo: int, hi: int,
                  confidence: float = CONFIDENCE) -> Estimate:
    """``treatment`` − its cell's base net on splits of ``kind``: cluster-robust over cells; for the
    natural/man-made split, the mean of its two fixed directions (target halves), each over its seeds."""
    d = paired_diffs(df, kind, treatment, "base", lo, hi)
    if kind == "natman":
        return stratified_mean(d["diff"], d["cell"], _half_of(d["cell"]), confidence)
    return cluster_mean(d["diff"], d["cell"], confidence)


def _half_of(cells: pd.Series) -> pd.Series:
    return cells.str.rsplit("/", n=1).str[-1]


def welch(diffs1, cells1, diffs2, cells2, confidence: float = CONFIDENCE,
          test: str = "Welch t on two paired effects", strata1=None) -> Estimate:
    """(mean of group 1) − (mean of group 2), each a cluster-robust mean of paired differences; group 1
    optionally the mean over fixed ``strata1`` of per-stratum means. Satterthwaite's degrees of freedom."""
    d1, c1 = np.asarray(diffs1, float), np.asarray(cells1, dtype=object)
    d2, c2 = np.asarray(diffs2, float), np.asarray(cells2, dtype=object)
    s1 = None if strata1 is None else np.asarray(strata1, dtype=object)
    ok1, ok2 = np.isfinite(d1), np.isfinite(d2)
    d1, c1, d2, c2 = d1[ok1], c1[ok1], d2[ok2], c2[ok2]
    s1 = None if s1 is None else s1[ok1]
    nets = int(d1.size + d2.size)
    if d1.size == 0 or d2.size == 0:
        return _nan_estimate(nets, len(set(c1)) + len(set(c2)), test)
    m1, comp1, g1 = _components(d1, c1, s1)
    m2, comp2, g2 = _components(d2, c2, None)
    est = m1 - m2
    if comp1 is None or comp2 is None:
        return _nan_estimate(nets, g1 + g2, test, est=est)
    comps = comp1 + comp2
    var = sum(v for v, _ in comps)
    se = math.sqrt(var)
    df = float(g1 + g2 - 2) if var == 0 else var**2 / sum(v**2 / k for v, k in comps)
    return _interval(est, se, df, nets, g1 + g2, test, confidence)


LAYER_VERDICTS = ("positive", "negative", "unresolved")


def layer_verdict(est: Estimate) -> str:
    """For a single n, where the paper claims nothing by itself: which side of zero the interval is on."""
    if np.isfinite(est.ci_lo) and est.ci_lo > 0:
        return "positive"
    if np.isfinite(est.ci_hi) and est.ci_hi < 0:
        return "negative"
    return "unresolved"


def verdict(est: Estimate, expected: int) -> str:
    """``expected`` is the sign the paper claims (+1 or −1)."""
    if not (np.isfinite(est.ci_lo) and np.isfinite(est.ci_hi)):
        return "inconclusive"
    if est.ci_lo > 0:
        return "reproduced" if expected > 0 else "contradicted"
    if est.ci_hi < 0:
        return "reproduced" if expected < 0 else "contradicted"
    return "inconclusive"


# ---------------------------------------------------------------------------------------------------------
# paired differences from the runs frame


def _cells(df: pd.DataFrame) -> pd.Series:
    return df["split"].astype(str) + "/" + df["target_half"].astype(str)


def paired_diffs(df: pd.DataFrame, kind: str, treatment: str, reference: str, lo: int, hi: int) -> pd.DataFrame:
    """One row per net of ``treatment`` with lo <= n <= hi on splits of ``kind``, paired with the net of
    ``reference`` in the same cell ("base": the cell's base net; a treatment: the one with the same n).
    Columns: cell, n, net, value, ref, diff. Nets without a reference in their cell are left out."""
    r = df[df["split_kind"] == kind].assign(cell=lambda x: _cells(x))
    a = r[(r["treatment"] == treatment) & r["n"].between(lo, hi)][["cell", "n", "net", "top1"]]
    if reference == "base":
        b = r[r["treatment"] == "base"][["cell", "top1"]].drop_duplicates("cell")
        m = a.merge(b, on="cell", suffixes=("", "_ref"))
    else:
        b = r[(r["treatment"] == reference) & r["n"].between(lo, hi)][["cell", "n", "top1"]]
        m = a.merge(b, on=["cell", "n"], suffixes=("", "_ref"))
    m = m.rename(columns={"top1": "value", "top1_ref": "ref"})
    m["diff"] = m["value"] - m["ref"]
    return m[["cell", "n", "net", "value", "ref", "diff"]].sort_values(["cell", "n"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# the claims


@dataclass(frozen=True)
class Claim:
    """One claim of the paper. ``kind``: ``paired`` (treatment − reference within a cell), ``growth``
    (that paired effect at n_hi minus at n_lo, within a cell), ``versus`` (the paired drop treatment − base
    on ``kind`` splits minus the same on random splits; Welch)."""

    key: str
    label: str
    text: str
    kind: str
    treatment: str
    reference: str
    expected: int
    ranges: tuple[tuple[int, int], ...]
    split_kind: str = "random"
    per_layer: bool = True


CLAIMS: tuple[Claim, ...] = (
    Claim("coadaptation", "2", "selffer BnB below its base net in the middle layers (fragile co-adaptation)",
          "paired", "BnB", "base", -1, ((3, 6),)),
    Claim("finetune_recovers", "3", "fine-tuning recovers the selffer's loss: BnB+ above BnB",
          "paired", "BnB+", "BnB", +1, ((3, 6),)),
    Claim("specificity_vs_selffer", "4", "transfer AnB below selffer BnB at the top layer (specificity)",
          "paired", "AnB", "BnB", -1, ((7, 7),)),
    Claim("specificity_vs_base", "4", "transfer AnB below its target's base net at the top layer",
          "paired", "AnB", "base", -1, ((7, 7),)),
    Claim("specificity_grows", "4", "AnB's loss against base grows with n: (AnB − base) at n = 7 minus at n = 1",
          "growth", "AnB", "base", -1, ((1, 7),), per_layer=False),
    Claim("boost_over_base", "5", "transfer + fine-tuning AnB+ above its target's base net (Table 1)",
          "paired", "AnB+", "base", +1, ((1, 7), (3, 7), (5, 7))),
    Claim("boost_over_selffer", "5", "transfer + fine-tuning AnB+ above selffer + fine-tuning BnB+ (Table 1)",
          "paired", "AnB+", "BnB+", +1, ((1, 7), (3, 7), (5, 7))),
    Claim("dissimilar_loses_more", "fig3", "natural/man-made transfer loses more than random-split transfer",
          "versus", "AnB", "base", -1, ((7, 7), (5, 7)), split_kind="natman"),
    Claim("random_filters_lose_more", "fig3", "random frozen filters lose more than transferred features",
          "versus", "random", "base", -1, ((1, 7), (1, 2)), split_kind="all"),
)

def claims_for(units: int, claims: tuple[Claim, ...] = CLAIMS) -> tuple[Claim, ...]:
    """The paper's claims for a net of ``units`` transferable units: each range of CaffeNet's 7 layers at the
    same relative depth (n -> round(n * units / 7), at least 1): "the top layer" is the top unit, "the
    middle layers" 3-6 the units at 3/7..6/7 of the depth. CaffeNet's own claims are unchanged."""
    if units == 7:
        return claims

    def at(n: int) -> int:
        return max(1, min(units, round(n * units / 7)))

    out = []
    for c in claims:
        ranges = tuple(dict.fromkeys((at(lo), at(hi)) for lo, hi in c.ranges))
        out.append(dataclasses.replace(c, ranges=ranges))
    return tuple(out)


EFFECT_COLUMNS = ["claim", "label", "text", "scope", "layers", "n_lo", "n_hi", "expected", "estimate", "ci_lo",
                  "ci_hi", "p_value", "nets", "cells", "test", "verdict"]
PAPER_PREFIX = "paper_"


def _estimate(df: pd.DataFrame, c: Claim, lo: int, hi: int, confidence: float) -> Estimate:
    if c.kind == "paired":
        d = paired_diffs(df, c.split_kind, c.treatment, c.reference, lo, hi)
        if len(d) or c.reference == "base":
            return cluster_mean(d["diff"], d["cell"], confidence)
        a = paired_diffs(df, c.split_kind, c.treatment, "base", lo, hi)
        b = paired_diffs(df, c.split_kind, c.reference, "base", lo, hi)
        if len(a) and len(b):
            # no cell holds both (the authors ran BnB+ on A halves and AnB+ on B halves only): compare the
            # two treatments' gains over their own cells' base nets instead
            return welch(a["diff"], a["cell"], b["diff"], b["cell"], confidence,
                         test="Welch t on gains over own base (no cell has both)")
        return _nan_estimate(0, 0, "paired t")
    if c.kind == "growth":
        d = paired_diffs(df, c.split_kind, c.treatment, c.reference, lo, hi)
        w = d.pivot_table(index="cell", columns="n", values="diff")
        if lo not in w.columns or hi not in w.columns:
            return _nan_estimate(0, 0, "paired t on within-cell contrast")
        g = (w[hi] - w[lo]).dropna()
        return cluster_mean(g.to_numpy(), g.index.to_numpy(), confidence, test="paired t on within-cell contrast")
    if c.kind == "versus":
        a = paired_diffs(df, c.split_kind, c.treatment, c.reference, lo, hi)
        b = paired_diffs(df, "random", "AnB", "base", lo, hi)
        if c.split_kind == "natman":
            # one fixed split, two directions: the paper's "mean of the two" directions, each direction's
            # drop replicated by training seeds (cells of the same target half)
            strata = _half_of(a["cell"])
            return welch(a["diff"], a["cell"], b["diff"], b["cell"], confidence, strata1=strata,
                         test="Welch t: mean of the two directions' paired drops (seed replicates) vs "
                              "random-split paired drop")
        return welch(a["diff"], a["cell"], b["diff"], b["cell"], confidence,
                     test="Welch t: paired drop vs random-split paired drop")
    raise ValueError(f"unknown claim kind {c.kind!r}")


def effects(df: pd.DataFrame, confidence: float = CONFIDENCE, claims=None, per_layer: bool = True,
            nmax: int = 7) -> pd.DataFrame:
    """Every claim over its claim ranges (scope ``claim``) and, where it makes sense, at each single n
    (scope ``layer``), for a net of ``nmax`` units (``claims_for``; CaffeNet: 7). Effects are in top-1
    units (0.01 = 1 point). Columns :data:`EFFECT_COLUMNS`."""
    claims = claims_for(nmax) if claims is None else claims
    rows = []
    for c in claims:
        spans = [("claim", lo, hi) for lo, hi in c.ranges]
        if per_layer and c.per_layer:
            spans += [("layer", n, n) for n in range(1, nmax + 1)]
        for scope, lo, hi in spans:
            e = _estimate(df, c, lo, hi, confidence)
            rows.append({"claim": c.key, "label": c.label, "text": c.text, "scope": scope,
                         "layers": f"{lo}" if lo == hi else f"{lo}-{hi}", "n_lo": lo, "n_hi": hi,
                         "expected": "+" if c.expected > 0 else "-", "estimate": e.estimate, "ci_lo": e.ci_lo,
                         "ci_hi": e.ci_hi, "p_value": e.p_value, "nets": e.nets, "cells": e.cells,
                         "test": e.test,
                         "verdict": verdict(e, c.expected) if scope == "claim" else layer_verdict(e)})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def effects_with_paper(ours: pd.DataFrame, paper: pd.DataFrame | None = None,
                       confidence: float = CONFIDENCE, units: int = 7) -> pd.DataFrame:
    """:func:`effects` of our nets (of ``units`` transferable units) beside the same computation on the
    authors' CaffeNets (``paper_*`` columns; they match our rows where the layer ranges agree)."""
    if paper is None:
        from .tables import paper_runs

        paper = paper_runs()
    a = effects(ours, confidence, nmax=units)
    b = effects(paper, confidence)
    keep = ["estimate", "ci_lo", "ci_hi", "nets", "cells", "verdict"]
    b = b[["claim", "scope", "layers", *keep]].rename(columns={k: PAPER_PREFIX + k for k in keep})
    return a.merge(b, on=["claim", "scope", "layers"], how="left")


# ---------------------------------------------------------------------------------------------------------
# Table 1, three ways

TABLE1_METHODS = ("pooled", "paired", "authors_nets_pooled", "authors_nets_paired")
TABLE1_COLUMNS = ["method", "layers", "n_lo", "n_hi", "over_base", "over_base_ci_lo", "over_base_ci_hi",
                  "over_selffer", "over_selffer_ci_lo", "over_selffer_ci_hi", "anb_plus_nets", "bnb_plus_nets",
                  "base_nets", "cells", "test_over_selffer"]


def authors_nets(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """The random-split nets of ``df`` that the authors also trained and logged: every base net, and the
    BnB/AnB(+) nets whose (split, target half, treatment, n) has a log in the authors' repository (they ran
    10 BnB+ nets, all on A halves, and 10 AnB+ nets, all on B halves). Splits are matched by name: the
    authors' split s is ``rand{s}`` (configs/paper.yaml: numpy seed [s]); a split of another name matches
    no fine-tuned net."""
    if paper is None:
        from .tables import paper_runs

        paper = paper_runs()
    from ..paths import base_split

    key = ["split", "target_half", "treatment", "n"]
    have = set(map(tuple, paper[paper["split_kind"] == "random"][key].astype(str).to_numpy()))
    r = df[df["split_kind"] == "random"]
    # by split name: the authors' split s is the pipeline's rand{s} (numpy seed [s]); replicates count as it
    rows = r[key].astype(str).assign(split=r["split"].map(base_split)).to_numpy()
    mask = (r["treatment"] == "base") | pd.Series([tuple(row) in have for row in rows], index=r.index)
    return r[mask]


def _table1_paired(df: pd.DataFrame, method: str, confidence: float) -> list[dict]:
    from .tables import TABLE1_RANGES

    rows = []
    by_key = {c.key: c for c in CLAIMS}
    for lo, hi in TABLE1_RANGES:
        e_base = _estimate(df, by_key["boost_over_base"], lo, hi, confidence)
        e_self = _estimate(df, by_key["boost_over_selffer"], lo, hi, confidence)
        r = df[df["split_kind"] == "random"]
        rows.append({"method": method, "layers": f"{lo}-{hi}", "n_lo": lo, "n_hi": hi,
                     "over_base": 100 * e_base.estimate, "over_base_ci_lo": 100 * e_base.ci_lo,
                     "over_base_ci_hi": 100 * e_base.ci_hi, "over_selffer": 100 * e_self.estimate,
                     "over_selffer_ci_lo": 100 * e_self.ci_lo, "over_selffer_ci_hi": 100 * e_self.ci_hi,
                     "anb_plus_nets": int(((r["treatment"] == "AnB+") & r["n"].between(lo, hi)).sum()),
                     "bnb_plus_nets": int(((r["treatment"] == "BnB+") & r["n"].between(lo, hi)).sum()),
                     "base_nets": int((r["treatment"] == "base").sum()), "cells": e_base.cells,
                     "test_over_selffer": e_self.test})
    return rows


def _table1_pooled(df: pd.DataFrame, method: str, confidence: float) -> list[dict]:
    from .tables import table1

    rows = []
    for _, t in table1(df, paper=False).iterrows():
        row = {"method": method, "layers": t["layers"], "n_lo": t["n_lo"], "n_hi": t["n_hi"],
               "anb_plus_nets": int(t["anb_plus_count"]), "bnb_plus_nets": int(t["bnb_plus_count"]),
               "base_nets": int(t["base_count"]), "cells": np.nan,
               "test_over_selffer": "difference of pooled means (Welch t, nets independent)"}
        for ours, theirs, other in (("over_base", "boost_over_base", "base"),
                                    ("over_selffer", "boost_over_bnb_plus", "bnb_plus")):
            est, se = t[theirs], t[f"{theirs}_se"]
            n1, n2 = t["anb_plus_count"], t[f"{other}_count"]
            row[ours] = est
            if np.isfinite(se) and se > 0:
                s1 = t["anb_plus_std"] ** 2 / n1
                s2 = t[f"{other}_std"] ** 2 / n2
                dof = (s1 + s2) ** 2 / (s1**2 / (n1 - 1) + s2**2 / (n2 - 1))
                half = stats.t.ppf(0.5 + confidence / 2, dof) * se
                row[f"{ours}_ci_lo"], row[f"{ours}_ci_hi"] = est - half, est + half
            else:
                row[f"{ours}_ci_lo"] = row[f"{ours}_ci_hi"] = np.nan
        rows.append(row)
    return rows


def table1_three_ways(df: pd.DataFrame, paper: pd.DataFrame | None = None,
                      confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Table 1 (AnB+'s boost, in points) pooled as the paper did, paired by cell with intervals, and both
    restricted to the nets the authors ran; with the same computation on the authors' nets (``paper_*``)
    and the published values (``published_*``). Columns :data:`TABLE1_COLUMNS` + those."""
    from .paper import PAPER_TABLE1
    from .tables import paper_runs

    paper = paper_runs() if paper is None else paper

    def four(runs: pd.DataFrame) -> pd.DataFrame:
        sub = authors_nets(runs, paper)
        rows = (_table1_pooled(runs, "pooled", confidence) + _table1_paired(runs, "paired", confidence)
                + _table1_pooled(sub, "authors_nets_pooled", confidence)
                + _table1_paired(sub, "authors_nets_paired", confidence))
        return pd.DataFrame(rows, columns=TABLE1_COLUMNS)

    ours, theirs = four(df), four(paper)
    keep = ["over_base", "over_base_ci_lo", "over_base_ci_hi", "over_selffer", "over_selffer_ci_lo",
            "over_selffer_ci_hi", "anb_plus_nets", "bnb_plus_nets", "cells"]
    out = ours.merge(theirs[["method", "layers", *keep]].rename(columns={k: PAPER_PREFIX + k for k in keep}),
                     on=["method", "layers"], how="left")
    out["published_over_base"] = [PAPER_TABLE1.get((lo, hi), {}).get("over_base", np.nan)
                                  for lo, hi in zip(out["n_lo"], out["n_hi"])]
    out["published_over_selffer"] = [PAPER_TABLE1.get((lo, hi), {}).get("over_BnB+", np.nan)
                                     for lo, hi in zip(out["n_lo"], out["n_hi"])]
    return out


METHOD_TITLES = {
    "pooled": "Pooled as in the paper (mean of all AnB+ nets in the range − mean of all base nets, or of all "
              "BnB+ nets in the range)",
    "paired": "Paired by cell (each AnB+ net − its own target half's base net, or − the BnB+ net of the same "
              "cell and n)",
    "authors_nets_pooled": "Pooled, restricted to the nets the authors ran (BnB+ only on A halves, AnB+ only "
                           "on B halves)",
    "authors_nets_paired": "Paired, restricted to the nets the authors ran",
}


def _ci(v, lo, hi) -> str:
    if not np.isfinite(v):
        return "–"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    return f"{v:+.2f} (no CI)"


def table1_markdown(t: pd.DataFrame) -> str:
    """The three-way Table 1 as Markdown: one table per method, ours beside the authors' nets."""
    out = ["# Table 1: the boost of transfer + fine-tuning (AnB+), in percentage points, 95% CI\n"]
    for method in TABLE1_METHODS:
        g = t[t["method"] == method]
        if g.empty:
            continue
        out.append(f"## {METHOD_TITLES[method]}\n")
        out.append("| layers | ours: over base | ours: over BnB+ | nets AnB+ / BnB+ | authors' nets: over base | "
                   "authors' nets: over BnB+ | published |")
        out.append("|---|---|---|---|---|---|---|")
        for _, r in g.iterrows():
            pub = (f"{r['published_over_base']:.1f} / {r['published_over_selffer']:.1f}"
                   if np.isfinite(r["published_over_base"]) else "–")
            out.append(
                f"| {r['layers']} | {_ci(r['over_base'], r['over_base_ci_lo'], r['over_base_ci_hi'])} | "
                f"{_ci(r['over_selffer'], r['over_selffer_ci_lo'], r['over_selffer_ci_hi'])} | "
                f"{r['anb_plus_nets']} / {r['bnb_plus_nets']} | "
                f"{_ci(r['paper_over_base'], r['paper_over_base_ci_lo'], r['paper_over_base_ci_hi'])} | "
                f"{_ci(r['paper_over_selffer'], r['paper_over_selffer_ci_lo'], r['paper_over_selffer_ci_hi'])} | "
                f"{pub} |")
        out.append("")
    out.append("Intervals: pooled rows treat every net as independent (Welch); paired rows are cluster-robust "
               "over cells (one cell = one split and target half of one replicate), t with cells − 1 degrees of "
               "freedom; with no cell holding both AnB+ and BnB+ (the authors' nets), Welch on each "
               "treatment's gain over its own base. 'no CI': fewer than two cells.\n")
    return "\n".join(out)


def effects_markdown(eff: pd.DataFrame) -> str:
    """The claim rows of :func:`effects_with_paper` as Markdown (effects in percentage points)."""
    lines = ["| label | claim | n | ours (pp, 95% CI) | cells | verdict | authors' nets (pp, 95% CI) | cells | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in eff[eff["scope"] == "claim"].iterrows():
        ours = _ci(100 * r["estimate"], 100 * r["ci_lo"], 100 * r["ci_hi"])
        theirs = _ci(100 * r["paper_estimate"], 100 * r["paper_ci_lo"], 100 * r["paper_ci_hi"])
        their_cells = int(r["paper_cells"]) if pd.notna(r["paper_cells"]) else "–"
        lines.append(f"| {r['label']} | {r['text']} | {r['layers']} | {ours} | {r['cells']} | **{r['verdict']}** | "
                     f"{theirs} | {their_cells} | {r['paper_verdict'] if pd.notna(r['paper_verdict']) else '–'} |")
    return "\n".join(lines) + "\n"
