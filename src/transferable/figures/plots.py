"""Figures 2 and 3 of the paper, redrawn from the per-net runs frame (the schema of ``runs.csv``).

Styling follows the authors' notebook (classic matplotlib style, the same markers and colours); axis limits
come from the data, so a small demo whose accuracies differ from the paper's still fills the axes.  With
``paper=True`` the paper's published means are drawn as thin dashed lines: on the same axis when the two
ranges overlap, otherwise on a right-hand axis of their own (the shapes are then comparable, the levels not).

Each function writes a PDF and a PNG copy next to it (same stem), atomically, and returns both paths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scipy import stats  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from ..paths import LAYER_NAMES, TREATMENT, TREATMENT_TABLE  # noqa: E402
from . import effects as fx  # noqa: E402
from .effects import CONFIDENCE  # noqa: E402
from .paper import paper_line_means  # noqa: E402
from .spec import CONTROL, FIGURES, REFERENCE  # noqa: E402
from .tables import (  # noqa: E402
    FIG2_TREATMENTS,
    base_nets,
    line_means,
    natman_means,
    random_filter_means,
    relative_top1,
)

# marker encoding of Figure 2 (paper.md section 8): colour, marker, size and x offset from the treatment
# table; here the legend. A black "+" on top marks a net trained on from copied weights.
MARKERS = {t.key: dict(color=t.colour, marker=t.marker, ms=t.fig2[0], dx=t.fig2[1],
                       plus=t.fine_tuned, label=t.label.format(t="B") + ("" if t.paper else " (control)"))
           for t in TREATMENT_TABLE if t.fig2}
# darker shades of the light colours, for error bars and the thin dashed paper lines
DARK = {t.key: t.dark for t in TREATMENT_TABLE}
# Figure 3's panels (and their series in the bottom panel), by split kind: line colour, dark shade, marker
NATMAN_COLOR, NATMAN_DARK = "#ff8800", "#cc6600"
RANDOM_COLOR = "y"
XLABEL = "Layer $n$ at which network is chopped and retrained"
PAPER_DASH = dict(ls="--", lw=1.2, dashes=(5, 3))
RC = {"font.size": 16, "pdf.fonttype": 42, "ps.fonttype": 42, "legend.numpoints": 1}


# fontTools complains about the head-table dates of some system DejaVu builds while embedding (type 42)
logging.getLogger("fontTools.ttLib.tables._h_e_a_d").setLevel(logging.ERROR)

# ---------------------------------------------------------------------------------------------------------
# helpers


def _save(fig, out_pdf: str | Path, dpi: int = 80) -> tuple[Path, Path]:
    """Save ``fig`` as PDF and as a PNG with the same stem, each written atomically."""
    out_pdf = Path(out_pdf)
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    out_png = out_pdf.with_suffix(".png")
    for path, fmt in ((out_pdf, "pdf"), (out_png, "png")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
    plt.close(fig)
    return out_pdf, out_png


def _limits(values, pad: float = 0.06, min_span: float = 0.01) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, min_span)
    return lo - pad * span, hi + pad * span


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _paper_axis(ax, ours: list[float], theirs: list[float], label: str = "paper top-1 (thin dashed)"):
    """The axis the paper's values go on: ``ax`` if their range overlaps ours, else a twin on the right."""
    if not ours or _overlap(_limits(ours, pad=0.25), _limits(theirs, pad=0.25)):
        return ax
    twin = ax.twinx()
    twin.set_ylim(*_limits(theirs, pad=0.12))
    twin.set_ylabel(label, color="0.35", fontsize=12)
    twin.tick_params(axis="y", colors="0.35", labelsize=11)
    return twin


def _note_missing(ax, missing: list[str], where: str = "upper right") -> None:
    if not missing:
        return
    x, ha = (0.99, "right") if where.endswith("right") else (0.01, "left")
    y, va = (0.98, "top") if where.startswith("upper") else (0.02, "bottom")
    ax.text(x, y, "not in these runs: " + ", ".join(missing), transform=ax.transAxes, ha=ha, va=va,
            fontsize=11, style="italic", color="0.3")


def _series(lm: pd.DataFrame, treatment: str) -> pd.DataFrame:
    return lm[lm["treatment"] == treatment].sort_values("n")


def ci_halfwidth(std, count, confidence: float = CONFIDENCE) -> np.ndarray:
    """Half-width of the t interval of a mean of ``count`` independent nets with sample sd ``std``."""
    std = np.asarray(std, dtype=float)
    count = np.asarray(count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = stats.t.ppf(0.5 + confidence / 2, np.where(count > 1, count - 1, np.nan))
        return q * std / np.sqrt(count)


def _errorbars(ax, x, mean, std, count, color, dx: float = 0.0) -> None:
    """95% confidence intervals of line means (t over the nets at each point; none for a single net)."""
    half = ci_halfwidth(std, count)
    ok = np.isfinite(half)
    if ok.any():
        ax.errorbar(np.asarray(x, dtype=float)[ok] + dx, np.asarray(mean)[ok], yerr=half[ok],
                    fmt="none", ecolor=color, elinewidth=1.2, capsize=4, capthick=1.2, zorder=4)


CLIP_NOTE = "\u25b2\u25bc interval runs off the axis"


def mark_clipped(ax, x, lo, hi, color) -> int:
    """Where an interval [lo, hi] at x runs past the axis's current y limits, a triangle at the edge it crosses
    (pointing out of the axis), so that a cut bar is never mistaken for a short one. Call after the limits
    are final; returns how many ends were marked."""
    y0, y1 = ax.get_ylim()
    pad = 0.015 * (y1 - y0)
    marked = 0
    for xi, a, b in zip(np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(lo, float)),
                        np.atleast_1d(np.asarray(hi, float))):
        if np.isfinite(a) and a < y0:
            ax.plot([xi], [y0 + pad], marker="v", ms=9, color=color, mec="k", mew=0.6, clip_on=False, zorder=7)
            marked += 1
        if np.isfinite(b) and b > y1:
            ax.plot([xi], [y1 - pad], marker="^", ms=9, color=color, mec="k", mew=0.6, clip_on=False, zorder=7)
            marked += 1
    return marked


def note_clipped(ax, marked: int, where: tuple[float, float] = (0.01, 0.99)) -> None:
    """Say what the triangles of :func:`mark_clipped` mean, once per axis that has any."""
    if marked:
        ax.text(*where, CLIP_NOTE, transform=ax.transAxes, ha="left", va="top", fontsize=10, color="0.25",
                zorder=8)


def _at(s: pd.DataFrame, n: int) -> float:
    v = s.loc[s["n"] == n, "mean"]
    return float(v.iloc[0]) if len(v) else np.nan


# ---------------------------------------------------------------------------------------------------------
# Figure 2


