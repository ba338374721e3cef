"""The paper's claims as paired effects with 95% confidence intervals, multiplicity-adjusted p-values and a
verdict each, with the design's own confound (nets trained too briefly) detected and reported.

**The unit of replication.** Nets are not independent: the two target halves of a random split share its
class partition, and AnB on half B copies baseA, the reference of the other half of the same split. What can
vary independently is a **unit**:

* random splits: the **split** (both target halves and every training-seed replicate ``{split}.s{r}`` of it;
  a replicate trains on the same partition);
* the natural/man-made split (one fixed split): the **training-seed replicate**, with both directions inside it;
* the all-class nets (random filters and their reference): the **training-seed replicate**.

A **cell** is one (run, target half): its nets are compared with the reference of the same cell (its own base
net, or the selffer of the same n), so the variation between target halves cancels. A unit's value is the
mean over its cells of the cell's mean paired difference (for the natural/man-made split: the mean of the two
directions, the paper's "mean of the two"). The interval is Student's t over unit values with units − 1
degrees of freedom (:func:`one_sample`); a difference of two effects measured on different units is
Welch's t on the two sets of unit values with Satterthwaite's degrees of freedom (:func:`welch`).

**Many claims, one family.** Each claim row tests a difference (H0: effect = 0, two-sided) and an equivalence
(two one-sided tests, H0: |effect| >= margin). At most one of the two nulls of a row can be true, so the
family's p-values are adjusted by Holm's step-down with Shaffer's logical constraint (:func:`holm`): at each
step the multiplier is the number of rows that still have an untested hypothesis. Verdicts use the adjusted
p-values at level ``alpha``; rows at a single n (scope ``layer``) are exploratory and decide nothing.

**Verdicts** (:data:`VERDICTS`): ``reproduced`` (a directional claim, significant on the paper's side;
an equivalence claim, ``equivalent`` below), ``contradicted`` (significant on the other side, or a difference
where the paper says none), ``equivalent`` (the effect lies within ±margin), ``inconclusive``, ``no interval``
(fewer than two units in a group) and ``confounded`` (:func:`adequacy`: the nets have not reached a plateau,
or extra training alone changes top-1, so a claim that compares a net trained twice with one trained once
cannot be told apart from "more training helps").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from ..paths import TREATMENT, base_split
from .spec import CONTROL, FIGURES, REFERENCE

CONFIDENCE = 0.95
ALPHA = 0.05
MARGIN = 0.01  # equivalence margin, top-1 units (1 point): under the paper's smallest interpreted effects
PLATEAU_GAIN = 0.01  # a reference net whose top-1 still rose more than this over its last quarter: not at a plateau
VERDICTS = ("reproduced", "contradicted", "equivalent", "inconclusive", "no interval", "confounded")


# ---------------------------------------------------------------------------------------------------------
# estimators over units


@dataclass(frozen=True)
class Estimate:
    """An effect with its interval, over ``units`` independent units (``nets`` nets behind it). ``p_value``
    tests effect = 0 (two-sided); ``p_equivalence`` tests |effect| >= ``margin`` (TOST; NaN without margin)."""

    estimate: float
    ci_lo: float
    ci_hi: float
    se: float
    df: float
    p_value: float
    nets: int
    units: int
    test: str
    p_equivalence: float = np.nan


def _nan_estimate(nets: int, units: int, test: str, est: float = np.nan) -> Estimate:
    return Estimate(est, np.nan, np.nan, np.nan, np.nan, np.nan, nets, units, test)


def tost_p(est: float, se: float, df: float, margin: float | None) -> float:
    """The two one-sided tests' p of H0: |effect| >= margin (the larger of the two one-sided p-values)."""
    if margin is None or not np.isfinite(margin) or margin <= 0 or not np.isfinite(est):
        return np.nan
    if se == 0:
        return 0.0 if abs(est) < margin else 1.0
    p_lo = stats.t.sf((est + margin) / se, df)  # H0: effect <= -margin
    p_hi = stats.t.cdf((est - margin) / se, df)  # H0: effect >= +margin
    return float(max(p_lo, p_hi))


def _interval(est: float, se: float, df: float, nets: int, units: int, test: str, confidence: float,
              margin: float | None) -> Estimate:
    if se <= 1e-12 * max(1.0, abs(est)):  # every unit gave the same value (to rounding): a point interval
        p = 1.0 if est == 0 else 0.0
        return Estimate(est, est, est, 0.0, df, p, nets, units, test, tost_p(est, 0.0, df, margin))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(est) / se, df)
    return Estimate(est, est - half, est + half, se, df, float(p), nets, units, test, tost_p(est, se, df, margin))


def unit_values(diffs, units, cells=None) -> pd.Series:
    """One value per unit: the mean over the unit's cells of each cell's mean (the mean of its values when
    ``cells`` is None). Non-finite values are left out."""
    f = pd.DataFrame({"d": np.asarray(diffs, float), "u": np.asarray(units, dtype=object)})
    f["c"] = f["u"] if cells is None else np.asarray(cells, dtype=object)
    f = f[np.isfinite(f["d"])]
    if f.empty:
        return pd.Series(dtype=float)
    return f.groupby(["u", "c"], sort=True)["d"].mean().groupby(level=0).mean()


