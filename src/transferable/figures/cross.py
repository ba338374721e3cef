"""The cross experiment's answer: how deep a source network's features transfer to another dataset.

A source net (trained on dataset X, or a checkpoint) gives units 1..n to nets trained on a target dataset Y:
``AnB`` (the copied units frozen), ``AnB+`` (fine-tuned) and the control ``random`` (units 1..n left at their
random initialisation, frozen), each against ``base``, the target's own net trained from scratch. Every
treatment is trained in seed replicates r = 0..R-1, and **the replicate is the unit of replication**: a
treatment net and the base net of the same replicate form a pair, and an effect is the mean over replicates of
the paired difference treatment − base, with Student's t interval on replicates − 1 degrees of freedom
(:func:`effects.one_sample`). The base and random nets copy nothing from a source: they are trained once per
target and replicate (``source`` = "") and are the reference of every source's nets on that target.

Each row tests a difference (H0: no difference, two-sided) and an equivalence (TOST, H0: |effect| >= margin);
the p-values of the whole table, both families, are adjusted together by Holm's step-down with Shaffer's
constraint (:func:`effects.holm`; a random row repeated for every source is one hypothesis). Verdicts:
``loss``, ``gain``, ``equivalent``, ``inconclusive``, ``no interval`` (fewer than two paired replicates).

An ``AnB+`` net trains longer from a better start than the scratch net it is compared with: when the target's
base nets were still improving at the end of their schedule (median ``late_gain`` above ``plateau_gain``),
a "gain" of fine-tuning over scratch may only reflect the short schedule, and the row carries a ``caveat``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..paths import TREATMENT  # noqa: E402
from .effects import ALPHA, CONFIDENCE, MARGIN, PLATEAU_GAIN, _decide, holm, one_sample  # noqa: E402
from .plots import RC, _legend_below, _save, ci_halfwidth  # noqa: E402
from .spec import FIGURES, REFERENCE  # noqa: E402

CROSS_TREATMENTS = FIGURES.cross_treatments  # the compared treatments, in table order (figures.yaml)
# trained once per target and replicate (nothing copied from a source): shared by every source
SHARED = tuple(t for t, spec in TREATMENT.items() if not spec.has_source)
VERDICTS = ("loss", "gain", "equivalent", "inconclusive", "no interval")
EFFECT_COLUMNS = ["source", "target", "treatment", "label", "n", "unit", "replicates", "nets", "treatment_mean",
                  "base_mean", "estimate", "ci_lo", "ci_hi", "se", "df", "p", "p_eq", "margin", "p_adj", "p_eq_adj",
                  "verdict", "base_late_gain", "caveat", "test"]
SUMMARY_COLUMNS = ["source", "target", "tested", "deepest_no_loss", "deepest_equivalent", "first_loss",
                   "first_loss_estimate", "first_loss_ci_lo", "first_loss_ci_hi", "finetune_tested",
                   "finetune_gain", "finetune_worse", "random_loss", "caveat", "answer"]
TEST = "paired t over seed replicates"
DAGGER = "\u2020"
CAVEAT = ("the target's base nets were still improving at the end of their schedule (median top-1 gain over "
          "the last quarter {gain:+.1f} points > {plateau:.1f}): fine-tuning may beat scratch only because "
          "scratch was trained too briefly")


# ---------------------------------------------------------------------------------------------------------
# the runs of one pair


def _clean(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs frame with "" for a missing source, and numeric n (0 when empty), replicate, top1 and late_gain."""
    r = runs.copy()
    r["source"] = r["source"].fillna("").astype(str)
    r["target"] = r["target"].astype(str)
    r["n"] = pd.to_numeric(r["n"]).fillna(0).astype(int)  # a base net's n may be read back empty
    r["replicate"] = pd.to_numeric(r["replicate"]).astype(int)
    r["top1"] = pd.to_numeric(r["top1"], errors="coerce")
    r["late_gain"] = pd.to_numeric(r["late_gain"], errors="coerce") if "late_gain" in r else np.nan
    return r


def pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The (source, target) pairs of the runs: every source with nets of its own on a target."""
    r = _clean(runs)
    r = r[r["source"] != ""]
    return sorted(set(zip(r["source"], r["target"])))


def pair_runs(runs: pd.DataFrame, source: str, target: str) -> pd.DataFrame:
    """The nets of one pair: the source's nets on the target, with the target's source-less base and random
    nets (the same ones for every source)."""
    r = _clean(runs)
    return r[(r["target"] == target) & r["source"].isin(["", source])]


def _unit_names(runs: pd.DataFrame, similarity: pd.DataFrame | None = None) -> dict[int, str]:
    """n -> unit name, from a ``unit`` column of the runs or of the similarity table (empty if neither)."""
    out = {}
    for df in (similarity, runs):
        if df is not None and "unit" in df and "n" in df:
            u = df[["n", "unit"]].dropna()
            out.update({int(n): str(name) for n, name in zip(u["n"], u["unit"]) if str(name) and int(n) > 0})
    return out


# ---------------------------------------------------------------------------------------------------------
# effects


def _paired(pr: pd.DataFrame, treatment: str, n: int, confidence: float, margin: float) -> dict:
    """treatment − base at n, paired by replicate (only replicates holding both), t over replicates."""
    base = pr[pr["treatment"] == REFERENCE].groupby("replicate")["top1"].mean().dropna()
    t = pr[(pr["treatment"] == treatment) & (pr["n"] == n)].groupby("replicate")["top1"].mean().dropna()
    both = t.index.intersection(base.index)
    d = t[both] - base[both]
    e = one_sample(d, 2 * len(d), TEST, confidence, margin)
    return {"replicates": e.units, "nets": e.nets, "treatment_mean": float(t[both].mean()) if len(both) else np.nan,
            "base_mean": float(base[both].mean()) if len(both) else np.nan, "estimate": e.estimate,
            "ci_lo": e.ci_lo, "ci_hi": e.ci_hi, "se": e.se, "df": e.df, "p": e.p_value, "p_eq": e.p_equivalence,
            "test": e.test, "_est": e}


def _rows(runs: pd.DataFrame, confidence: float, margin: float) -> list[dict]:
    rows = []
    for source, target in pairs(runs):
        pr = pair_runs(runs, source, target)
        units = _unit_names(pr)
        gains = pr.loc[pr["treatment"] == REFERENCE, "late_gain"].dropna()
        late = float(gains.median()) if len(gains) else np.nan
        for t in CROSS_TREATMENTS:
            for n in sorted(pr.loc[(pr["treatment"] == t) & (pr["n"] > 0), "n"].unique()):
                rows.append({"source": source, "target": target, "treatment": t, "label": TREATMENT[t].label,
                             "n": int(n), "unit": units.get(int(n), ""), "margin": margin,
                             "base_late_gain": late, **_paired(pr, t, int(n), confidence, margin)})
    return rows


def _adjust(out: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Holm–Shaffer over every row's difference and equivalence tests; a random row (source-less nets)
    repeated for each source is one hypothesis, counted once."""
    keys = [(r.target, r.treatment, r.n) if r.treatment in SHARED else (r.source, r.target, r.treatment, r.n)
            for r in out.itertuples()]
    uniq = list(dict.fromkeys(keys))
    first = {k: keys.index(k) for k in uniq}
    p = np.array([out["p"].iat[first[k]] for k in uniq] + [out["p_eq"].iat[first[k]] for k in uniq], float)
    adj = holm(p, groups=np.arange(2 * len(uniq)) % max(1, len(uniq)))
    at = {k: j for j, k in enumerate(uniq)}
    idx = np.array([at[k] for k in keys], int)
    return adj[idx], adj[len(uniq) + idx]