def _fig2_top(ax, df: pd.DataFrame, nmax: int) -> list[float]:
    r = df[df["split_kind"] == "random"]
    handles, labels, ys = [], [], []
    for t, st in MARKERS.items():
        g = base_nets(df) if t == REFERENCE else r[r["treatment"] == t]
        if g.empty:
            continue
        x = g["n"].to_numpy(float) * 0 if TREATMENT[t].per_cell else g["n"].to_numpy(float)
        x = x + st["dx"]
        y = g["top1"].to_numpy(float)
        ys += list(y)
        h = ax.plot(x, y, ls="none", marker=st["marker"], mfc=st["color"], mec="k", ms=st["ms"],
                    mew=2 if t == REFERENCE else 1, zorder=3)[0]
        if st["plus"]:
            p = ax.plot(x, y, ls="none", marker="+", color="k", mew=2, ms=8, zorder=4)[0]
            h = (h, p)
        handles.append(h)
        labels.append(st["label"])
    if handles:
        ax.legend(handles, labels, loc="lower left", numpoints=1, fontsize=14)
    ax.set_ylabel("Top-1 accuracy (higher is better)")
    ax.set_xlim(-0.4, nmax + 0.5)  # room for the AnB+ markers at n + 0.27
    ax.set_ylim(*_limits(ys, pad=0.08))
    _xticks(ax, nmax)
    missing = [t for t in FIG2_TREATMENTS if t not in set(r["treatment"])]
    if r[r["treatment"] == REFERENCE].empty:
        missing.insert(0, REFERENCE)
    _note_missing(ax, missing)
    return ys


def check_readings(claims=fx.CLAIMS, figures=FIGURES) -> None:
    """Every claim a reading of figures.yaml names is one of the claims file's (a misspelt key would leave the
    reading unresolved for ever)."""
    known = {c.key for c in claims}
    for r in figures.readings:
        if unknown := [c for c in r.claims if c not in known]:
            raise ValueError(f"figures.yaml: figure2 reading {r.label}: claims {unknown} are not in paper_claims.yaml")


check_readings()


