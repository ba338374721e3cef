"""The paper's published numbers, shipped with the project as a tidy table.

``paper_networks.csv`` (next to this module) holds one row per network of Yosinski et al. 2014 that has a
training log: the score of each net is the authors' metric, the mean of its 10 best validation top-1
evaluations out of 450. The file was generated once from ``shared/reference/paper_results.json`` (parsed from
the authors' Caffe logs, github.com/yosinski/convnet_transfer) by :func:`paper_networks_from_json`; a test
regenerates it and checks that it is unchanged.

Naming (authors' run -> our columns):

* ``half{s}{X}``                -> split ``rand{s}``, treatment ``base``, target half X (500 classes)
* ``transfer{s}{X}{s}{Y}_1_{n}``   -> frozen: ``BnB`` when X == Y (selffer), else ``AnB``
* ``transfer-ft{s}{X}{s}{Y}_1_{n}`` -> fine-tuned: ``BnB+`` / ``AnB+``; the 22 dirs without logs are left out
* ``halfnatman{A,B}``, ``transfernatman{AB,BA}_1_{n}`` -> split ``natman``.  The repository calls the natural
  half A and the man-made half B; the paper calls man-made A and natural B.  The table uses the PAPER's
  orientation, so ``halfnatmanA`` (natural, 449 classes) becomes target half B, target family ``natural``.
* ``netbase``                   -> split ``all`` (1000 classes), treatment ``base``
* ``nolearn_1_{n}``             -> split ``all``, treatment ``random`` (first n layers random and frozen)
* ``reduced-*`` (data-volume study) are not part of the figures and are skipped.

``top1`` = top10_mean_acc, ``top1_final`` = accuracy at iteration 450k, ``top1_max`` = best single evaluation,
``evals`` = number of logged evaluations (90 and 80 for two nets whose logs start late; the metric is unaffected).
"""

from __future__ import annotations

import io
import json
import re
from importlib import resources
from pathlib import Path

import pandas as pd

PAPER_CSV_NAME = "paper_networks.csv"

PAPER_COLUMNS = [
    "run", "split_kind", "split", "treatment", "n", "source_half", "target_half", "target_family",
    "num_classes", "top1", "top1_final", "top1_max", "evals",
]
_STR_COLUMNS = ["run", "split_kind", "split", "treatment", "source_half", "target_half", "target_family"]

# Paper orientation of the natural/man-made split: paper A = man-made (551 classes), B = natural (449).
# The repository's halfnatmanA is natural, so its letter maps to the paper's B and vice versa.
_NATMAN_REPO_TO_PAPER = {"A": "B", "B": "A"}
_NATMAN_FAMILY = {"A": "man-made", "B": "natural"}  # keyed by PAPER half
_NATMAN_CLASSES = {"A": 551, "B": 449}               # keyed by PAPER half

# Table 1 of the paper, in percentage points: mean boost of AnB+ over baseB and over selffer BnB+,
# pooled over the fine-tuned nets with n in the range.  Used only for comparison; the tests recompute it.
PAPER_TABLE1 = {
    (1, 7): {"over_base": 1.6, "over_BnB+": 1.4},
    (3, 7): {"over_base": 1.8, "over_BnB+": 1.4},
    (5, 7): {"over_base": 2.1, "over_BnB+": 1.7},
}