def cross_effects(runs: pd.DataFrame, confidence: float = CONFIDENCE, alpha: float = ALPHA, margin: float = MARGIN,
                  plateau_gain: float = PLATEAU_GAIN) -> pd.DataFrame:
    """One row per (source, target, treatment, n): treatment − base paired by replicate with its interval,
    adjusted p-values (``p_adj``, ``p_eq_adj``), a verdict (:data:`VERDICTS`) and, for an AnB+ "gain" over
    unconverged base nets, a caveat. Effects in top-1 units (0.01 = 1 point). Columns :data:`EFFECT_COLUMNS`."""
    rows = _rows(runs, confidence, margin)
    out = pd.DataFrame(rows, columns=[*EFFECT_COLUMNS, "_est"])
    if out.empty:
        return out[EFFECT_COLUMNS]
    out["p_adj"], out["p_eq_adj"] = _adjust(out)
    said = {"reproduced": "gain", "contradicted": "loss"}
    out["verdict"] = [said.get(v, v) for v in (_decide(e, +1, pd_, pe, alpha) for e, pd_, pe in
                                              zip(out["_est"], out["p_adj"], out["p_eq_adj"]))]
    late = out["base_late_gain"].to_numpy(float)
    unconverged = np.nan_to_num(late, nan=-np.inf) > plateau_gain
    flag = (out["treatment"] == FIGURES.cross_tuned) & (out["verdict"] == "gain") & unconverged
    out["caveat"] = [CAVEAT.format(gain=100 * g, plateau=100 * plateau_gain) if f else ""
                     for f, g in zip(flag, late)]
    return out[EFFECT_COLUMNS].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# the answer


def deepest_without_loss(rows: pd.DataFrame) -> dict:
    """How deep the frozen transfer (AnB rows of ONE source and target; other treatments are ignored) goes,
    over the tested n in order (gaps allowed: n = 1, 3, 5 tested and a loss at 5 give 3):

    * ``no_loss``: the deepest n with no significant loss at any tested n' <= n (0 if the first tested n is a
      loss; the largest tested n if none is). A non-monotone profile stops at the first loss.
    * ``equivalent``: the deepest n with every tested n' <= n shown ``equivalent`` (or a ``gain``); 0 if the
      first is neither.
    * ``first_loss``: the first tested n with a loss (None if none); ``tested``: the tested n.

    A "no interval" row (fewer than two replicates) shows nothing: it stops ``equivalent`` but, being no
    loss shown, not ``no_loss`` (nor does an inconclusive row)."""
    r = rows if "treatment" not in rows else rows[rows["treatment"] == FIGURES.cross_frozen]
    r = r.sort_values("n")
    tested = [int(n) for n in r["n"]]
    no_loss, equivalent, first_loss, still_eq = 0, 0, None, True
    for n, v in zip(tested, r["verdict"]):
        if v == "loss":
            first_loss = n
            break
        no_loss = n
        still_eq = still_eq and v in ("equivalent", "gain")
        equivalent = n if still_eq else equivalent
    return {"no_loss": no_loss, "equivalent": equivalent, "first_loss": first_loss, "tested": tested}


def _points(est: float, lo: float, hi: float) -> str:
    """An effect in points with its interval (minus signs typeset)."""
    if not np.isfinite(est):
        return "–"
    s = f"{100 * est:+.1f}" + (f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if np.isfinite(lo) else " (no interval)")
    return s.replace("-", "\u2212")


def _ns(values) -> str:
    return ", ".join(str(int(n)) for n in values)


def _units_text(k: int, units: dict[int, str]) -> str:
    span = "unit 1" if k == 1 else f"units 1\u2013{k}"
    return span + (f" ({units[1]}\u2013{units[k]})" if k > 1 and 1 in units and k in units
                   else f" ({units[1]})" if k == 1 and 1 in units else "")