def reading_status(eff: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Each numbered reading's (verdict, why): ``reproduced`` only when every claim behind it is; otherwise
    the first claim's verdict that is not (with its reason, for ``confounded``). Claim rows of ``eff``."""
    out = {}
    for reading in FIGURES.readings:
        verdict, why = "reproduced", ""
        for claim in reading.claims:
            rows = eff[(eff["claim"] == claim) & (eff["scope"] == "claim")]
            v = rows.iloc[0]["verdict"] if len(rows) else "no interval"
            if v != "reproduced":
                verdict, why = v, (str(rows.iloc[0].get("reason", "")) if len(rows) else "")
                break
        out[reading.label] = (verdict, why)
    return out


def _reading_point(reading, s: dict, bm: float) -> tuple[float, float] | None:
    """The point of its own line a reading points at (figures.yaml): its lowest point, its deepest n, or the
    n where it leads the ``above`` lines most (their maximum; the base mean ``bm`` where none has a point)."""
    line = s[reading.line]
    line = line[line["n"] > 0]
    if line.empty:
        return None
    if reading.point == "furthest_above":
        others = pd.concat([s[t][s[t]["n"] > 0] for t in reading.above])
        top = others.groupby("n")["mean"].max() if len(others) else pd.Series(dtype=float)
        lead = line.set_index("n")["mean"] - top.reindex(line["n"]).fillna(bm).to_numpy()
        n = int(lead.idxmax())
    elif reading.point == "lowest":
        n = int(line.loc[line["mean"].idxmin(), "n"])
    else:
        n = int(line["n"].max())
    return float(n), float(line.loc[line["n"] == n, "mean"].iloc[0])


def _interpretation_texts(ax, lm: pd.DataFrame, eff: pd.DataFrame) -> None:
    """The paper's four numbered readings where the replicates resolve them (every claim behind the reading
    ``reproduced`` in ``eff``), each with an arrow to a point of its own line; the others are listed in one
    box, with their verdict (not resolved, contradicted, confounded)."""
    base = _series(lm, REFERENCE)
    bm = float(base["mean"].iloc[0]) if len(base) else np.nan
    s = {t: _series(lm, t) for t in FIG2_TREATMENTS}
    status = reading_status(eff)
    notes = []
    for reading in FIGURES.readings:
        label, opposite = reading.label, reading.opposite
        point = _reading_point(reading, s, bm)
        if point is None:
            continue
        verdict, _ = status[label]
        if verdict == "reproduced":
            x, y, ha, va = reading.spot
            ax.annotate(reading.text, xy=point, xytext=(x, y), textcoords="axes fraction", ha=ha, va=va,
                        fontsize=15, zorder=6, arrowprops=dict(arrowstyle="->", color="0.25", lw=1.2,
                                                               shrinkA=2, shrinkB=6))
            continue
        rows = eff[(eff["claim"] == reading.claims[0]) & (eff["scope"] == "claim")]
        what = reading.wording.format(layers=rows.iloc[0]["layers"] if len(rows) else "?")
        if verdict == "contradicted":
            notes.append(f"{label}: contradicted here ({opposite})")
        elif verdict == "confounded":
            notes.append(f"{label}: {what}: confounded (extra training; effects.md)")
        elif verdict == "equivalent":
            notes.append(f"{label}: {what}: no effect beyond the margin here")
        else:
            notes.append(f"{label}: {what}: {verdict} at this scale")
    if notes:
        ax.text(0.99, 0.975, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=11,
                style="italic", color="0.25", bbox=dict(boxstyle="round", fc="w", ec="0.6", alpha=0.9), zorder=6)


def unit_interval(df: pd.DataFrame, treatment: str, n: int, confidence: float = CONFIDENCE) -> fx.Estimate:
    """Mean top-1 of the random-split nets of ``treatment`` at ``n`` (the base nets at n = 0) with its
    interval over units (a split: its halves and replicates inside), as effects.csv counts them."""
    r = df[df["split_kind"] == "random"]
    g = base_nets(df) if treatment == REFERENCE else r[(r["treatment"] == treatment) & (r["n"] == n)]
    units = [fx.unit_of(sp, "random") for sp in g["split"]]
    cells = (g["split"].astype(str) + "/" + g["target_half"].astype(str)).to_numpy()
    return fx.one_sample(fx.unit_values(g["top1"], units, cells), len(g), "t over splits", confidence)


# error bars of the fine-tuned lines: their own (mid-tone) colours, dashed, never the frozen lines' dark ones
BAR_COLOURS = {t.key: t.mid for t in TREATMENT_TABLE}
LINE_MARKERS = {t.key: t.line_marker for t in TREATMENT_TABLE}


def _fig2_bars(df: pd.DataFrame, s: dict, bm: float, ctl) -> list[tuple]:
    """The 95% intervals of Figure 2's means: (x, mean, lo, hi, colour, dashed, units) per point."""
    bars = []
    for t in FIG2_TREATMENTS:
        for n in s[t].loc[s[t]["n"] > 0, "n"]:
            e = unit_interval(df, t, int(n))
            if np.isfinite(e.ci_lo):
                bars.append((n + MARKERS[t]["dx"] / 3, e.estimate, e.ci_lo, e.ci_hi, BAR_COLOURS[t],
                             TREATMENT[t].fine_tuned, e.units))
    if np.isfinite(bm):
        e = unit_interval(df, REFERENCE, 0)
        if np.isfinite(e.ci_lo):
            bars.append((0.0, e.estimate, e.ci_lo, e.ci_hi, "k", False, e.units))
    if ctl is not None and np.isfinite(ctl.ci_lo):
        bars.append((0.08, ctl.estimate, ctl.ci_lo, ctl.ci_hi, BAR_COLOURS[CONTROL], True, ctl.units))
    return bars


def _fig2_paper_lines(ax, ys: list, nmax: int, handles: list, labels: list) -> None:
    """The paper's means, dashed, on this axis or (when they would squash ours) a right-hand one."""
    p = paper_line_means()
    p = p[(p["panel"] == "fig2") & (p["n"] <= nmax)]
    pax = _paper_axis(ax, ys, list(p["top1"]))
    if pax is ax:
        lo, hi = _limits(ys + list(p["top1"]), pad=0.04)
        dy = hi - lo
        ax.set_ylim(lo - 0.22 * dy, hi + 0.30 * dy)
    for t in FIG2_TREATMENTS:
        g = p[p["series"] == t]
        pax.plot(g["n"], g["top1"], color=DARK[t], zorder=2, **PAPER_DASH)
    handles.append(plt.Line2D([], [], color="0.3", **PAPER_DASH))
    labels.append("paper's means" + ("" if pax is ax else " (right axis)"))


def _fig2_bottom(ax, df: pd.DataFrame, nmax: int, paper: bool, eff: pd.DataFrame) -> None:
    lm = line_means(df)
    base = _series(lm, REFERENCE)
    bm = float(base["mean"].iloc[0]) if len(base) else np.nan
    s = {t: _series(lm, t) for t in FIG2_TREATMENTS}
    ctl = unit_interval(df, CONTROL, 0) if (df["treatment"] == CONTROL).any() else None
    bars = _fig2_bars(df, s, bm, ctl)
    # the axis fits the lines and the intervals over 3 units or more; wider ones are marked where cut
    ys = list(lm["mean"]) + [v for b in bars if b[6] >= 3 for v in b[2:4]]
    if ctl is not None and np.isfinite(ctl.estimate):
        ys.append(ctl.estimate)

    # fills, in the paper's order (drawn first so the lines sit on top)
    for fill in FIGURES.fills:
        color, lo_t = fill.colour, fill.lower
        hi = s.get(fill.upper)
        if hi is None or hi.empty:
            continue
        if lo_t == REFERENCE:  # the base nets: one level at every n
            if not np.isfinite(bm):
                continue
            ax.fill_between(hi["n"], bm, hi["mean"], color=color, lw=0, zorder=1)
        else:
            common = s[lo_t].merge(hi, on="n", suffixes=("_lo", "_hi"))
            if len(common):
                ax.fill_between(common["n"], common["mean_lo"], common["mean_hi"], color=color, lw=0, zorder=1)

    handles, labels = [], []
    if np.isfinite(bm):
        h = ax.plot([0, nmax], [bm, bm], "k--", lw=1.5, zorder=2)[0]
        handles.append(h)
        labels.append("baseB mean")
    if ctl is not None:  # the control base+: the level a net trained on as long reaches without transfer
        h = ax.plot([0, nmax], [ctl.estimate] * 2, ls=":", color=BAR_COLOURS[CONTROL], lw=2, zorder=2)[0]
        handles.append(h)
        labels.append("baseB$^+$ mean (control)")
    for t in FIG2_TREATMENTS:
        g = s[t]
        if g.empty:
            continue
        nz = g["n"].to_numpy() > 0
        h = ax.plot(g["n"], g["mean"], color=MARKERS[t]["color"], lw=2.5 if TREATMENT[t].fine_tuned else 2, zorder=3,
                    marker=LINE_MARKERS[t], ms=9, mfc=MARKERS[t]["color"], mec="k", mew=0.8,
                    markevery=[int(i) for i in np.flatnonzero(nz)])[0]
        handles.append(h)
        labels.append(MARKERS[t]["label"])
    for x, m, lo, hi, colour, dashed, _ in bars:
        _, _, cols = ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="none", ecolor=colour, elinewidth=1.4,
                                 capsize=4, capthick=1.2, zorder=4)
        if dashed:
            for c in cols:
                c.set_linestyle((0, (3, 2)))
    if np.isfinite(bm):
        ax.plot([0], [bm], "o", mfc="w", mec="k", mew=2, ms=14, zorder=5)

    lo, hi = _limits(ys, pad=0.04)
    dy = hi - lo
    ax.set_ylim(lo - 0.22 * dy, hi + 0.30 * dy)  # foot- and headroom for the readings and their notes

    if paper:
        _fig2_paper_lines(ax, ys, nmax, handles, labels)

    marked = sum(mark_clipped(ax, [b[0]], [b[2]], [b[3]], b[4]) for b in bars)
    note_clipped(ax, marked, where=(0.01, 0.83))
    _interpretation_texts(ax, lm, eff)
    ax.set_xlim(-0.2, nmax + 0.3)
    _xticks(ax, nmax)
    ax.set_xlabel(XLABEL, fontsize=16)
    ax.set_ylabel("Top-1, mean over nets (95% CI over splits)")
    if len(handles):
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.10), fontsize=12,
                  ncol=min(len(handles), 6), frameon=False)
    if lm.empty:
        ax.text(0.5, 0.5, "no random-split nets in these runs", transform=ax.transAxes, ha="center")


_UNITS: list = [None]  # the unit names of the figure being drawn (None: CaffeNet's layers, ticks 0..7)


def _xticks(ax, nmax: int) -> None:
    """Ticks at n = 0..nmax; for a net other than CaffeNet, labelled with its unit names."""
    ax.set_xticks(range(0, nmax + 1))
    units = _UNITS[0]
    if units is not None and tuple(units) != tuple(LAYER_NAMES):
        ax.set_xticklabels(["0", *list(units)[:nmax]], rotation=40, ha="right", fontsize=10)


def _nmax(df: pd.DataFrame, default: int = 7) -> int:
    n = df["n"].max() if len(df) else np.nan
    return int(n) if pd.notna(n) and n > 0 else default