def one_sample(values: pd.Series, nets: int, test: str, confidence: float = CONFIDENCE,
               margin: float | None = None) -> Estimate:
    """Mean of unit values with Student's t interval on units − 1 degrees of freedom."""
    v = np.asarray(values, float)
    g = len(v)
    if g == 0:
        return _nan_estimate(nets, 0, test)
    mean = float(v.mean())
    if g < 2:
        return _nan_estimate(nets, g, test, est=mean)
    return _interval(mean, float(v.std(ddof=1)) / math.sqrt(g), g - 1, nets, g, test, confidence, margin)


def cluster_mean(diffs, units, confidence: float = CONFIDENCE, test: str | None = None,
                 margin: float | None = None) -> Estimate:
    """Mean of ``diffs`` (one per net) over the units they belong to: each unit's mean, then t over units.
    (For equal numbers of nets per unit this is the cluster-robust mean with the CR1 correction.)"""
    d = np.asarray(diffs, float)
    u = np.asarray(units, dtype=object)
    vals = unit_values(d, u)
    single = len(vals) == int(np.isfinite(d).sum())
    return one_sample(vals, int(np.isfinite(d).sum()), test or ("paired t" if single else "paired t over unit means"),
                      confidence, margin)


def welch(values1: pd.Series, values2: pd.Series, nets: int, test: str, confidence: float = CONFIDENCE,
          margin: float | None = None) -> Estimate:
    """(mean of unit values 1) − (mean of unit values 2), two independent sets of units: Welch's t with
    Satterthwaite's degrees of freedom."""
    v1, v2 = np.asarray(values1, float), np.asarray(values2, float)
    g1, g2 = len(v1), len(v2)
    if g1 == 0 or g2 == 0:
        return _nan_estimate(nets, g1 + g2, test)
    est = float(v1.mean() - v2.mean())
    if g1 < 2 or g2 < 2:
        return _nan_estimate(nets, g1 + g2, test, est=est)
    s1, s2 = v1.var(ddof=1) / g1, v2.var(ddof=1) / g2
    var = s1 + s2
    df = float(g1 + g2 - 2) if var == 0 else var**2 / (s1**2 / (g1 - 1) + s2**2 / (g2 - 1))
    return _interval(est, math.sqrt(var), df, nets, g1 + g2, test, confidence, margin)


def holm(p_values, groups=None) -> np.ndarray:
    """Holm's step-down adjusted p-values. With ``groups``, hypotheses of one group are logically exclusive
    (at most one of their nulls can be true: a row's difference and equivalence tests), and the multiplier at
    each step is the number of groups that still hold an untested hypothesis (Shaffer 1986, S1). NaN stays
    NaN and does not count."""
    p = np.asarray(p_values, float)
    g = np.arange(len(p)) if groups is None else np.asarray(groups, dtype=object)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, k in enumerate(order):
        mult = len(set(g[order[i:]]))
        running = max(running, min(1.0, mult * p[k]))
        out[k] = running
    return out


# ---------------------------------------------------------------------------------------------------------
# paired differences from the runs frame


def _cells(df: pd.DataFrame) -> pd.Series:
    return df["split"].astype(str) + "/" + df["target_half"].astype(str)


def unit_of(split: str, split_kind: str) -> str:
    """The independent unit a run belongs to: a random split's partition (its replicates included), or the
    training-seed replicate of a fixed split (natural/man-made, all classes)."""
    return base_split(split) if split_kind == "random" else split


UNIT_NAMES = {"random": "split", "natman": "seed replicate (both directions)", "all": "seed replicate"}


def _all_pairs(df: pd.DataFrame, kind: str, treatment: str, reference: str) -> pd.DataFrame:
    """:func:`paired_diffs` at every n."""
    r = df[df["split_kind"] == kind].assign(cell=lambda x: _cells(x),
                                            unit=lambda x: [unit_of(s, kind) for s in x["split"]])
    a = r[r["treatment"] == treatment][["unit", "cell", "n", "net", "top1"]]
    if TREATMENT[reference].per_cell:  # one net per cell (base, base+): the reference of every n
        b = r[r["treatment"] == reference][["cell", "top1"]].drop_duplicates("cell")
        m = a.merge(b, on="cell", suffixes=("", "_ref"))
    else:
        b = r[r["treatment"] == reference][["cell", "n", "top1"]]
        m = a.merge(b, on=["cell", "n"], suffixes=("", "_ref"))
    m = m.rename(columns={"top1": "value", "top1_ref": "ref"})
    m["diff"] = m["value"] - m["ref"]
    cols = ["unit", "cell", "n", "net", "value", "ref", "diff"]
    return m[cols].sort_values(["cell", "n"]).reset_index(drop=True)