def _answer(g: pd.DataFrame, d: dict, gain: list, worse: list, caveat: bool) -> str:
    """The pair's answer in one plain sentence."""
    units = {int(n): u for n, u in zip(g["n"], g["unit"]) if isinstance(u, str) and u}
    if not d["tested"]:
        frozen = "frozen: not tested"
    elif d["first_loss"] is None:
        fr = g[g["treatment"] == FIGURES.cross_frozen].sort_values("estimate")
        w = fr.iloc[0]
        frozen = f"frozen: no tested n ({_ns(d['tested'])}) shows a significant loss"
        if np.isfinite(w.estimate) and w.estimate < 0:  # not shown is not absent: say how large it may be
            est = _points(w.estimate, w.ci_lo, w.ci_hi).replace(" [", " points [", 1)
            frozen += f", but the largest estimated loss ({est} at n = {int(w.n)}) is not resolved"
    else:
        f = g[(g["treatment"] == FIGURES.cross_frozen) & (g["n"] == d["first_loss"])].iloc[0]
        where = (f"{_units_text(d['no_loss'], units)} transfer without a significant loss" if d["no_loss"]
                 else "a significant loss already at the first tested n")
        est = _points(f.estimate, f.ci_lo, f.ci_hi).replace(" [", " points [", 1)
        frozen = f"frozen: {where} (first loss at n = {d['first_loss']}, {est})"
    eq = (f"shown equivalent to scratch up to n = {d['equivalent']}" if d["equivalent"]
          else "equivalence to scratch shown at no n") if d["tested"] else ""
    ft = g[g["treatment"] == FIGURES.cross_tuned]
    if ft.empty:
        tuned = "fine-tuned: not tested"
    else:
        parts = [f"better than scratch at n = {_ns(gain)}" if gain else "better than scratch at no tested n"]
        parts += [f"worse at n = {_ns(worse)}"] if worse else []
        tuned = "fine-tuned: " + ", ".join(parts)
        tuned += " (but the scratch nets were still improving: the gain may only reflect the short schedule)" \
            if caveat else ""
    return "; ".join(p for p in (frozen, eq, tuned) if p) + "."


def cross_summary(eff: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, target): how deep the frozen transfer goes (:func:`deepest_without_loss`), the n
    where fine-tuning beats or trails scratch, where random frozen units lose, and the ``answer`` in plain
    words. Lists of n are comma-separated strings. Columns :data:`SUMMARY_COLUMNS`."""
    rows = []
    for (source, target), g in eff.groupby(["source", "target"], sort=True):
        d = deepest_without_loss(g)
        ft, rnd = g[g["treatment"] == FIGURES.cross_tuned], g[g["treatment"] == FIGURES.cross_random]
        gain = sorted(ft.loc[ft["verdict"] == "gain", "n"])
        worse = sorted(ft.loc[ft["verdict"] == "loss", "n"])
        caveat = bool((ft["caveat"].fillna("") != "").any())
        f = g[(g["treatment"] == FIGURES.cross_frozen) & (g["n"] == d["first_loss"])]
        fl = f.iloc[0] if len(f) else None
        answer = _answer(g, d, gain, worse, caveat)
        rows.append({"source": source, "target": target, "tested": _ns(d["tested"]), "deepest_no_loss": d["no_loss"],
                     "deepest_equivalent": d["equivalent"], "first_loss": d["first_loss"],
                     "first_loss_estimate": fl.estimate if fl is not None else np.nan,
                     "first_loss_ci_lo": fl.ci_lo if fl is not None else np.nan,
                     "first_loss_ci_hi": fl.ci_hi if fl is not None else np.nan,
                     "finetune_tested": _ns(sorted(ft["n"])), "finetune_gain": _ns(gain), "finetune_worse": _ns(worse),
                     "random_loss": _ns(sorted(rnd.loc[rnd["verdict"] == "loss", "n"])), "caveat": caveat,
                     "answer": f"{source} \u2192 {target}: {answer}"})
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    out["first_loss"] = out["first_loss"].astype("Int64")
    return out


def _p(v) -> str:
    return "–" if not np.isfinite(v) else ("<0.001" if v < 0.001 else f"{v:.3f}")


def _plain(label: str) -> str:
    return label.replace("$^+$", "+")


def adequacy(eff: pd.DataFrame, sources: pd.DataFrame | None = None, plateau_gain: float = PLATEAU_GAIN) -> list[str]:
    """Whether the nets were trained enough for the claims read from them, said in words: a target whose base
    nets were still improving (median late gain above ``plateau_gain``) is compared with fine-tuned nets
    that start trained; a source still improving gives the features of an unfinished net. ``sources``: one
    row per source trained here (columns source, top1, late_gain); a checkpoint's history is unknown."""
    out = []
    for target, g in eff.groupby("target", sort=True):
        gain = float(g["base_late_gain"].dropna().median()) if g["base_late_gain"].notna().any() else np.nan
        if np.isfinite(gain) and gain > plateau_gain:
            out.append(f"**{target}: its base nets were not at a plateau** (median top-1 gain over the last quarter "
                       f"of their schedule {100 * gain:+.1f} points, above {100 * plateau_gain:.1f}): a fine-tuned "
                       "net starts trained and is compared with a scratch net that had not finished, so its rows "
                       "answer \"at this schedule\", not \"at convergence\".")
    for _, r in (sources if sources is not None else pd.DataFrame()).iterrows():
        if np.isfinite(r["late_gain"]) and r["late_gain"] > plateau_gain:
            out.append(f"**The source {r['source']} was not at a plateau** (top-1 {r['top1']:.3f} on its own data, "
                       f"{100 * r['late_gain']:+.1f} points over its last quarter): its units are those of an "
                       "unfinished net, and a converged one may transfer differently.")
    return out