def fig2(runs_df: pd.DataFrame, out_pdf: str | Path, paper: bool = True, units=None,
         eff: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Figure 2: every random-split net (top) and the line means with the paper's readings (bottom).

    Writes ``out_pdf`` and a PNG with the same stem; returns both paths.  Treatments absent from
    ``runs_df`` are left out and named in the top panel. ``units``: the net's unit names (x tick labels;
    None: CaffeNet's layers). ``eff``: effects.csv's frame, whose verdicts decide which readings are drawn
    (None: computed from ``runs_df`` with the default verdict settings).
    """
    _UNITS[0] = units
    if eff is None:
        eff = fx.effects(runs_df, per_layer=False, nmax=len(units or LAYER_NAMES))
    r = runs_df[runs_df["split_kind"] == "random"]
    nmax = _nmax(r)
    with plt.style.context("classic"), plt.rc_context(RC):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(15, 16))
        _fig2_top(top, runs_df, nmax)
        _fig2_bottom(bottom, runs_df, nmax, paper, eff)
        fig.tight_layout()
        return _save(fig, out_pdf)


# ---------------------------------------------------------------------------------------------------------
# Figure 3


def natman_title(df: pd.DataFrame) -> str:
    """The dissimilar-halves panel's title, from the split's own family names ("Man-made/Natural split" for
    the paper's and the demo's families)."""
    nm = df[(df["split_kind"] == "natman") & (df["target_family"] != "")].sort_values("target_half")
    fams = list(dict.fromkeys(nm["target_family"]))  # in half order: A (the paper's man-made) first
    return "/".join(f[:1].upper() + f[1:] for f in fams) + " split" if fams else "Dissimilar halves"


def _text_pts(fig, s: str, fontsize: float) -> tuple[float, float]:
    """Width and height, in points, of ``s`` drawn at ``fontsize`` (measured by the figure's renderer)."""
    t = fig.text(0, 0, s, fontsize=fontsize)
    bb = t.get_window_extent(fig.canvas.get_renderer())
    t.remove()
    return bb.width * 72 / fig.dpi, bb.height * 72 / fig.dpi


def _pts_per_unit(ax, ylim: tuple[float, float] | None = None) -> tuple[float, float]:
    """Points per data unit along x and y for the axis's current size (``ylim``: y limits to assume)."""
    pos = ax.get_position()
    w, h = ax.figure.get_size_inches()
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim() if ylim is None else ylim
    return pos.width * w * 72 / max(x1 - x0, 1e-12), pos.height * h * 72 / max(y1 - y0, 1e-12)


def _free_spot(ax, text: str = CLIP_NOTE, fontsize: float = 10) -> tuple[float, float]:
    """Where (axes fraction, for :func:`note_clipped`'s left/top alignment) ``text`` covers the least of what
    is already drawn on ``ax``: markers (weighted most), lines and error bars (sampled along their segments)
    and texts. Tries along the top edge first, then the bottom, then just inside the rows of edge triangles."""
    fig = ax.figure
    r = fig.canvas.get_renderer()
    tw, th = _text_pts(fig, text, fontsize)
    pos = ax.get_position()
    fw, fh = fig.get_size_inches() * 72
    ex, ey = 1 / (pos.width * fw), 1 / (pos.height * fh)  # one point, in axes fraction
    w, h = tw * ex, th * ey
    pts, weights = [], []
    t = np.linspace(0, 1, 12)[:, None, None]

    def add(xy_display, weight):
        pts.append(xy_display)
        weights.append(np.full(len(xy_display), float(weight)))

    for line in ax.lines:
        xy = np.asarray(line.get_xydata(), float)
        xy = xy[np.isfinite(xy).all(axis=1)] if xy.ndim == 2 else np.empty((0, 2))
        if not len(xy):
            continue
        if line.get_marker() not in (None, "None", "none", "", " "):
            add(line.get_transform().transform(xy), 5)
        if len(xy) > 1 and line.get_linestyle() not in ("None", "none", " ", ""):
            add(line.get_transform().transform((xy[:-1] * (1 - t) + xy[1:] * t).reshape(-1, 2)), 1)
    for coll in ax.collections:
        for seg in getattr(coll, "get_segments", lambda: [])():
            seg = np.asarray(seg, float)
            if len(seg) > 1:
                add(coll.get_transform().transform((seg[:-1] * (1 - t) + seg[1:] * t).reshape(-1, 2)), 1)
    for txt in ax.texts:
        bb = txt.get_window_extent(r)
        gx, gy = np.meshgrid(np.linspace(bb.x0, bb.x1, 8), np.linspace(bb.y0, bb.y1, 3))
        add(np.column_stack([gx.ravel(), gy.ravel()]), 5)
    xy = ax.transAxes.inverted().transform(np.concatenate(pts)) if pts else np.empty((0, 2))
    wt = np.concatenate(weights) if weights else np.empty(0)
    # 6 points from the frame (clear of the inward ticks); a thing within 10 points (a marker and a gap) counts
    rows = (1 - 6 * ey, 6 * ey + h, 1 - 20 * ey, 20 * ey + h)
    xs = np.linspace(6 * ex, 1 - 6 * ex - w, 7)
    best, where = None, (float(xs[0]), rows[0])
    for y in rows:
        for x in xs:
            near = ((xy[:, 0] >= x - 10 * ex) & (xy[:, 0] <= x + w + 10 * ex) & (xy[:, 1] <= y + 10 * ey)
                    & (xy[:, 1] >= y - h - 10 * ey))
            cost = float(wt[near].sum())
            if best is None or cost < best:
                best, where = cost, (float(x), float(y))
            if cost == 0:
                return where
    return where


def _legend_below(ax, handles, labels, ncol: int, fontsize: float, **kw):
    """The legend under the axis's tick labels and x label (a fixed distance in points below the axes, so
    that it stays clear of them when tight_layout moves the axes), where it covers no data."""
    from matplotlib.transforms import ScaledTranslation

    fig = ax.figure
    bb = ax.xaxis.get_tightbbox(fig.canvas.get_renderer())
    gap = (max(ax.bbox.y0 - bb.y0, 0.0) if bb is not None else 0.0) * 72 / fig.dpi + 6
    trans = ax.transAxes + ScaledTranslation(0, -gap / 72, fig.dpi_scale_trans)
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=trans,
                     ncol=max(1, min(ncol, len(handles))), fontsize=fontsize, numpoints=1, **kw)


NATMAN_LABEL_FS = 12


def _natman_labels(ax, lines: dict, ylim: tuple[float, float], edge: float = 4) -> tuple[float, float]:
    """Write "<family> target" beside each family's own line, at the n where the lines are furthest apart:
    the upper line's label above it, the lower line's below it, each clear of both lines (and of their
    error bars that the axis fits) over the width of the text. ``lines``: family -> its points (n, mean,
    fitted half-width); ``edge``: points to keep between a label and the frame. Returns the y limits, widened
    where a label needs the room."""
    fams = list(lines)
    piv = pd.concat({f: g.set_index("n")["mean"] for f, g in lines.items()}, axis=1)
    common = piv.dropna()
    if len(fams) >= 2 and len(common):
        gap = common.max(axis=1) - common.min(axis=1)
        n_star = float(gap[gap >= gap.max() - 1e-9].index.max())  # the rightmost of the widest gaps
        order = list(common.loc[n_star].sort_values(ascending=False).index)
    else:  # one family (or families without a common n): at the right end, the first above, the last below
        n_star = float(piv.index.max())
        order = fams
    top, bottom = order[0], (order[-1] if len(order) > 1 else None)
    all_n = piv.index.to_numpy(float)
    xlo, xhi = ax.get_xlim()
    if n_star >= all_n.max():
        x, ha = min(n_star + 0.2, xhi - 0.02), "right"
    elif n_star <= all_n.min():
        x, ha = max(n_star - 0.2, xlo + 0.02), "left"
    else:
        x, ha = n_star, "center"
    texts = {f: f"{f} target" for f in fams}
    sizes = {f: _text_pts(ax.figure, texts[f], NATMAN_LABEL_FS) for f in fams}

    def envelope(span, sign, ppy):
        """The highest (sign +1) or lowest (-1) thing of any line over ``span``: line + marker, bar ends."""
        vals = []
        for g in lines.values():
            n, m, half = (g[c].to_numpy(float) for c in ("n", "mean", "half"))
            grid = np.linspace(max(span[0], n.min()), min(span[1], n.max()), 40)
            if span[1] >= n.min() and span[0] <= n.max():
                vals += list(np.interp(grid, n, m) + sign * 9 / ppy)  # the line and its markers (ms 14)
            at = (n >= span[0] - 0.15) & (n <= span[1] + 0.15)
            vals += list(m[at] + sign * (np.nan_to_num(half[at]) + 3 / ppy))  # the bars' caps
        vals = [v for v in vals if np.isfinite(v)]
        return (max(vals) if sign > 0 else min(vals)) if vals else np.nan

    lo, hi = ylim
    place = {}
    for _ in range(5):  # the room a label needs in data units depends on the limits it widens
        ppx, ppy = _pts_per_unit(ax, (lo, hi))
        new_lo, new_hi = ylim
        for fam, sign in ((top, 1), (bottom, -1)):
            if fam is None:
                continue
            w = sizes[fam][0] / ppx
            span = {"right": (x - w, x), "left": (x, x + w), "center": (x - w / 2, x + w / 2)}[ha]
            y = envelope(span, sign, ppy)
            place[fam] = (y, sign)
            if sign > 0:
                new_hi = max(new_hi, y + (sizes[fam][1] + edge) / ppy)
            else:
                new_lo = min(new_lo, y - (sizes[fam][1] + edge) / ppy)
        if np.isclose(new_lo, lo) and np.isclose(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    for fam, (y, sign) in place.items():
        if np.isfinite(y):
            ax.text(x, y, texts[fam], ha=ha, va="bottom" if sign > 0 else "top", fontsize=NATMAN_LABEL_FS,
                    zorder=6, bbox=dict(boxstyle="square,pad=0.1", fc="w", ec="none", alpha=0.7))
    for fam in [f for f in order[1:-1] if n_star in common.index]:  # more than two: the middle ones beside
        ax.annotate(texts[fam], (n_star, float(common.loc[n_star, fam])), xytext=(10, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=NATMAN_LABEL_FS, zorder=6)
    return lo, hi


def _fig3_natman(ax, df: pd.DataFrame, nmax: int, paper: bool) -> None:
    nm = natman_means(df)
    half = ci_halfwidth(nm["std"], nm["count"])
    # the axis fits the intervals of 3 nets or more; a 2-net interval (t on 1 df) may run off it (marked)
    nm = nm.assign(half=half, fitted=np.where(nm["count"] >= 3, np.nan_to_num(half), 0.0))
    ys = list(nm["mean"]) + list(nm["mean"] + nm["fitted"]) + list(nm["mean"] - nm["fitted"])
    ax.set_xlim(-0.3, nmax + 0.3)
    level = nm.groupby("target_family")["mean"].mean().sort_values(ascending=False)
    lines = {}
    for fam in level.index:
        g = nm[nm["target_family"] == fam].sort_values("n")
        ax.plot(g["n"], g["mean"], color=NATMAN_COLOR, lw=2, marker="h", ms=14, mfc=NATMAN_COLOR, mec="k",
                zorder=3)
        b = g[g["n"] == 0]
        ax.plot(b["n"], b["mean"], "o", mfc="w", mec="k", ms=14, mew=2, zorder=4)
        _errorbars(ax, g["n"], g["mean"], g["std"], g["count"], NATMAN_DARK)
        lines[fam] = g.assign(half=g["fitted"])[["n", "mean", "half"]]
    lo, hi = _limits(ys, pad=0.1)
    if paper:
        p = paper_line_means()
        p = p[(p["panel"] == "fig3_natman") & p["series"].isin(["natural", "man-made"]) & (p["n"] <= nmax)]
        pax = _paper_axis(ax, ys, list(p["top1"]), label="paper (dashed)")
        if pax is ax:
            lo, hi = _limits(ys + list(p["top1"]), pad=0.1)
        for fam in ("natural", "man-made"):
            g = p[p["series"] == fam]
            pax.plot(g["n"], g["top1"], color=NATMAN_DARK, zorder=2, **PAPER_DASH)
    ax.set_ylim(lo, hi)
    if lines:  # clear of the frame, and of the triangles that mark_clipped may put at it
        cut = bool((np.isfinite(nm["half"]) & (nm["count"] < 3)).any())
        ax.set_ylim(*_natman_labels(ax, lines, (lo, hi), edge=16 if cut else 4))
    marked = mark_clipped(ax, nm["n"], nm["mean"] - nm["half"], nm["mean"] + nm["half"], NATMAN_DARK)
    if nm.empty:
        ax.text(0.5, 0.5, "no natural/man-made nets\nin these runs", transform=ax.transAxes, ha="center",
                va="center", fontsize=13, style="italic", color="0.3")
    ax.set_title(natman_title(df), fontsize=16)
    ax.set_ylabel("Top-1 accuracy")
    _xticks(ax, nmax)
    if marked:
        note_clipped(ax, marked, where=_free_spot(ax))


def _fig3_random(ax, df: pd.DataFrame, nmax: int, paper: bool) -> None:
    rf = random_filter_means(df)
    ys = list(rf["mean"])
    ax.set_xlim(-0.3, nmax + 0.3)
    if len(rf):
        ax.plot(rf["n"], rf["mean"], color=RANDOM_COLOR, lw=2, marker="v", ms=14, mfc=RANDOM_COLOR, mec="k",
                zorder=3)
        b = rf[rf["treatment"] == REFERENCE]
        ax.plot(b["n"], b["mean"], "o", mfc="w", mec="k", ms=14, mew=2, zorder=4)
        _errorbars(ax, rf["n"], rf["mean"], rf["std"], rf["count"], DARK[FIGURES.random_filters])
    top = 1.06 * max(ys) + 0.01 if ys else 1.0  # the paper used max + 0.01, which clips the n = 0 circle
    ax.set_ylim(0, top)
    if paper:
        p = paper_line_means()
        p = p[(p["panel"] == "fig3_random") & (p["n"] <= nmax)]
        pax = _paper_axis(ax, ys, list(p["top1"]), label="paper (dashed)")
        if pax is ax:
            ax.set_ylim(0, 1.06 * max(ys + list(p["top1"])) + 0.01)
        else:
            pax.set_ylim(0, 1.06 * p["top1"].max() + 0.01)
        pax.plot(p["n"], p["top1"], color=DARK[FIGURES.random_filters], zorder=2, **PAPER_DASH)
    # the t intervals of _errorbars (over the nets at each point), marked where the limits cut them
    half = ci_halfwidth(rf["std"], rf["count"])
    mean = rf["mean"].to_numpy(float)
    marked = mark_clipped(ax, rf["n"], mean - half, mean + half, DARK[FIGURES.random_filters])
    if rf.empty:
        ax.text(0.5, 0.5, "no random-filter nets\nin these runs", transform=ax.transAxes, ha="center",
                va="center", fontsize=13, style="italic", color="0.3")
    ax.set_title("Random, untrained filters", fontsize=16)
    _xticks(ax, nmax)
    if marked:
        note_clipped(ax, marked, where=_free_spot(ax))


# the bottom panel's series, styled as their split kind's panel: colour, dark shade (intervals, paper line),
# marker and size
REL_STYLE = {"random": dict(color="r", dark="r", marker="D", ms=12),
             "natman": dict(color=NATMAN_COLOR, dark=NATMAN_DARK, marker="h", ms=14),
             "all": dict(color=RANDOM_COLOR, dark=DARK[FIGURES.random_filters], marker="v", ms=14)}


def _rel_label(series, df: pd.DataFrame) -> str:
    """A series' legend label (figures.yaml); the dissimilar split's in its own family names, in half order as
    in :func:`natman_title` ("mean AnB, man-made/natural split"; "m/n split" when the runs name no families)."""
    nm = df[(df["split_kind"] == "natman") & (df["target_family"] != "")].sort_values("target_half")
    fams = list(dict.fromkeys(nm["target_family"]))
    return series.label.format(split="/".join(fams) if fams else "m/n")


def _fig3_relative(ax, df: pd.DataFrame, nmax: int, paper: bool) -> None:
    rel = relative_top1(df)
    ys = [0.0] + list(rel["relative"])
    handles = [ax.plot([0], [0], "o", mfc="w", mec="k", mew=2, ms=14, zorder=5)[0]]
    labels = ["reference"]
    bars = []  # (n, lo, hi, colour) of every interval drawn
    drawn = set()
    for series in FIGURES.relative:
        st = REL_STYLE[series.split_kind]
        g = rel[(rel["series"] == series.series)].sort_values("n")
        if not (g["n"] > 0).any():  # only its reference: nothing of the series to show
            continue
        drawn.add(series.series)
        h = ax.plot(g["n"], g["relative"], color=st["color"], lw=2, marker=st["marker"], ms=st["ms"],
                    mfc=st["color"], mec="k", zorder=3, markevery=list(range(1, len(g))))[0]
        handles.append(h)
        labels.append(_rel_label(series, df))
        # 95% CI of each drop, paired with each cell's own reference (t over independent units)
        for n, line in zip(g.loc[g["n"] > 0, "n"], g.loc[g["n"] > 0, "relative"]):
            e = fx.drop_estimate(df, series.split_kind, series.treatment, int(n), int(n))
            if np.isfinite(e.ci_lo):
                # the interval's half-widths around the drawn point (the paired estimate equals the line's
                # value when every cell has its net at this n)
                lo, hi = line - (e.estimate - e.ci_lo), line + (e.ci_hi - e.estimate)
                ax.errorbar([n], [line], yerr=[[line - lo], [hi - line]], fmt="none", ecolor=st["dark"],
                            elinewidth=1.2, capsize=4, zorder=4)
                bars.append((n, lo, hi, st["dark"]))
                if e.df >= 2:  # the axis fits intervals with 2+ degrees of freedom; wider ones are marked
                    ys += [lo, hi]
    if paper:
        p = paper_line_means()
        p = p[(p["panel"] == "fig3_relative") & (p["n"] <= nmax)]
        for series in FIGURES.relative:
            g = p[p["series"] == series.series]
            ax.plot([0, *g["n"]], [0.0, *g["top1"]], color=REL_STYLE[series.split_kind]["dark"], zorder=2,
                    **PAPER_DASH)
        ys += list(p["top1"])
        handles.append(plt.Line2D([], [], color="0.3", **PAPER_DASH))
        labels.append("paper (thin dashed)")
    missing = [_rel_label(s, df) for s in FIGURES.relative if s.series not in drawn]
    _note_missing(ax, missing, where="lower right")
    ax.axhline(0, color="0.6", lw=0.8, zorder=1)
    ax.set_ylim(*_limits(ys, pad=0.05))
    ax.set_xlim(-0.2, nmax + 0.3)
    _xticks(ax, nmax)
    ax.set_ylabel("Relative top-1 accuracy (higher is better)")
    ax.set_xlabel(XLABEL, fontsize=16)
    marked = sum(mark_clipped(ax, [n], [lo], [hi], c) for n, lo, hi, c in bars)
    if marked:
        note_clipped(ax, marked, where=_free_spot(ax))
    # under the x label, where it covers no interval (tight_layout makes room for it)
    _legend_below(ax, handles, labels, ncol=3, fontsize=13)


def fig3(runs_df: pd.DataFrame, out_pdf: str | Path, paper: bool = True, units=None) -> tuple[Path, Path]:
    """Figure 3: natural/man-made transfer (top left), random untrained filters (top right) and every
    treatment relative to its own n = 0 reference (bottom; its legend under the axis).  Writes ``out_pdf``
    and a same-stem PNG. ``units`` as in :func:`fig2`.
    """
    _UNITS[0] = units
    nmax = _nmax(runs_df[runs_df["treatment"] != REFERENCE])
    with plt.style.context("classic"), plt.rc_context(RC):
        fig = plt.figure(figsize=(14, 11))
        ax_nm = plt.subplot2grid((3, 2), (0, 0), fig=fig)
        ax_rf = plt.subplot2grid((3, 2), (0, 1), fig=fig)
        ax_rel = plt.subplot2grid((3, 2), (1, 0), rowspan=2, colspan=2, fig=fig)
        fig.tight_layout()  # the axes' near-final sizes, which the labels and the legend are placed by
        _fig3_natman(ax_nm, runs_df, nmax, paper)
        _fig3_random(ax_rf, runs_df, nmax, paper)
        _fig3_relative(ax_rel, runs_df, nmax, paper)
        fig.tight_layout()
        return _save(fig, out_pdf)


# ---------------------------------------------------------------------------------------------------------
# Training curves (for the report)

CURVE_COLOURS = {t.key: t.mid for t in TREATMENT_TABLE}


def training_curves(metrics_paths, out_pdf: str | Path, title: str = "") -> tuple[Path, Path]:
    """Validation top-1 and training loss over iterations, one line per net (seaborn, from one long frame
    of every net's history.csv), coloured by treatment, thicker for larger n. Writes a PDF and a PNG copy."""
    import seaborn as sns

    from .tables import load_history, load_runs

    frames = []
    for p in sorted(Path(p) for p in metrics_paths):
        run = load_runs([p]).iloc[0]
        frames.append(load_history(p).assign(net=run["net"], treatment=run["treatment"], n=int(run["n"])))
    long = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["iter", "top1", "train_loss", "net", "treatment", "n"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    style = dict(data=long, x="iter", hue="treatment", units="net", estimator=None, size="n", sizes=(0.8, 2.4),
                 palette={t: CURVE_COLOURS.get(t, "g") for t in long["treatment"].unique()})
    if len(long):
        sns.lineplot(y="top1", ax=ax1, **style)
        sns.lineplot(y="train_loss", ax=ax2, legend=False, **style)
        ax1.legend(loc="lower right", fontsize=9, ncol=2)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("validation top-1")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("training loss (mean since the previous evaluation)")
    ax2.set_yscale("log")
    sns.despine(fig)
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return _save(fig, out_pdf)


# ---------------------------------------------------------------------------------------------------------
# The claims, ours beside the authors' nets

VERDICT_COLOURS = {"reproduced": "#1a9641", "contradicted": "#d7191c", "equivalent": "#2b83ba",
                   "inconclusive": "#999999", "no interval": "#cccccc", "confounded": "#e66101"}


def claims_figure(runs_df: pd.DataFrame, out_pdf: str | Path, eff: pd.DataFrame | None = None,
                  units=None) -> tuple[Path, Path]:
    """One row per claim: our paired effect with its 95% CI (filled, coloured by verdict) above the same
    effect computed from the authors' nets (hollow); the equivalence margin shaded around zero; the verdict
    (and for ``confounded`` the confound) at the right. Effects in percentage points; writes a PDF and a PNG.
    ``eff``: effects.csv's frame (None: computed with the default settings). ``units``: the net's unit names
    (None: CaffeNet's 7 layers), which place the claims' layer ranges."""
    eff = fx.effects_with_paper(runs_df, units=len(units or LAYER_NAMES)) if eff is None else eff
    rows = eff[eff["scope"] == "claim"].reset_index(drop=True)
    confound = next((r["reason"].split("; the data alone")[0] for _, r in rows.iterrows()
                     if r["verdict"] == "confounded"), "")
    with plt.rc_context({"pdf.fonttype": 42, "font.size": 11}):
        fig, ax = plt.subplots(figsize=(14, 0.5 * len(rows) + 2.6))
        ys = np.arange(len(rows))[::-1].astype(float)
        margin = 100 * float(rows["margin"].dropna().iloc[0]) if rows["margin"].notna().any() else np.nan
        if np.isfinite(margin):
            ax.axvspan(-margin, margin, color="#d9e8f5", zorder=0, lw=0)
        for y, (_, r) in zip(ys, rows.iterrows()):
            for dy, pre, filled in ((0.15, "", True), (-0.15, fx.PAPER_PREFIX, False)):
                est, lo, hi = (100 * float(r[pre + k]) for k in ("estimate", "ci_lo", "ci_hi"))
                colour = VERDICT_COLOURS.get(r[pre + "verdict"], "k")
                if not np.isfinite(est):
                    continue
                if np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [y + dy, y + dy], color=colour, lw=2.5 if filled else 1.5)
                ax.plot([est], [y + dy], "o", ms=8, mfc=colour if filled else "w", mec=colour, mew=2)
            note = "" if np.isfinite(r["ci_lo"]) else (" (no nets)" if not r["nets"] else " (< 2 units)")
            ax.text(1.01, y, f"{r['verdict']}{note}", transform=ax.get_yaxis_transform(), va="center",
                    color=VERDICT_COLOURS.get(r["verdict"], "k"), fontsize=10)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{r['label']}: {r['claim']} (n = {r['layers']}; paper: {r['expected']})"
                            for _, r in rows.iterrows()])
        ax.set_ylim(-0.8, len(rows) - 0.2)
        ax.set_xlabel("effect, percentage points of top-1 (95% CI; verdicts after Holm–Shaffer adjustment; "
                      "shaded: equivalence margin)")
        ax.set_title("The paper's claims: ours (filled, upper) beside the authors' nets (hollow, lower)")
        handles = [plt.Line2D([], [], color=c, marker="o", lw=2, label=v) for v, c in VERDICT_COLOURS.items()]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 if not confound else -0.2),
                  ncol=len(handles), fontsize=9, frameon=False)
        if confound:
            import textwrap

            ax.text(0.0, -0.1, "confounded: " + textwrap.shorten(confound, 260), transform=ax.transAxes,
                    ha="left", va="top", fontsize=9, color=VERDICT_COLOURS["confounded"], wrap=True)
        ax.grid(axis="x", color="0.9")
        fig.tight_layout()
        return _save(fig, out_pdf, dpi=100)