class Pairs:
    """The paired differences of one runs frame: each (split kind, treatment, reference) paired once, at every
    n, then cut to the range asked (a claims table asks for the same pairs a few hundred times). The frame
    must not change while this is in use."""

    def __init__(self, df: pd.DataFrame):
        self.df, self._all = df, {}

    def diffs(self, kind: str, treatment: str, reference: str, lo: int, hi: int) -> pd.DataFrame:
        """One row per net of ``treatment`` with lo <= n <= hi on splits of ``kind``, paired with the net of
        ``reference`` in the same cell (a per-cell treatment such as the base net: the cell's net; one with
        units: the net with the same n). A per-cell ``treatment`` (base+) has one row per cell whatever lo and
        hi. Columns: unit, cell, n, net, value, ref, diff. Nets without a reference in their cell are left
        out."""
        key = (kind, treatment, reference)
        if key not in self._all:
            self._all[key] = _all_pairs(self.df, *key)
        d = self._all[key]
        if TREATMENT[treatment].per_cell:
            return d.copy()
        return d[d["n"].between(lo, hi)].reset_index(drop=True)

    def drop_values(self, kind: str, treatment: str, lo: int, hi: int) -> tuple[pd.Series, int]:
        """Per unit, ``treatment`` − its cell's base net averaged over the unit's cells (for the natural/man-made
        split, the mean of its two directions); and the number of nets behind them."""
        d = self.diffs(kind, treatment, REFERENCE, lo, hi)
        return unit_values(d["diff"], d["unit"], d["cell"]), len(d)


def paired_diffs(df: pd.DataFrame, kind: str, treatment: str, reference: str, lo: int, hi: int) -> pd.DataFrame:
    """:meth:`Pairs.diffs` of ``df``, once."""
    return Pairs(df).diffs(kind, treatment, reference, lo, hi)


def drop_values(df: pd.DataFrame, kind: str, treatment: str, lo: int, hi: int) -> tuple[pd.Series, int]:
    """:meth:`Pairs.drop_values` of ``df``, once."""
    return Pairs(df).drop_values(kind, treatment, lo, hi)


def drop_estimate(df: pd.DataFrame, kind: str, treatment: str, lo: int, hi: int,
                  confidence: float = CONFIDENCE) -> Estimate:
    """``treatment`` − its cell's base net on splits of ``kind``, t over units."""
    v, nets = drop_values(df, kind, treatment, lo, hi)
    return one_sample(v, nets, f"paired t over {UNIT_NAMES.get(kind, 'unit')}s", confidence)


# ---------------------------------------------------------------------------------------------------------
# the claims


@dataclass(frozen=True)
class Claim:
    """One claim of the paper. ``kind``: ``paired`` (treatment − reference within a cell), ``growth``
    (that paired effect at n_hi minus at n_lo, within a cell), ``versus`` (the drop treatment − base on
    ``split_kind`` splits minus the drop ``versus`` = (kind, treatment) − base; Welch over units).
    ``expected``: +1 or −1 (the sign the paper claims), 0 (the paper says: no difference).
    ``extra_training``: the claim compares a net trained on from a trained net with one that was not, so an
    unconverged reference confounds it."""

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
    versus: tuple[str, ...] = ()
    extra_training: bool = False


CLAIMS_FILE = "paper_claims.yaml"  # beside this module
CLAIM_KINDS = ("paired", "growth", "versus")


def load_claims(text: str | None = None, where: str = CLAIMS_FILE) -> tuple[Claim, ...]:
    """The claims of a claims file (YAML: a list of Claim fields; default: the packaged paper_claims.yaml),
    checked: a wrong entry raises ValueError naming ``where``, the claim and the field."""
    if text is None:
        text = resources.files(__package__).joinpath(CLAIMS_FILE).read_text()
    entries = yaml.safe_load(text)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected a list of claims")
    fields = {f.name for f in dataclasses.fields(Claim)}
    claims = []
    for i, e in enumerate(entries):
        name = f"{where}: claim {e.get('key', i + 1) if isinstance(e, dict) else i + 1}"
        if not isinstance(e, dict):
            raise ValueError(f"{name}: expected a mapping of {', '.join(sorted(fields))}")
        if unknown := set(e) - fields:
            raise ValueError(f"{name}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            c = Claim(**{k: tuple(tuple(r) for r in v) if k == "ranges" else tuple(v) if k == "versus" else v
                         for k, v in e.items()})
        except TypeError as err:
            raise ValueError(f"{name}: {err}") from None
        problems = [f"{f} {getattr(c, f)!r} is not a treatment ({', '.join(TREATMENT)})"
                    for f in ("treatment", "reference") if getattr(c, f) not in TREATMENT]
        if c.kind not in CLAIM_KINDS:
            problems.append(f"kind {c.kind!r} is not one of {', '.join(CLAIM_KINDS)}")
        if c.expected not in (1, -1, 0):
            problems.append(f"expected {c.expected!r} is not 1, -1 or 0")
        if not c.ranges or not all(len(r) == 2 and all(isinstance(x, int) for x in r) and 1 <= r[0] <= r[1]
                                   for r in c.ranges):
            problems.append(f"ranges {list(c.ranges)!r} are not [lo, hi] pairs with 1 <= lo <= hi")
        if c.split_kind not in UNIT_NAMES:
            problems.append(f"split_kind {c.split_kind!r} is not one of {', '.join(UNIT_NAMES)}")
        if c.kind == "versus" and (len(c.versus) != 2 or c.versus[0] not in UNIT_NAMES
                                   or c.versus[1] not in TREATMENT):
            problems.append(f"versus {list(c.versus)!r} is not [split kind, treatment]")
        if problems:
            raise ValueError(f"{name}: {'; '.join(problems)}")
        claims.append(c)
    if len({c.key for c in claims}) != len(claims):
        raise ValueError(f"{where}: two claims have the same key")
    return tuple(claims)