def cross_markdown(eff: pd.DataFrame, summary: pd.DataFrame, alpha: float = ALPHA,
                   sources: pd.DataFrame | None = None, plateau_gain: float = PLATEAU_GAIN) -> str:
    """The cross experiment as Markdown: each pair's answer, whether the nets were trained enough for it
    (:func:`adequacy`), one table per pair, and how to read them."""
    margin = float(eff["margin"].dropna().iloc[0]) if len(eff) and eff["margin"].notna().any() else MARGIN
    lines = ["# How far features transfer between datasets\n"]
    lines += [f"- {a}" for a in summary["answer"]] + [""]
    lines += [f"- {a}" for a in adequacy(eff, sources, plateau_gain)] + [""]
    for (source, target), g in eff.groupby(["source", "target"], sort=True):
        lines += [f"## {source} \u2192 {target}\n",
                  "| n | treatment | top-1 − base (points, 95% CI) | replicates | p adj. (diff / equiv.) | verdict "
                  "| caveat |", "|---|---|---|---|---|---|---|"]
        notes = []
        for t in CROSS_TREATMENTS:
            for _, r in g[g["treatment"] == t].sort_values("n").iterrows():
                n = f"{r['n']} ({r['unit']})" if isinstance(r["unit"], str) and r["unit"] else f"{r['n']}"
                cav = r["caveat"] if isinstance(r["caveat"], str) else ""
                if cav and cav not in notes:
                    notes.append(cav)
                mark = DAGGER * (notes.index(cav) + 1) if cav else ""
                lines.append(f"| {n} | {_plain(r['label'])} | {_points(r['estimate'], r['ci_lo'], r['ci_hi'])} | "
                             f"{r['replicates']} | {_p(r['p_adj'])} / {_p(r['p_eq_adj'])} | **{r['verdict']}** | "
                             f"{mark} |")
        lines += [""] + [DAGGER * (i + 1) + f" {c[:1].upper() + c[1:]}." for i, c in enumerate(notes)] + [""]
    lines += ["## How to read\n",
              "Each row is a treatment's validation top-1 on the target minus that of the target's own net "
              "trained from scratch (base), paired by seed replicate (the replicate is the unit: t over "
              "replicates, replicates − 1 degrees of freedom; the base and random-filter nets are shared by "
              "every source). Every row tests a difference (two-sided) and an equivalence within "
              f"±{100 * margin:.1f} points (TOST); the p-values of all rows of this page, both tests, are "
              f"adjusted together by Holm's step-down (Shaffer's constraint), verdicts at α = {alpha}. "
              "`loss`/`gain`: a significant difference; `equivalent`: within the margin; `inconclusive`: "
              "neither shown; `no interval`: fewer than two paired replicates. \"Without a significant loss\" "
              "is not \"equivalent\": only the latter shows the loss is small.\n"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# figures


def _means(pr: pd.DataFrame, treatment: str) -> pd.DataFrame:
    """Mean top-1 over replicates per n (one value per replicate), with its 95% CI half-width."""
    g = pr[pr["treatment"] == treatment].groupby(["n", "replicate"])["top1"].mean().groupby(level=0)
    m = g.agg(["mean", "std", "count"]).reset_index()
    m["half"] = ci_halfwidth(m["std"], m["count"])
    return m


def _ticks(ax, ns: list, units: dict[int, str], fontsize: int) -> None:
    """x ticks at the tested n, labelled "n: unit" where the unit names are known."""
    ns = [int(n) for n in ns]
    if not ns:
        return
    ax.set_xticks(ns)
    ax.set_xlim(min(ns) - 0.6, max(ns) + 0.6)
    if units:
        turn = len(ns) > 5 or max(len(units.get(n, "")) for n in ns) > 8
        ax.set_xticklabels([f"{n}: {units[n]}" if n in units else str(n) for n in ns], rotation=35 if turn else 0,
                           fontsize=fontsize - 1, ha="right" if turn else "center")


def _profile_axis(ax, pr: pd.DataFrame, eff_pair: pd.DataFrame, units: dict[int, str], fontsize: int = 11) -> list:
    """Top-1 against n for AnB, AnB+ and random (means over replicates, 95% CI), the base's mean and CI band,
    and the first significant AnB loss; returns the legend handles."""
    handles = []
    base = _means(pr.assign(n=0), REFERENCE)
    if len(base) and np.isfinite(base["mean"].iloc[0]):
        b, t = base.iloc[0], TREATMENT[REFERENCE]
        h = ax.axhline(b["mean"], color=t.dark, ls="--", lw=1.5, zorder=2, label="base (scratch) mean, 95% CI")
        if np.isfinite(b["half"]):
            ax.axhspan(b["mean"] - b["half"], b["mean"] + b["half"], color="0.85", lw=0, zorder=1)
        handles.append(h)
    for key, dx in zip(CROSS_TREATMENTS, (-0.08, 0.08, 0.0)):
        m, t = _means(pr[pr["n"] > 0], key), TREATMENT[key]
        if m.empty:
            continue
        h = ax.errorbar(m["n"] + dx, m["mean"], yerr=np.nan_to_num(m["half"].to_numpy(float)), color=t.colour,
                        ecolor=t.mid, marker=t.line_marker, ms=8, mec="k", mew=0.7, lw=2, capsize=3, zorder=3,
                        label=t.label.format(t=""))
        handles.append(h)
    d = deepest_without_loss(eff_pair) if len(eff_pair) else {"first_loss": None}
    if d["first_loss"] is not None:
        handles.append(ax.axvline(d["first_loss"], color=TREATMENT[FIGURES.cross_frozen].dark, ls=":", lw=1.5,
                                  label="first significant AnB loss"))
    _ticks(ax, sorted(pr.loc[pr["n"] > 0, "n"].unique()), units, fontsize)
    ax.set_xlabel("unit n: units 1..n copied from the source", fontsize=fontsize)
    ax.set_ylabel("top-1 on the target (mean, 95% CI over replicates)", fontsize=fontsize)
    return handles


def _similarity_axis(ax, sim: pd.DataFrame, units: dict[int, str], fontsize: int = 11) -> list:
    """CKA (source vs the target's base nets) on the left axis, the linear probes' top-1 on a twin axis; a
    ViT's kinds of features as line styles. Returns the legend handles."""
    sim = sim if "features" in sim else sim.assign(features="output")
    kinds = list(dict.fromkeys(sim["features"]))
    styles = dict(zip(kinds, ["-", "--", ":", "-."]))
    twin, handles = ax.twinx(), []
    for k in kinds:
        s = sim[sim["features"] == k].sort_values("n")
        tag = f" ({k})" if len(kinds) > 1 else ""
        handles += ax.plot(s["n"], s["cka"], color="k", ls=styles[k], marker="o", ms=5,
                           label=f"CKA: source vs target's base nets{tag}")
        handles += twin.plot(s["n"], s["probe_top1"], color="#2b83ba", ls=styles[k], marker="s", ms=5,
                             label=f"linear probe on the source's features{tag}")
        if "own_probe_top1" in s and s["own_probe_top1"].notna().any():
            handles += twin.plot(s["n"], s["own_probe_top1"], color="#2b83ba", ls=styles[k], lw=0.8, alpha=0.6,
                                 label=f"probe on the target's own base net{tag}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("linear CKA", fontsize=fontsize)
    twin.set_ylabel("linear probe top-1 (held out)", color="#2b83ba", fontsize=fontsize)
    twin.margins(y=0.08)
    _ticks(ax, sorted(sim["n"].unique()), units, fontsize)
    ax.set_xlabel("unit n", fontsize=fontsize)
    ax.set_title("Similarity of the source's features to the target", fontsize=fontsize + 1)
    return handles


def _pair_sim(similarity: pd.DataFrame | None, source: str, target: str) -> pd.DataFrame | None:
    if similarity is None or similarity.empty:
        return None
    s = similarity
    if "source" in s and "target" in s:
        s = s[(s["source"].astype(str) == source) & (s["target"].astype(str) == target)]
    return s if len(s) else None


def _depth_text(d: dict, short: bool = False) -> str:
    if not d["tested"]:
        return "frozen transfer not tested"
    if not d["no_loss"]:
        return f"a significant frozen loss at n = {d['tested'][0]}" if not short else f"loss at n = {d['tested'][0]}"
    return (f"no significant frozen loss up to n = {d['no_loss']}" if not short
            else f"no significant loss to n = {d['no_loss']}")


def profile_figure(runs: pd.DataFrame, eff: pd.DataFrame, similarity: pd.DataFrame | None, source: str, target: str,
                   out_pdf: str | Path) -> tuple[Path, Path]:
    """The transferability profile of one pair: top-1 against n for the frozen, fine-tuned and random nets
    beside the base's level (left) and, when ``similarity`` has the pair, CKA and linear-probe top-1 per unit
    (right). Writes a PDF and a PNG copy; returns both paths."""
    pr = pair_runs(runs, source, target)
    sim = _pair_sim(similarity, source, target)
    units = _unit_names(pr, sim)
    ep = eff[(eff["source"] == source) & (eff["target"] == target)] if len(eff) else eff
    d = deepest_without_loss(ep) if len(ep) else {"tested": [], "no_loss": 0}
    with plt.style.context("classic"), plt.rc_context({**RC, "font.size": 11}):
        fig, axes = plt.subplots(1, 2 if sim is not None else 1, figsize=(15 if sim is not None else 8, 6.5),
                                 squeeze=False)
        fig.patch.set_facecolor("w")
        left = axes[0, 0]
        h = _profile_axis(left, pr, ep, units)
        left.set_title("Transferred units against scratch", fontsize=12)
        h2 = _similarity_axis(axes[0, 1], sim, units) if sim is not None else []
        fig.suptitle(f"{source} \u2192 {target}: {_depth_text(d)}", fontsize=14)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        _legend_below(left, h, [x.get_label() for x in h], ncol=2, fontsize=9, frameon=False)
        if h2:
            _legend_below(axes[0, 1], h2, [x.get_label() for x in h2], ncol=1, fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        return _save(fig, out_pdf)


def grid_figure(runs: pd.DataFrame, eff: pd.DataFrame, out_pdf: str | Path) -> tuple[Path, Path]:
    """Every pair's profile (the left panel of :func:`profile_figure`) as small multiples: rows sources,
    columns targets, one y range for all; a pair not run is left blank. Writes a PDF and a PNG copy."""
    ps = pairs(runs)
    sources, targets = sorted({s for s, _ in ps}), sorted({t for _, t in ps})
    with plt.style.context("classic"), plt.rc_context({**RC, "font.size": 10}):
        fig, axes = plt.subplots(len(sources), len(targets), figsize=(4.8 * len(targets), 3.8 * len(sources) + 1),
                                 squeeze=False, sharey=True)
        fig.patch.set_facecolor("w")
        handles = {}
        for i, s in enumerate(sources):
            for j, t in enumerate(targets):
                ax = axes[i, j]
                if (s, t) not in ps:
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", style="italic")
                    continue
                pr = pair_runs(runs, s, t)
                ep = eff[(eff["source"] == s) & (eff["target"] == t)] if len(eff) else eff
                for h in _profile_axis(ax, pr, ep, _unit_names(pr), fontsize=9):
                    handles.setdefault(h.get_label(), h)
                d = deepest_without_loss(ep) if len(ep) else {"tested": [], "no_loss": 0}
                ax.set_title(f"{s} \u2192 {t}: {_depth_text(d, short=True)}", fontsize=10)
                if j:
                    ax.set_ylabel("")
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(5, len(handles)) or 1,
                   fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return _save(fig, out_pdf)