# ---------------------------------------------------------------------------------------------------------
# Why features transfer: similarity and probes by layer

SIM_KINDS = {"A_vs_B": ("baseA vs baseB, random split (different classes)", "#d7191c"),
             "A_vs_B_fixed_split": ("baseA vs baseB, natural / man-made", "#fdae61"),
             "seed_floor": ("same half, another seed (noise floor)", "#2b83ba"),
             "finetuned_vs_base": ("fine-tuned net vs its target's base net", "#7b3294")}


def _mean_ci(values: pd.Series, cells: pd.Series) -> tuple[float, float]:
    """Mean and 95% CI half-width over independent cells (effects.cluster_mean: several values of one cell,
    e.g. the fine-tuned nets of one split that share their base net, count as one)."""
    est = fx.cluster_mean(values, cells)
    return est.estimate, (est.ci_hi - est.ci_lo) / 2


def _with_features(df: pd.DataFrame) -> pd.DataFrame:
    """A similarity or probe table with its ``features`` column (tables written before ViT taps had one
    kind of feature per layer: the layer's output)."""
    return df if "features" in df else df.assign(features="output")


def similarity_by_layer(sim: pd.DataFrame, probes: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per unit and kind of features (a ViT block has two: its class token and its patch-token mean):
    mean CKA of each kind of pair (95% CI over cells: a run and a reference net), the probes' top-1 (the
    other half's base net and the target's own; cells: split and target half), the AnB transfer loss at
    n = the unit (base − AnB, paired per cell as effects.csv pairs it), and across units the Pearson
    correlation of CKA(baseA, baseB) with that loss (per kind of features)."""
    sim, probes = _with_features(sim), _with_features(probes)
    taps = pd.concat([sim[["n", "layer", "features"]], probes[["n", "layer", "features"]]]).drop_duplicates()
    rows = []
    for n, layer, features in taps.sort_values(["n", "features"]).itertuples(index=False):
        row = {"n": n, "layer": layer, "features": features}
        for kind in SIM_KINDS:
            k = sim[(sim["kind"] == kind) & (sim["n"] == n) & (sim["features"] == features)]
            # a cell: one run and one reference net (the fine-tuned nets of a target share its base net)
            row[f"cka_{kind}"], row[f"cka_{kind}_ci"] = _mean_ci(k["cka"], k["split"] + "/" + k["net_b"])
        p = probes[(probes["n"] == n) & (probes["features"] == features)]
        p = p.assign(cell=p["split"] + "/" + p["target_half"])
        for name, same in (("probe_other_half", False), ("probe_own_half", True)):
            q = p[(p["source_half"] == p["target_half"]) == same]
            row[name], row[f"{name}_ci"] = _mean_ci(q["top1"], q["cell"])
        d = fx.paired_diffs(runs, "random", FIGURES.similarity_transfer, REFERENCE, n, n)
        row["anb_loss"], row["anb_loss_ci"] = _mean_ci(-d["diff"], d["cell"])
        rows.append(row)
    df = pd.DataFrame(rows)
    df[["r_cka_vs_anb_loss", "p_cka_vs_anb_loss", "layers_correlated"]] = np.nan
    for _, g in df.groupby("features", sort=False):
        ok = g[["cka_A_vs_B", "anb_loss"]].dropna()
        r, pval = stats.pearsonr(ok["cka_A_vs_B"], ok["anb_loss"]) if len(ok) >= 3 else (np.nan, np.nan)
        df.loc[g.index, ["r_cka_vs_anb_loss", "p_cka_vs_anb_loss", "layers_correlated"]] = r, pval, len(ok)
    return df


FEATURE_STYLES = ("-", "--", ":", "-.")  # one line style per kind of features of a unit (a ViT has two)


def _bands(ax, by: pd.DataFrame, series: list[tuple[str, str, str]], kinds: list) -> tuple[list, list]:
    """Each (column, label, colour) of ``by`` against n: its mean with the 95% interval of the by-layer table
    (``<column>_ci``, over independent cells) as a band, one line style per kind of features; returns the
    legend's handles and labels (the kinds of features as grey line styles when there are several)."""
    handles, labels = [], []
    for col, label, colour in series:
        drawn = False
        for kind, ls in zip(kinds, FEATURE_STYLES):
            g = by[by["features"] == kind].sort_values("n")
            g = g[np.isfinite(g[col].to_numpy(float))]
            if g.empty:
                continue
            mean, half = g[col].to_numpy(float), g[f"{col}_ci"].to_numpy(float)  # NaN (one cell): no band
            h = ax.plot(g["n"], mean, color=colour, ls=ls, marker="o", ms=5, mec="w", lw=1.5, zorder=3)[0]
            ax.fill_between(g["n"], mean - half, mean + half, color=colour, alpha=0.2, lw=0, zorder=2)
            if not drawn:
                handles.append(plt.Line2D([], [], color=colour, marker="o", mec="w", lw=1.5))
                labels.append(label)
                drawn = True
    if len(kinds) > 1 and handles:
        handles += [plt.Line2D([], [], color="0.3", ls=ls, lw=1.5) for _, ls in zip(kinds, FEATURE_STYLES)]
        labels += [str(k) for k in kinds]
    return handles, labels


