"""Tidy tables from the run files: the per-net frame, the line means of Figures 2 and 3, Table 1.

Every number here comes from the ``metrics.json`` each trained net writes (or from ``runs.csv`` built from
them). One row per net, columns :data:`RUN_COLUMNS`. A net's score ``top1`` is the paper's metric: the mean of
its best k validation top-1 evaluations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .. import atomic
from ..paths import HISTORY_COLUMNS as _HISTORY, PAPER_TRANSFER_TREATMENTS, TREATMENTS, treatment_net
from .paper import PAPER_TABLE1, load_paper_networks
from .spec import FIGURES, REFERENCE, SPLIT_KINDS

RUN_COLUMNS = [
    "split", "split_kind", "net", "treatment", "n", "source_half", "target_half", "target_family",
    "num_classes", "top1", "top1_final", "top5", "top5_final", "top1_max", "late_gain", "evals", "iters",
    "wall_s", "device", "random_norm", "history",
]
STR_COLUMNS = ["split", "split_kind", "net", "treatment", "source_half", "target_half", "target_family",
               "device", "random_norm", "history"]
FLOAT_COLUMNS = ["top1", "top1_final", "top5", "top5_final", "top1_max", "late_gain", "wall_s"]
INT_COLUMNS = ["num_classes", "evals", "iters"]  # nullable: a run file may lack them
REQUIRED_KEYS = ["split", "split_kind", "net", "treatment", "n", "target_half", "top1"]

FIG2_TREATMENTS = PAPER_TRANSFER_TREATMENTS  # the paper's legend: base, BnB, BnB+, AnB, AnB+
NATMAN_FAMILIES = ("natural", "man-made")
RELATIVE_SERIES = tuple(r.series for r in FIGURES.relative)  # Figure 3's bottom panel (figures.yaml)
TABLE1_RANGES = ((1, 7), (3, 7), (5, 7))

HISTORY_COLUMNS = list(_HISTORY)


# ---------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------
# the per-net frame


def coerce_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Put a frame into the runs schema: column order, dtypes, '' for missing strings."""
    df = df.copy()
    for c in RUN_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    for c in STR_COLUMNS:
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        df[c] = df[c].astype(str)
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").round().astype("Int64")
    df["n"] = pd.to_numeric(df["n"]).astype(int)
    return df[RUN_COLUMNS].reset_index(drop=True)