# the paper's claims (paper_claims.yaml)
CLAIMS: tuple[Claim, ...] = load_claims()


def claims_for(units: int, claims: tuple[Claim, ...] = CLAIMS) -> tuple[Claim, ...]:
    """The paper's claims for a net of ``units`` transferable units: each range of CaffeNet's 7 layers at the
    same relative depth, with the ends kept: layer 1 is unit 1 and layer 7 the top unit (n -> 1 + round((n - 1)
    (units - 1) / 6)), so "the first layers" start at the first unit on any depth (round(n * units / 7) made
    it unit 2 from 11 units on: ViT-B/16, ResNet-50 blocks) and "the top layer" is the top unit. CaffeNet's
    own claims are unchanged; so are those of the 5-unit demos."""
    if units == 7:
        return claims

    def at(n: int) -> int:
        return max(1, min(units, 1 + round((n - 1) * (units - 1) / 6)))

    out = []
    for c in claims:
        ranges = tuple(dict.fromkeys((at(lo), at(hi)) for lo, hi in c.ranges))
        out.append(dataclasses.replace(c, ranges=ranges))
    return tuple(out)


EFFECT_COLUMNS = ["claim", "label", "text", "scope", "layers", "n_lo", "n_hi", "expected", "estimate", "ci_lo",
                  "ci_hi", "unit", "units", "nets", "df", "p_value", "p_adjusted", "margin", "p_equivalence",
                  "p_equivalence_adjusted",
                  "test", "verdict", "agrees", "reason"]
PAPER_PREFIX = "paper_"


def _units_label(c: Claim) -> str:
    if c.kind == "versus":
        return f"{UNIT_NAMES[c.split_kind]} vs {UNIT_NAMES[c.versus[0]]}"
    return UNIT_NAMES.get(c.split_kind, "unit")


def _estimate(pairs: Pairs, c: Claim, lo: int, hi: int, confidence: float, margin: float | None) -> Estimate:
    unit = UNIT_NAMES.get(c.split_kind, "unit")
    if c.kind == "paired":
        d = pairs.diffs(c.split_kind, c.treatment, c.reference, lo, hi)
        if len(d) or c.reference == REFERENCE:
            return one_sample(unit_values(d["diff"], d["unit"], d["cell"]), len(d), f"paired t over {unit}s",
                              confidence, margin)
        a = pairs.diffs(c.split_kind, c.treatment, REFERENCE, lo, hi)
        b = pairs.diffs(c.split_kind, c.reference, REFERENCE, lo, hi)
        if len(a) and len(b):
            # no cell holds both (the authors ran BnB+ on A halves and AnB+ on B halves only): within each
            # unit, the difference of the two treatments' gains over their own cells' base nets
            va = unit_values(a["diff"], a["unit"], a["cell"])
            vb = unit_values(b["diff"], b["unit"], b["cell"])
            both = va.index.intersection(vb.index)
            return one_sample(va[both] - vb[both], len(a) + len(b),
                              f"paired t over {unit}s of gains over own base (no cell has both)", confidence, margin)
        return _nan_estimate(0, 0, f"paired t over {unit}s")
    if c.kind == "growth":
        d = pairs.diffs(c.split_kind, c.treatment, c.reference, lo, hi)
        w = d.pivot_table(index=["unit", "cell"], columns="n", values="diff")
        test = f"paired t over {unit}s on the within-cell contrast"
        if lo not in w.columns or hi not in w.columns:
            return _nan_estimate(0, 0, test)
        g = (w[hi] - w[lo]).dropna().reset_index()
        return one_sample(unit_values(g[0], g["unit"], g["cell"]), 2 * len(g), test, confidence, margin)
    if c.kind == "versus":
        va, na = pairs.drop_values(c.split_kind, c.treatment, lo, hi)
        vb, nb = pairs.drop_values(c.versus[0], c.versus[1], lo, hi)
        return welch(va, vb, na + nb, f"Welch t: paired drop per {UNIT_NAMES[c.split_kind]} vs per "
                     f"{UNIT_NAMES[c.versus[0]]}", confidence, margin)
    raise ValueError(f"unknown claim kind {c.kind!r}")


def _decide(est: Estimate, expected: int, p_diff: float, p_eq: float, alpha: float) -> str:
    """The verdict of one claim row from its multiplicity-adjusted p-values."""
    if not (np.isfinite(est.ci_lo) and np.isfinite(est.ci_hi)):
        return "no interval"
    if np.isfinite(p_eq) and p_eq < alpha:
        return "reproduced" if expected == 0 else "equivalent"
    if np.isfinite(p_diff) and p_diff < alpha:
        if expected == 0:
            return "contradicted"
        return "reproduced" if np.sign(est.estimate) == np.sign(expected) else "contradicted"
    return "inconclusive"