# The published line means (paper.md section 5), rounded to 4 decimals as printed there.  They are the
# aggregation of paper_networks.csv; tests/test_figures.py checks that they agree.
_FIG2 = {  # n = 0..7; n = 0 is the mean of the 8 random-split base nets
    "BnB":  [0.6251, 0.6267, 0.6235, 0.6211, 0.6048, 0.5935, 0.6188, 0.6232],
    "BnB+": [0.6251, 0.6177, 0.6215, 0.6313, 0.6287, 0.6301, 0.6276, 0.6266],
    "AnB":  [0.6251, 0.6282, 0.6239, 0.6189, 0.5998, 0.5780, 0.5806, 0.5425],
    "AnB+": [0.6251, 0.6373, 0.6358, 0.6426, 0.6398, 0.6446, 0.6460, 0.6465],
}
_FIG2_COUNT = {
    "BnB":  [8, 4, 4, 4, 4, 4, 4, 4],
    "BnB+": [8, 1, 1, 2, 1, 2, 2, 1],
    "AnB":  [8, 8, 8, 8, 8, 8, 8, 8],
    "AnB+": [8, 1, 2, 2, 2, 1, 1, 1],
}
_FIG3 = {  # n = 0..7; n = 0 is the base net of the target half (or netbase for random filters)
    "natural":  [0.6534, 0.6571, 0.6506, 0.6250, 0.5824, 0.5219, 0.4851, 0.3990],
    "man-made": [0.5372, 0.5392, 0.5214, 0.5008, 0.4616, 0.4098, 0.3742, 0.2914],
    "mean":     [0.5953, 0.5982, 0.5860, 0.5629, 0.5220, 0.4659, 0.4296, 0.3452],
    "random":   [0.5763, 0.4917, 0.4026, 0.0011, 0.0191, 0.0499, 0.0145, 0.0146],
}
_FIG3_RELATIVE = {  # n = 1..7, treatment minus its own n = 0 reference
    "AnB random splits": [0.0031, -0.0012, -0.0062, -0.0253, -0.0471, -0.0445, -0.0826],
    "AnB m/n split":     [0.0029, -0.0093, -0.0324, -0.0733, -0.1295, -0.1657, -0.2501],
    "random features":   [-0.0846, -0.1737, -0.5752, -0.5573, -0.5264, -0.5618, -0.5617],
}


def paper_line_means() -> pd.DataFrame:
    """The paper's plotted means, as printed (4 decimals), in long form.

    Columns: ``panel``, ``series``, ``n``, ``top1``, ``count``.

    * panel ``fig2``: series BnB, BnB+, AnB, AnB+ for n = 0..7 (Figure 2 bottom; n = 0 is baseB, 8 nets);
    * panel ``fig3_natman``: series ``natural`` / ``man-made`` (target family) and ``mean`` (of the two);
    * panel ``fig3_random``: series ``random`` (random frozen filters; n = 0 is the 1000-class base net);
    * panel ``fig3_relative``: n = 1..7, ``top1`` is the value relative to the series' own n = 0 reference.
    """
    rows = []
    for series, values in _FIG2.items():
        rows += [("fig2", series, n, v, _FIG2_COUNT[series][n]) for n, v in enumerate(values)]
    for series in ("natural", "man-made", "mean"):
        count = 2 if series == "mean" else 1
        rows += [("fig3_natman", series, n, v, count) for n, v in enumerate(_FIG3[series])]
    rows += [("fig3_random", "random", n, v, 1) for n, v in enumerate(_FIG3["random"])]
    for series, values in _FIG3_RELATIVE.items():
        rows += [("fig3_relative", series, n, v, pd.NA) for n, v in enumerate(values, start=1)]
    df = pd.DataFrame(rows, columns=["panel", "series", "n", "top1", "count"])
    df["count"] = df["count"].astype("Int64")
    return df


# ---------------------------------------------------------------------------------------------------------
# Generating paper_networks.csv from the reference JSON

_RANDOM_BASE = re.compile(r"^half(\d)([AB])$")
_RANDOM_TRANSFER = re.compile(r"^transfer(-ft)?(\d)([AB])(\d)([AB])_1_(\d)$")
_NATMAN_BASE = re.compile(r"^halfnatman([AB])$")
_NATMAN_TRANSFER = re.compile(r"^transfernatman([AB])([AB])_1_(\d)$")
_RANDOM_FILTERS = re.compile(r"^nolearn_1_(\d)$")