def _sort_runs(df: pd.DataFrame) -> pd.DataFrame:
    kind = df["split_kind"].map({k: i for i, k in enumerate(SPLIT_KINDS)})
    treat = df["treatment"].map({t: i for i, t in enumerate(TREATMENTS)})
    order = np.lexsort((df["net"].to_numpy(), df["n"].to_numpy(), treat.to_numpy(),
                        df["split"].to_numpy(), kind.to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def _metrics_file(p: str | Path) -> Path:
    p = Path(p)
    return p / "metrics.json" if p.is_dir() else p


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read ``metrics.json`` files (or run directories holding one) into the runs frame.

    Keys outside :data:`RUN_COLUMNS` are ignored; optional keys that are missing become empty/NaN.
    Raises ``ValueError`` naming the file for a missing required key or an unknown split kind/treatment.
    """
    rows = []
    for p in paths:
        f = _metrics_file(p)
        m = json.loads(f.read_text())
        missing = [k for k in REQUIRED_KEYS if k not in m]
        if missing:
            raise ValueError(f"{f}: missing key(s) {missing}")
        if m["split_kind"] not in SPLIT_KINDS:
            raise ValueError(f"{f}: split_kind {m['split_kind']!r} not in {SPLIT_KINDS}")
        if m["treatment"] not in TREATMENTS:
            raise ValueError(f"{f}: treatment {m['treatment']!r} not in {TREATMENTS}")
        row = {c: m.get(c) for c in RUN_COLUMNS}
        hist = f.parent / (m.get("history") or "history.csv")
        if hist.exists():
            row["late_gain"] = late_gain(pd.read_csv(hist))
        rows.append(row)
    if not rows:
        return coerce_runs(pd.DataFrame(columns=RUN_COLUMNS))
    return _sort_runs(coerce_runs(pd.DataFrame(rows)))


CROSS_COLUMNS = ["source", "target", "replicate", "run", "net", "treatment", "n", "unit", "top1", "top1_final",
                 "late_gain", "iters", "wall_s"]


def cross_runs(metrics: Iterable[str | Path]) -> pd.DataFrame:
    """The cross experiment's runs frame: one row per target net, its source (the transfer/<source>/ folder
    it sits in; "" for the target's own base and random-filter nets, shared by every source), target (its
    dataset's name), seed replicate and treatment, read from each ``metrics.json`` and its path."""
    from ..paths import MAIN_DATASET, locate_net_file, parse_replicate, unit_names

    rows = []
    for p in metrics:
        f = _metrics_file(p)
        w = locate_net_file(str(f))
        row = load_runs([f]).iloc[0]
        if (row["split"], row["net"]) != (w.run, w.net):
            raise ValueError(f"{f}: its metrics name {row['split']}/{row['net']}, its path {w.run}/{w.net}")
        net_cfg = json.loads(f.read_text())["provenance"]["config"]["net"]
        n = int(row["n"])
        rows.append({**row.to_dict(), "source": w.via, "target": w.dataset or MAIN_DATASET,
                     "replicate": parse_replicate(w.run)[1], "run": w.run,
                     "unit": unit_names(net_cfg)[n - 1] if n else ""})
    df = pd.DataFrame(rows, columns=[*CROSS_COLUMNS, "split"])[CROSS_COLUMNS]
    if df.duplicated(["source", "target", "run", "net"]).any():
        raise ValueError("cross runs: a net was given twice")
    return df.sort_values(["target", "source", "treatment", "n", "replicate"], kind="stable").reset_index(drop=True)


def late_gain(history: pd.DataFrame, fraction: float = 0.25) -> float:
    """Validation top-1 gained over the last ``fraction`` of a net's schedule: the last evaluation minus the
    last one at or before iteration (1 − fraction) × the last evaluation's. A net at a plateau gains ~0; NaN
    with fewer than two evaluations."""
    h = history.dropna(subset=["iter", "top1"]).sort_values("iter")
    if len(h) < 2:
        return np.nan
    last = h.iloc[-1]
    before = h[h["iter"] <= (1 - fraction) * last["iter"]]
    return float(last["top1"] - before.iloc[-1]["top1"]) if len(before) else np.nan


def load_history(metrics_path: str | Path) -> pd.DataFrame:
    """The per-evaluation history of one net (``history`` is relative to the metrics.json directory)."""
    f = _metrics_file(metrics_path)
    rel = json.loads(f.read_text()).get("history") or "history.csv"
    return pd.read_csv(f.parent / rel)


def write_runs_csv(df: pd.DataFrame, path: str | Path) -> Path:
    return atomic.write_csv(coerce_runs(df), path)


def read_runs_csv(path: str | Path) -> pd.DataFrame:
    df = atomic.read_csv(path, keep_default_na=False, na_values={c: [""] for c in FLOAT_COLUMNS + INT_COLUMNS},
                         dtype={c: str for c in STR_COLUMNS})
    return coerce_runs(df)


# ---------------------------------------------------------------------------------------------------------
# aggregations


def _stats(values: pd.Series) -> dict:
    v = values.astype(float)
    return {"mean": v.mean() if len(v) else np.nan, "std": v.std(ddof=1) if len(v) > 1 else np.nan,
            "count": int(len(v))}


def base_nets(df: pd.DataFrame, split_kind: str = "random") -> pd.DataFrame:
    """The base nets that are the "baseB" reference: those of halves that some transfer or selffer net of
    the same split targets (the paper targets every half, so all 8 base nets). A base net trained only as
    a source (a design with ``targets: [B]``) is not a reference. With no treatment nets, all base nets."""
    base = df[(df["split_kind"] == split_kind) & (df["treatment"] == REFERENCE)]
    treated = df[(df["split_kind"] == split_kind) & (df["treatment"] != REFERENCE)]
    if treated.empty:
        return base
    targets = set(zip(treated["split"], treated["target_half"]))
    return base[[(s, h) in targets for s, h in zip(base["split"], base["target_half"])]]


def line_means(df: pd.DataFrame) -> pd.DataFrame:
    """Figure 2 bottom: per treatment and n, the mean, std (ddof 1) and count of top-1 over random splits.

    Columns: ``treatment``, ``n``, ``mean``, ``std``, ``count``.  The n = 0 row of every treatment present
    (and a ``base`` row) is the mean of all random-split base nets, as in the paper, where every line starts
    at the baseB mean.  Treatments without nets have no rows.
    """
    r = df[df["split_kind"] == "random"]
    rows = []
    base = _stats(base_nets(df)["top1"])
    present = [t for t in FIG2_TREATMENTS if (r["treatment"] == t).any()]
    if base["count"]:
        rows += [{"treatment": t, "n": 0, **base} for t in [REFERENCE, *present]]
    for t in present:
        g = r[(r["treatment"] == t) & (r["n"] > 0)]
        for n, s in g.groupby("n")["top1"]:
            rows.append({"treatment": t, "n": int(n), **_stats(s)})
    return pd.DataFrame(rows, columns=["treatment", "n", "mean", "std", "count"])


def natman_means(df: pd.DataFrame, treatment: str = FIGURES.dissimilar) -> pd.DataFrame:
    """Figure 3 top left: per target family and n, the natural/man-made split's ``treatment`` (figures.yaml:
    the frozen transfer AnB).

    Columns: ``target_family``, ``treatment`` (``base`` at n = 0, else ``treatment``), ``n``, ``mean``,
    ``std``, ``count``.  Other treatments run on the natman split are not part of the figure and are ignored.
    """
    r = df[(df["split_kind"] == "natman") & df["treatment"].isin([REFERENCE, treatment])]
    rows = []
    fams = [f for f in NATMAN_FAMILIES if (r["target_family"] == f).any()]
    fams += sorted(set(r["target_family"]) - set(NATMAN_FAMILIES))
    for fam in fams:
        g = r[r["target_family"] == fam]
        for (t, n), s in g.groupby(["treatment", "n"])["top1"]:
            rows.append({"target_family": fam, "treatment": t, "n": int(n), **_stats(s)})
    out = pd.DataFrame(rows, columns=["target_family", "treatment", "n", "mean", "std", "count"])
    return out.sort_values(["target_family", "n"], key=_family_key).reset_index(drop=True)


def _family_key(col: pd.Series) -> pd.Series:
    if col.name == "target_family":
        return col.map(lambda f: NATMAN_FAMILIES.index(f) if f in NATMAN_FAMILIES else len(NATMAN_FAMILIES))
    return col


def natman_mean_of_families(df: pd.DataFrame, treatment: str = FIGURES.dissimilar) -> pd.DataFrame:
    """The paper's "mean of the two": per n, the mean over target families of the family means.

    Columns: ``n``, ``mean``, ``families`` (how many families were present at that n), ``count`` (nets).
    """
    m = natman_means(df, treatment)
    if m.empty:
        return pd.DataFrame(columns=["n", "mean", "families", "count"])
    g = m.groupby("n")
    return pd.DataFrame({"mean": g["mean"].mean(), "families": g["mean"].size(),
                         "count": g["count"].sum()}).reset_index()


def random_filter_means(df: pd.DataFrame, treatment: str = FIGURES.random_filters) -> pd.DataFrame:
    """Figure 3 top right: random frozen filters (``treatment``; split ``all``); n = 0 is the ``all`` base net.

    Columns: ``treatment`` (``base``/``random``), ``n``, ``mean``, ``std``, ``count``.
    """
    r = df[(df["split_kind"] == "all") & df["treatment"].isin([REFERENCE, treatment])]
    rows = [{"treatment": t, "n": int(n), **_stats(s)} for (t, n), s in r.groupby(["treatment", "n"])["top1"]]
    out = pd.DataFrame(rows, columns=["treatment", "n", "mean", "std", "count"])
    return out.sort_values("n").reset_index(drop=True)


def relative_top1(df: pd.DataFrame) -> pd.DataFrame:
    """Figure 3 bottom: each series of figures.yaml minus its own n = 0 reference; for the paper's three:

    * ``AnB random splits``: mean AnB over random splits minus the mean of all random-split base nets;
    * ``AnB m/n split``: mean of the two target families' AnB means minus the mean of the two natman base nets;
    * ``random features``: random frozen filters minus the base net of split ``all``.

    Columns: ``series``, ``n``, ``mean``, ``reference``, ``relative``, ``count``.  n = 0 rows (relative 0)
    are included for every series whose reference exists, so lines start at the reference point.
    """
    rows = []

    def add(series, ref, per_n):
        if ref is None or not np.isfinite(ref):
            return
        rows.append({"series": series, "n": 0, "mean": ref, "reference": ref, "relative": 0.0, "count": 0})
        for n, mean, count in per_n:
            if n > 0:
                rows.append({"series": series, "n": int(n), "mean": mean, "reference": ref,
                             "relative": mean - ref, "count": int(count)})

    for series in FIGURES.relative:
        if series.split_kind == "random":
            lm = line_means(df)
            base = lm[lm["treatment"] == REFERENCE]
            g = lm[(lm["treatment"] == series.treatment) & (lm["n"] > 0)]
            add(series.series, base["mean"].iloc[0] if len(base) else None, zip(g["n"], g["mean"], g["count"]))
        elif series.split_kind == "natman":
            nm = natman_mean_of_families(df, series.treatment)
            ref = nm.loc[nm["n"] == 0, "mean"]
            add(series.series, ref.iloc[0] if len(ref) else None, zip(nm["n"], nm["mean"], nm["count"]))
        else:
            rf = random_filter_means(df, series.treatment)
            ref = rf.loc[rf["treatment"] == REFERENCE, "mean"]
            rr = rf[rf["treatment"] == series.treatment]
            add(series.series, ref.iloc[0] if len(ref) else None, zip(rr["n"], rr["mean"], rr["count"]))
    return pd.DataFrame(rows, columns=["series", "n", "mean", "reference", "relative", "count"])


def table1(df: pd.DataFrame, ranges=TABLE1_RANGES, paper: bool = True, base: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1: the boost of transfer + fine-tuning (AnB+) over the controls, POOLED as the paper did.

    For each layer range [lo, hi]: mean over all random-split AnB+ nets with lo <= n <= hi, minus (a) the
    mean of all random-split base nets (``base``: these base nets instead; a subset of the nets still has
    every base net of the design as its reference) and (b) the mean over all BnB+ nets with n in the range.  Boosts are in
    percentage points; ``*_se`` is the standard error of the difference of the two means (Welch), also in
    points, NaN where a group has fewer than 2 nets.  With ``paper=True`` the paper's published values are added.

    Columns: layers, n_lo, n_hi, anb_plus_mean, anb_plus_std, anb_plus_count, base_mean, base_std, base_count,
    bnb_plus_mean, bnb_plus_std, bnb_plus_count, boost_over_base, boost_over_base_se, boost_over_bnb_plus,
    boost_over_bnb_plus_se [, paper_boost_over_base, paper_boost_over_bnb_plus].
    """
    r = df[df["split_kind"] == "random"]
    base = _stats((base_nets(df) if base is None else base)["top1"])
    rows = []
    for lo, hi in ranges:
        in_range = r["n"].between(lo, hi)
        anb = _stats(r.loc[in_range & (r["treatment"] == FIGURES.table1_treatment), "top1"])
        bnb = _stats(r.loc[in_range & (r["treatment"] == FIGURES.table1_selffer), "top1"])
        row = {"layers": f"{lo}-{hi}", "n_lo": lo, "n_hi": hi}
        for prefix, s in (("anb_plus_", anb), ("base_", base), ("bnb_plus_", bnb)):
            row.update({f"{prefix}{k}": v for k, v in s.items()})
        for col, s in (("boost_over_base", base), ("boost_over_bnb_plus", bnb)):
            row[col] = 100 * (anb["mean"] - s["mean"]) if anb["count"] and s["count"] else np.nan
            both = anb["count"] > 1 and s["count"] > 1
            se = math.sqrt(anb["std"] ** 2 / anb["count"] + s["std"] ** 2 / s["count"]) if both else np.nan
            row[f"{col}_se"] = 100 * se
        if paper:
            p = PAPER_TABLE1.get((lo, hi), {})
            row["paper_boost_over_base"] = p.get("over_base", np.nan)
            row["paper_boost_over_bnb_plus"] = p.get("over_selffer", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_means(df: pd.DataFrame) -> pd.DataFrame:
    """All plotted means in one long frame: columns panel, treatment, target_family, n, mean, std, count.

    panel ``fig2`` (random splits; n = 0 only as treatment ``base``), ``natman`` (per target family),
    ``random`` (split ``all``: ``base`` at n = 0, ``random`` filters after).
    """
    lm = line_means(df)
    lm = lm[(lm["n"] > 0) | (lm["treatment"] == REFERENCE)].assign(panel="fig2", target_family="")
    nm = natman_means(df).assign(panel="natman")
    rf = random_filter_means(df).assign(panel="random", target_family="")
    cols = ["panel", "treatment", "target_family", "n", "mean", "std", "count"]
    parts = [p[cols] for p in (lm, nm, rf) if len(p)]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)


def paper_comparison(ours: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our means next to the paper's, per panel, treatment (and target family) and n.

    ``ours`` and ``paper`` are per-net frames in the runs schema (``paper`` defaults to the packaged
    :func:`transferable.figures.paper.paper_runs`); both go through the same aggregation.

    Columns: panel, treatment, target_family, n, mean, std, count, paper_mean, paper_count, diff
    (= mean - paper_mean).  Rows present on only one side are kept, with NaN on the other.
    """
    if paper is None:
        paper = paper_runs()
    keys = ["panel", "treatment", "target_family", "n"]
    a = summary_means(ours)
    b = summary_means(paper)[keys + ["mean", "count"]].rename(columns={"mean": "paper_mean",
                                                                        "count": "paper_count"})
    out = a.merge(b, on=keys, how="outer")
    out["count"] = out["count"].fillna(0).astype(int)
    out["paper_count"] = out["paper_count"].fillna(0).astype(int)
    out["diff"] = out["mean"] - out["paper_mean"]
    p_order = {"fig2": 0, "natman": 1, "random": 2}
    t_order = {t: i for i, t in enumerate(TREATMENTS)}
    f_order = {"": 0, "natural": 1, "man-made": 2}
    order = np.lexsort((out["n"].to_numpy(), out["target_family"].map(f_order).fillna(9).to_numpy(),
                        out["treatment"].map(t_order).to_numpy(), out["panel"].map(p_order).to_numpy()))
    return out.iloc[order].reset_index(drop=True)[keys + ["mean", "std", "count", "paper_mean", "paper_count",
                                                          "diff"]]


# ---------------------------------------------------------------------------------------------------------
# writers


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)) or v is pd.NA:
        return "–"
    return f"{v:.{digits}f}"


def write_paper_comparison(cmp: pd.DataFrame, csv_path: str | Path) -> Path:
    return atomic.write_csv(cmp, csv_path)


# the paper's networks, as runs


def _paper_net_name(row) -> str:
    t, n, src, tgt = row["treatment"], row["n"], row["source_half"], row["target_half"]
    if t == REFERENCE and not tgt:  # the authors' netbase: one net on all 1000 classes, named as its treatment
        return t
    return treatment_net(t, tgt, src, int(n))


def paper_runs() -> pd.DataFrame:
    """The paper's networks in the schema of ``runs.csv`` (see :data:`tables.RUN_COLUMNS`).

    Columns the logs do not give (top-5, wall time) are empty; iters is the solver's 450k.
    """
    p = load_paper_networks()
    df = p.assign(
        net=p.apply(_paper_net_name, axis=1),
        top5=float("nan"), top5_final=float("nan"), iters=450000, wall_s=float("nan"), late_gain=float("nan"),
        device="paper (K20 GPU, Caffe)", random_norm="", history="",
    )
    return coerce_runs(df[RUN_COLUMNS])


# the report's view of a table


_HTML_STYLE = """<style>
body { font-family: sans-serif; font-size: 13px; margin: 12px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
</style>"""


def html_table(df: pd.DataFrame, title: str) -> str:
    """A standalone HTML page of ``df`` (floats to 4 significant digits, empty cells blank)."""
    body = df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, escape=True)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>{_HTML_STYLE}</head>"
            f"<body><h3>{title}</h3><p>{len(df)} rows</p>\n{body}\n</body></html>\n")