def layer_direction(est: Estimate) -> str:
    """For a single n, where the paper claims nothing by itself: which side of zero the 95% interval is on."""
    if np.isfinite(est.ci_lo) and est.ci_lo > 0:
        return "positive"
    if np.isfinite(est.ci_hi) and est.ci_hi < 0:
        return "negative"
    return "unresolved" if np.isfinite(est.ci_lo) else "no interval"


# ---------------------------------------------------------------------------------------------------------
# training adequacy


@dataclass(frozen=True)
class Adequacy:
    """Whether the design's nets are trained enough for claims that compare more training with less.
    ``late_gain``: median over the reference (base) nets of the validation top-1 gained over the last quarter
    of the schedule (NaN: no histories); ``extra_training``: the verdict of BnB+ − base (``equivalent`` is the
    only one that clears the confound)."""

    late_gain: float
    reference_nets: int
    plateau_gain: float
    extra_training: str
    extra_training_text: str
    ok: bool
    reason: str
    control: bool = False  # the design has base+ nets: the confounded claims have equally trained versions


def extra_training(df: pd.DataFrame, confidence: float = CONFIDENCE, margin: float = MARGIN) -> Estimate | None:
    """Extra training alone, measured directly: base+ − base per cell (the base net trained on with the
    fine-tuned nets' schedule, against itself before), over units; None when the design has no base+ nets."""
    d = paired_diffs(df, "random", CONTROL, REFERENCE, 0, 0)
    if d.empty:
        return None
    return one_sample(unit_values(d["diff"], d["unit"], d["cell"]), len(d), "paired t over splits", confidence,
                      margin)


def adequacy(df: pd.DataFrame, eff: pd.DataFrame, plateau_gain: float = PLATEAU_GAIN,
             margin: float = MARGIN, alpha: float = ALPHA) -> Adequacy:
    """The design's training adequacy, from the base nets' ``late_gain`` (runs.csv) and the extra-training
    check: base+ − base where the design has the control (its own test at ``alpha``: a check, not one of
    the claims), else the ``finetune_back_to_base`` claim row of ``eff`` (BnB+ − base, adjusted)."""
    from .tables import base_nets

    ref = base_nets(df)  # the random splits' reference nets (a base net trained only as a source is none)
    if ref.empty:
        ref = df[df["treatment"] == REFERENCE]
    gains = pd.to_numeric(ref.get("late_gain", pd.Series(dtype=float)), errors="coerce").dropna()
    late = float(gains.median()) if len(gains) else np.nan
    row = eff[(eff["claim"] == "finetune_back_to_base") & (eff["scope"] == "claim")]
    ctl = extra_training(df, margin=margin)
    if ctl is not None:
        what = "base+ − base"
        est, lo, hi = ctl.estimate, ctl.ci_lo, ctl.ci_hi
        check = _decide(ctl, 0, ctl.p_value, ctl.p_equivalence, alpha)
        check = {"reproduced": "equivalent"}.get(check, check)
    elif len(row):
        r = row.iloc[0]
        what = f"BnB+ − base, n = {r['layers']}"
        est, lo, hi = r["estimate"], r["ci_lo"], r["ci_hi"]
        check = "equivalent" if r["verdict"] == "reproduced" else r["verdict"]
    else:
        what, check = "", "no interval"
    if what:
        said = {"equivalent": f"within ±{100 * margin:.1f} (equivalent)",
                "contradicted": f"a difference, not within ±{100 * margin:.1f}",
                "no interval": "fewer than two units"}.get(check, f"not shown within ±{100 * margin:.1f}")
        text = (f"extra training alone ({what}): {100 * est:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}], "
                f"{said}")
    else:
        text = "extra training alone: no base+ or BnB+ nets"
    reasons = []
    if np.isfinite(late) and late > plateau_gain:
        reasons.append(f"base nets not at a plateau (median top-1 gain over the last quarter of the schedule "
                       f"{100 * late:+.1f} points > {100 * plateau_gain:.1f})")
    if check != "equivalent":
        reasons.append(text)
    return Adequacy(late, int(len(gains)), plateau_gain, check, text, not reasons, "; ".join(reasons),
                    ctl is not None)