def _classify(run: str) -> dict | None:
    """Columns describing one authors' run name, or None for runs outside the figures (reduced-*)."""
    if m := _RANDOM_BASE.match(run):
        s, half = m.groups()
        return dict(split_kind="random", split=f"rand{s}", treatment="base", n=0, source_half="",
                    target_half=half, target_family="", num_classes=500)
    if m := _RANDOM_TRANSFER.match(run):
        ft, s1, src, s2, tgt, n = m.groups()
        if s1 != s2:
            raise ValueError(f"{run}: transfer across different random splits")
        kind = "BnB" if src == tgt else "AnB"
        return dict(split_kind="random", split=f"rand{s1}", treatment=kind + ("+" if ft else ""),
                    n=int(n), source_half=src, target_half=tgt, target_family="", num_classes=500)
    if m := _NATMAN_BASE.match(run):
        half = _NATMAN_REPO_TO_PAPER[m.group(1)]
        return dict(split_kind="natman", split="natman", treatment="base", n=0, source_half="",
                    target_half=half, target_family=_NATMAN_FAMILY[half], num_classes=_NATMAN_CLASSES[half])
    if m := _NATMAN_TRANSFER.match(run):
        src, tgt = (_NATMAN_REPO_TO_PAPER[h] for h in m.groups()[:2])
        return dict(split_kind="natman", split="natman", treatment="AnB", n=int(m.group(3)),
                    source_half=src, target_half=tgt, target_family=_NATMAN_FAMILY[tgt],
                    num_classes=_NATMAN_CLASSES[tgt])
    if run == "netbase":
        return dict(split_kind="all", split="all", treatment="base", n=0, source_half="",
                    target_half="", target_family="", num_classes=1000)
    if m := _RANDOM_FILTERS.match(run):
        return dict(split_kind="all", split="all", treatment="random", n=int(m.group(1)), source_half="R",
                    target_half="", target_family="", num_classes=1000)
    if run.startswith("reduced-"):
        return None
    raise ValueError(f"unknown run name in the reference JSON: {run!r}")


_ORDER_KIND = {"random": 0, "natman": 1, "all": 2}
_ORDER_TREATMENT = {"base": 0, "BnB": 1, "BnB+": 2, "AnB": 3, "AnB+": 4, "random": 5}


def paper_networks_from_json(json_path: str | Path) -> pd.DataFrame:
    """Build the per-network table from ``paper_results.json`` (runs without logs are left out)."""
    networks = json.loads(Path(json_path).read_text())["networks"]
    rows = []
    for run, info in networks.items():
        cols = _classify(run)
        if cols is None or not info.get("ntests"):
            continue
        rows.append(dict(run=run, **cols, top1=info["top10_mean_acc"], top1_final=info["final_acc"],
                         top1_max=info["max_acc"], evals=int(info["ntests"])))
    df = pd.DataFrame(rows, columns=PAPER_COLUMNS)
    key = (df["split_kind"].map(_ORDER_KIND) * 10 + df["treatment"].map(_ORDER_TREATMENT))
    df = df.assign(_k=key).sort_values(["_k", "split", "source_half", "target_half", "n", "run"])
    return df.drop(columns="_k").reset_index(drop=True)


def paper_networks_csv_text(json_path: str | Path) -> str:
    """The exact text of ``paper_networks.csv`` as generated from the reference JSON."""
    buf = io.StringIO()
    paper_networks_from_json(json_path).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def read_paper_networks_csv(source) -> pd.DataFrame:
    """Parse a paper_networks.csv (path or file object) with the right dtypes ('' stays '')."""
    df = pd.read_csv(source, keep_default_na=False, dtype={c: str for c in _STR_COLUMNS})
    return df[PAPER_COLUMNS]


def load_paper_networks() -> pd.DataFrame:
    """The packaged per-network table of the paper (columns :data:`PAPER_COLUMNS`)."""
    with resources.files(__package__).joinpath(PAPER_CSV_NAME).open("r") as fh:
        return read_paper_networks_csv(fh)