def similarity_figure(sim: pd.DataFrame, probes: pd.DataFrame, runs: pd.DataFrame, out_pdf: str | Path) -> pd.DataFrame:
    """Left: linear CKA by layer for each kind of pair, with the AnB transfer loss on a second axis; right:
    linear-probe top-1 by layer of the other half's base net and of the target's own. Every mean and 95%
    interval is the returned by-layer table's (over independent cells), so figure and table agree and a
    rerun draws the same figure. The legends sit under the axes, clear of the data. Writes a PDF and a PNG;
    returns the by-layer table."""
    by = similarity_by_layer(sim, probes, runs)
    kinds = list(dict.fromkeys(by["features"]))  # [output], or a ViT's [class token, patch mean]
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(15, 6.8))
    pairs = [(f"cka_{k}", label, colour) for k, (label, colour) in SIM_KINDS.items()]
    h1, l1 = _bands(ax1, by, pairs, kinds)
    ax1.set_ylabel("linear CKA (mini-batch, unbiased HSIC)")
    ax1.set_ylim(0, 1.05)
    ax2 = ax1.twinx()
    loss = by.drop_duplicates("n")
    ax2.errorbar(loss["n"], 100 * loss["anb_loss"], yerr=100 * loss["anb_loss_ci"], color="k", ls="--",
                 marker="s", capsize=3, label="AnB transfer loss (base − AnB, points)")
    ax2.set_ylabel("AnB transfer loss, points of top-1")
    r = by.drop_duplicates("features").set_index("features")
    ax1.set_title("CKA of the random splits' base nets vs AnB transfer loss by unit\nPearson r = " + ", ".join(
        f"{r.loc[k, 'r_cka_vs_anb_loss']:.2f} " + (f"({k}, " if len(kinds) > 1 else "(")
        + f"{int(r.loc[k, 'layers_correlated'])} units)" for k in kinds), fontsize=10)
    h3, l3 = _bands(ax3, by, [("probe_own_half", "own half's base net (reference)", "k"),
                              ("probe_other_half", "other half's base net", "#d7191c")], kinds)
    ax3.set_ylabel("linear probe top-1 on the target half (held out)")
    ax3.set_title("How much of the target task each frozen unit separates")
    units = by.drop_duplicates("n")
    for ax in (ax1, ax3):
        ax.set_xticks(list(units["n"]))
        ax.set_xticklabels(list(units["layer"]), rotation=30 if len(units) > 9 else 0)
        ax.set_xlabel("unit n")
    for ax in fig.axes:  # no top frame line: what seaborn's despine(right=False) did, without importing seaborn
        ax.spines["top"].set_visible(False)
    fig.tight_layout()  # the axes' near-final sizes, which the legends are placed under
    # both legends under their axes (the CKA pairs and the twin axis's transfer loss in one), off the data
    h2, l2 = ax2.get_legend_handles_labels()
    _legend_below(ax1, h1 + h2, l1 + l2, ncol=2, fontsize=9)
    if h3:
        _legend_below(ax3, h3, l3, ncol=2, fontsize=9, title="source" if len(kinds) == 1 else "source; features",
                      title_fontsize=9)
    fig.tight_layout()
    _save(fig, out_pdf)
    return by