def effects(df: pd.DataFrame, confidence: float = CONFIDENCE, claims=None, per_layer: bool = True,
            nmax: int = 7, margin: float = MARGIN, alpha: float = ALPHA, plateau_gain: float = PLATEAU_GAIN,
            family: str | None = None) -> pd.DataFrame:
    """Every claim over its claim ranges (scope ``claim``) and, exploratory, at each single n (scope
    ``layer``), for a net of ``nmax`` units (``claims_for``; CaffeNet: 7). Effects in top-1 units (0.01 = 1
    point). Claim rows: Holm–Shaffer adjusted p of the difference (``p_adjusted``) and of the equivalence
    (``p_equivalence_adjusted``) tests, and a verdict; ``confounded`` (with ``reason``) for the claims an inadequately trained
    design confounds. ``family``: the dissimilar split's name in the claim texts. Columns :data:`EFFECT_COLUMNS`."""
    claims = claims_for(nmax) if claims is None else claims
    dissimilar = family or dissimilar_name(df)
    random_norm = random_norm_text(df)
    rows, ests, pairs = [], [], Pairs(df)
    for c in claims:
        spans = [("claim", lo, hi) for lo, hi in c.ranges]
        if per_layer and c.per_layer:
            spans += [("layer", n, n) for n in range(1, nmax + 1)]
        for scope, lo, hi in spans:
            e = _estimate(pairs, c, lo, hi, confidence, margin)
            ests.append((c, e))
            rows.append({"claim": c.key, "label": c.label,
                         "text": c.text.format(dissimilar=dissimilar, random_norm=random_norm),
                         "scope": scope, "layers": f"{lo}" if lo == hi else f"{lo}-{hi}", "n_lo": lo, "n_hi": hi,
                         "expected": {1: "+", -1: "-", 0: "="}[c.expected], "estimate": e.estimate,
                         "ci_lo": e.ci_lo, "ci_hi": e.ci_hi, "unit": _units_label(c), "units": e.units,
                         "nets": e.nets, "df": e.df, "p_value": e.p_value, "p_equivalence": e.p_equivalence,
                         "margin": margin, "p_adjusted": np.nan,
                         "p_equivalence_adjusted": np.nan, "test": e.test, "verdict": "", "agrees": "",
                         "reason": ""})
    out = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    claim_rows = np.flatnonzero(out["scope"].to_numpy() == "claim")
    # the family: every claim row's difference test and equivalence test (at most one null true per row);
    # rows of one claim computed from the same nets (Table 1's 1-7 and 3-7 when no net has n < 3) are one
    # hypothesis, tested once
    same = {}
    rows_of = [same.setdefault((ests[i][0].key, ests[i][1].nets, ests[i][1].units, round(ests[i][1].estimate, 12)
                                if np.isfinite(ests[i][1].estimate) else i), i) for i in claim_rows]
    p = np.concatenate([out["p_value"].to_numpy(float)[claim_rows], out["p_equivalence"].to_numpy(float)[claim_rows]])
    adj = holm(p, groups=np.concatenate([rows_of, rows_of]))
    k = len(claim_rows)
    for j, i in enumerate(claim_rows):
        c, e = ests[i]
        p_diff, p_eq = adj[j], adj[k + j]
        v = _decide(e, c.expected, p_diff, p_eq, alpha)
        out.at[i, "verdict"] = v
        out.at[i, "p_adjusted"], out.at[i, "p_equivalence_adjusted"] = p_diff, p_eq
        out.at[i, "agrees"] = {"reproduced": "yes", "contradicted": "no", "equivalent": "no"}.get(v, "")
    for i in np.flatnonzero(out["scope"].to_numpy() == "layer"):
        out.at[i, "verdict"] = "exploratory"
        out.at[i, "reason"] = f"single n, unadjusted 95% CI: {layer_direction(ests[i][1])}"
    ad = adequacy(df, out, plateau_gain, margin, alpha)
    if not ad.ok:
        instead = ("; judged against the equally trained base+: finetune_back_to_control, boost_over_control"
                   if ad.control else "; add the control base+ to experiment.random_splits.treatments to judge "
                   "these against an equally trained reference")
        for i in claim_rows:
            c = ests[i][0]
            if c.extra_training and out.at[i, "verdict"] != "no interval":
                out.at[i, "reason"] = f"{ad.reason}; the data alone: {out.at[i, 'verdict']}{instead}"
                out.at[i, "verdict"] = "confounded"
                out.at[i, "agrees"] = ""
    if not ad.control:
        for i in claim_rows:
            if ests[i][0].reference == CONTROL:
                out.at[i, "reason"] = "no base+ nets (the control: add base+ to experiment.random_splits.treatments)"
    return out


RANDOM_NORM_TEXT = {"": "", "none": "", "recompute": " (their BatchNorm statistics re-estimated on the target half)",
                    "initial": " (BatchNorm at its initial statistics: not normalising)"}


def random_norm_text(df: pd.DataFrame) -> str:
    """What the random-filter claims say of their nets' normalisation (net.random_units_norm, as the nets
    recorded it): nothing for nets without BatchNorm in their random units (CaffeNet, ViTs)."""
    if "random_norm" not in df:
        return ""
    random = [t for t, spec in TREATMENT.items() if spec.source == "random"]
    kinds = sorted(set(df.loc[df["treatment"].isin(random), "random_norm"].fillna("")) - {"", "none"})
    if len(kinds) > 1:
        return " (mixed: some nets' BatchNorm statistics re-estimated, some at their initial values)"
    return RANDOM_NORM_TEXT[kinds[0]] if kinds else ""


def dissimilar_name(df: pd.DataFrame) -> str:
    """The dissimilar split's name from its own families ("man-made/natural" for the paper's)."""
    nm = df[(df["split_kind"] == "natman") & (df["target_family"].astype(str) != "")] if "target_family" in df else df[:0]
    fams = list(dict.fromkeys(nm.sort_values("target_half")["target_family"])) if len(nm) else []
    return "/".join(fams) if fams else "natural/man-made"


def effects_with_paper(ours: pd.DataFrame, paper: pd.DataFrame | None = None, confidence: float = CONFIDENCE,
                       units: int = 7, margin: float = MARGIN, alpha: float = ALPHA,
                       plateau_gain: float = PLATEAU_GAIN) -> pd.DataFrame:
    """:func:`effects` of our nets (of ``units`` transferable units) beside the same computation on the
    authors' CaffeNets (``paper_*`` columns; they match our rows where the layer ranges agree)."""
    if paper is None:
        from .tables import paper_runs

        paper = paper_runs()
    a = effects(ours, confidence, nmax=units, margin=margin, alpha=alpha, plateau_gain=plateau_gain)
    b = effects(paper, confidence, margin=margin, alpha=alpha, plateau_gain=plateau_gain)
    keep = ["estimate", "ci_lo", "ci_hi", "nets", "units", "p_adjusted", "verdict", "reason"]
    b = b[["claim", "scope", "layers", *keep]].rename(columns={k: PAPER_PREFIX + k for k in keep})
    return a.merge(b, on=["claim", "scope", "layers"], how="left")


# ---------------------------------------------------------------------------------------------------------
# Table 1, three ways

TABLE1_METHODS = ("pooled", "paired", "authors_nets_pooled", "authors_nets_paired")
TABLE1_COLUMNS = ["method", "layers", "n_lo", "n_hi", "over_base", "over_base_ci_lo", "over_base_ci_hi",
                  "over_selffer", "over_selffer_ci_lo", "over_selffer_ci_hi", "anb_plus_nets", "bnb_plus_nets",
                  "base_nets", "units", "test_over_selffer"]


def authors_nets(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """The random-split nets of ``df`` that the authors also trained and logged: every base net, and the
    BnB/AnB(+) nets whose (split, target half, treatment, n) has a log in the authors' repository (they ran
    10 BnB+ nets, all on A halves, and 10 AnB+ nets, all on B halves). Splits are matched by name: the
    authors' split s is ``rand{s}`` (configs/paper.yaml: numpy seed [s]); a split of another name matches
    no fine-tuned net."""
    if paper is None:
        from .tables import paper_runs

        paper = paper_runs()
    key = ["split", "target_half", "treatment", "n"]
    have = set(map(tuple, paper[paper["split_kind"] == "random"][key].astype(str).to_numpy()))
    r = df[df["split_kind"] == "random"]
    # by split name: the authors' split s is the pipeline's rand{s} (numpy seed [s]); replicates count as it
    rows = r[key].astype(str).assign(split=r["split"].map(base_split)).to_numpy()
    mask = (r["treatment"] == REFERENCE) | pd.Series([tuple(row) in have for row in rows], index=r.index)
    return r[mask]


def _table1_paired(df: pd.DataFrame, method: str, confidence: float) -> list[dict]:
    from .tables import TABLE1_RANGES

    rows, pairs = [], Pairs(df)
    by_key = {c.key: c for c in CLAIMS}
    for lo, hi in TABLE1_RANGES:
        e_base = _estimate(pairs, by_key["boost_over_base"], lo, hi, confidence, None)
        e_self = _estimate(pairs, by_key["boost_over_selffer"], lo, hi, confidence, None)
        r = df[df["split_kind"] == "random"]
        in_range = r["n"].between(lo, hi)
        rows.append({"method": method, "layers": f"{lo}-{hi}", "n_lo": lo, "n_hi": hi,
                     "over_base": 100 * e_base.estimate, "over_base_ci_lo": 100 * e_base.ci_lo,
                     "over_base_ci_hi": 100 * e_base.ci_hi, "over_selffer": 100 * e_self.estimate,
                     "over_selffer_ci_lo": 100 * e_self.ci_lo, "over_selffer_ci_hi": 100 * e_self.ci_hi,
                     "anb_plus_nets": int(((r["treatment"] == FIGURES.table1_treatment) & in_range).sum()),
                     "bnb_plus_nets": int(((r["treatment"] == FIGURES.table1_selffer) & in_range).sum()),
                     "base_nets": int((r["treatment"] == REFERENCE).sum()), "units": e_base.units,
                     "test_over_selffer": e_self.test})
    return rows


def _table1_pooled(df: pd.DataFrame, method: str, confidence: float, base: pd.DataFrame | None = None) -> list[dict]:
    from .tables import table1

    rows = []
    for _, t in table1(df, paper=False, base=base).iterrows():
        row = {"method": method, "layers": t["layers"], "n_lo": t["n_lo"], "n_hi": t["n_hi"],
               "anb_plus_nets": int(t["anb_plus_count"]), "bnb_plus_nets": int(t["bnb_plus_count"]),
               "base_nets": int(t["base_count"]), "units": np.nan,
               "test_over_selffer": "difference of pooled means (Welch t, nets independent)"}
        for ours, theirs, other in (("over_base", "boost_over_base", "base_"),
                                    ("over_selffer", "boost_over_bnb_plus", "bnb_plus_")):
            est, se = t[theirs], t[f"{theirs}_se"]
            n1, n2 = t["anb_plus_count"], t[f"{other}count"]
            row[ours] = est
            if np.isfinite(se) and se > 0:
                s1 = t["anb_plus_std"] ** 2 / n1
                s2 = t[f"{other}std"] ** 2 / n2
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
        from .tables import base_nets

        sub = authors_nets(runs, paper)
        rows = (_table1_pooled(runs, "pooled", confidence) + _table1_paired(runs, "paired", confidence)
                # the paper's pooled definition: every base net of the design, not only those of the
                # halves that the restricted nets target
                + _table1_pooled(sub, "authors_nets_pooled", confidence, base=base_nets(runs))
                + _table1_paired(sub, "authors_nets_paired", confidence))
        return pd.DataFrame(rows, columns=TABLE1_COLUMNS)

    ours, theirs = four(df), four(paper)
    keep = ["over_base", "over_base_ci_lo", "over_base_ci_hi", "over_selffer", "over_selffer_ci_lo",
            "over_selffer_ci_hi", "anb_plus_nets", "bnb_plus_nets", "units"]
    out = ours.merge(theirs[["method", "layers", *keep]].rename(columns={k: PAPER_PREFIX + k for k in keep}),
                     on=["method", "layers"], how="left")
    out["published_over_base"] = [PAPER_TABLE1.get((lo, hi), {}).get("over_base", np.nan)
                                  for lo, hi in zip(out["n_lo"], out["n_hi"])]
    out["published_over_selffer"] = [PAPER_TABLE1.get((lo, hi), {}).get("over_selffer", np.nan)
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
    out.append("Intervals: pooled rows treat every net as independent (Welch), as the paper's pooled means do; "
               "paired rows are t over units (a random split, both target halves and its seed replicates "
               "inside), units − 1 degrees of freedom; with no cell holding both AnB+ and BnB+ (the authors' "
               "nets), each split's difference of the two treatments' gains over their own base nets. 'no CI': "
               "fewer than two units. Verdicts, adjusted for the many claims, are in effects.md.\n")
    return "\n".join(out)


def _p(v) -> str:
    return "–" if not np.isfinite(v) else ("<0.001" if v < 0.001 else f"{v:.3f}")


def effects_markdown(eff: pd.DataFrame, ad: Adequacy | None = None, alpha: float = ALPHA) -> str:
    """The claim rows of :func:`effects_with_paper` as Markdown (effects in percentage points), with the
    training-adequacy check ``ad`` above them."""
    lines = []
    if ad is not None:
        late = "no histories" if not np.isfinite(ad.late_gain) else (
            f"{100 * ad.late_gain:+.1f} points (median of {ad.reference_nets} base nets; plateau: at most "
            f"{100 * ad.plateau_gain:.1f})")
        lines += ["## Training adequacy\n",
                  f"- Top-1 gained over the last quarter of the schedule: {late}.",
                  f"- {ad.extra_training_text[:1].upper() + ad.extra_training_text[1:]}.",
                  "- " + ("Adequate: the claims that compare more training with less stand on their own." if ad.ok
                          else "**Not adequate**: the claims that compare a net trained on from a trained net with "
                               "one trained once (fine-tuning recovers, the boost over base) are `confounded`."
                               + (" Their equally trained versions against base+ (`finetune_back_to_control`, "
                                  "`boost_over_control`) are not." if ad.control else
                                  " Add the control base+ (the base net trained on) to judge them against an "
                                  "equally trained reference.")), ""]
    margin = eff["margin"].dropna()
    lines += [f"Verdicts at α = {alpha} after Holm–Shaffer adjustment over the {int((eff['scope'] == 'claim').sum())} "
              "claim rows (each row's difference and equivalence tests; rows of one claim on the same nets "
              "count once); equivalence margin ±"
              f"{100 * float(margin.iloc[0]) if len(margin) else float('nan'):.1f} points. Expected: the sign the "
              "paper claims, or `=` for no difference. A unit is what varies independently (see the `unit` column of "
              "effects.csv).\n",
              "| label | claim | n | ours (pp, 95% CI) | units (df) | p adj. (diff / equiv.) | verdict | "
              "authors' nets (pp, 95% CI) | units | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in eff[eff["scope"] == "claim"].iterrows():
        ours = _ci(100 * r["estimate"], 100 * r["ci_lo"], 100 * r["ci_hi"])
        theirs = _ci(100 * r["paper_estimate"], 100 * r["paper_ci_lo"], 100 * r["paper_ci_hi"])
        their_units = int(r["paper_units"]) if pd.notna(r["paper_units"]) else "–"
        df = f"{r['df']:.1f}".rstrip("0").rstrip(".") if np.isfinite(r["df"]) else "–"
        alone = r["reason"].rsplit("the data alone: ", 1)[-1].split(";")[0]
        verdict = f"**{r['verdict']}**" + (f" (the data alone: {alone})" if r["verdict"] == "confounded" else "")
        paper_verdict = r["paper_verdict"] if pd.notna(r["paper_verdict"]) else "–"
        lines.append(f"| {r['label']} | {r['text']} ({r['expected']}) | {r['layers']} | {ours} | {r['units']} ({df}) | "
                     f"{_p(r['p_adjusted'])} / {_p(r['p_equivalence_adjusted'])} | {verdict} | {theirs} | "
                     f"{their_units} | {paper_verdict} |")
    return "\n".join(lines) + "\n"
