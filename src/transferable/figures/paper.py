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

from ..paths import TREATMENTS, parse_net

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

PAPER_LINES_NAME = "paper_lines.csv"
PAPER_TABLE1_NAME = "paper_table1.csv"


def _packaged(name: str):
    """A data file shipped beside this module, open for reading (text)."""
    return resources.files(__package__).joinpath(name).open("r")


def _packaged_csv(name: str) -> pd.DataFrame:
    with _packaged(name) as fh:
        return pd.read_csv(fh, keep_default_na=False, na_values=[""])


def _table1() -> dict[tuple[int, int], dict[str, float]]:
    t = _packaged_csv(PAPER_TABLE1_NAME)
    return {(int(r.n_lo), int(r.n_hi)): {"over_base": float(r.over_base), "over_selffer": float(r.over_selffer)}
            for r in t.itertuples()}


# Table 1 of the paper (paper_table1.csv), in percentage points: the mean boost of transfer + fine-tuning
# (AnB+) over the base net and over the fine-tuned selffer (BnB+), pooled over the fine-tuned nets with n in
# the range. Used only for comparison; the tests recompute it from paper_networks.csv.
PAPER_TABLE1 = _table1()


def paper_line_means() -> pd.DataFrame:
    """The paper's plotted means as printed (paper.md section 5, 4 decimals; paper_lines.csv), in long form.
    They are the aggregation of paper_networks.csv: tests/test_figures.py checks that they agree.

    Columns: ``panel``, ``series``, ``n``, ``top1``, ``count``.

    * panel ``fig2``: a series per transfer treatment of Figure 2, n = 0..7 (Figure 2 bottom; n = 0 is the
      mean of the 8 random-split base nets);
    * panel ``fig3_natman``: series ``natural`` / ``man-made`` (target family) and ``mean`` (of the two),
      n = 0 the target half's base net;
    * panel ``fig3_random``: series ``random`` (random frozen filters; n = 0 is the 1000-class base net);
    * panel ``fig3_relative``: n = 1..7, ``top1`` is the value relative to the series' own n = 0 reference
      (no count).
    """
    df = _packaged_csv(PAPER_LINES_NAME).astype({"panel": str, "series": str, "n": int, "top1": float})
    df["count"] = df["count"].astype("Int64")
    return df


# ---------------------------------------------------------------------------------------------------------
# Generating paper_networks.csv from the reference JSON

_RANDOM_BASE = re.compile(r"^half(\d)([AB])$")
_RANDOM_TRANSFER = re.compile(r"^transfer(-ft)?(\d)([AB])(\d)([AB])_1_(\d)$")
_NATMAN_BASE = re.compile(r"^halfnatman([AB])$")
_NATMAN_TRANSFER = re.compile(r"^transfernatman([AB])([AB])_1_(\d)$")
_RANDOM_FILTERS = re.compile(r"^nolearn_1_(\d)$")


def _treatment(net: str) -> str:
    """The treatment of the net our grammar names ``net`` (paths.parse_net reads the treatment table)."""
    return parse_net(net).treatment


def _classify(run: str) -> dict | None:
    """Columns describing one authors' run name, or None for runs outside the figures (reduced-*): its
    treatment is that of the net our grammar names the same way (transfer2A2B_1_3 -> A3B -> AnB)."""
    if m := _RANDOM_BASE.match(run):
        s, half = m.groups()
        return dict(split_kind="random", split=f"rand{s}", treatment=_treatment(f"base{half}"), n=0,
                    source_half="", target_half=half, target_family="", num_classes=500)
    if m := _RANDOM_TRANSFER.match(run):
        ft, s1, src, s2, tgt, n = m.groups()
        if s1 != s2:
            raise ValueError(f"{run}: transfer across different random splits")
        net = f"{src}{n}{tgt}" + ("_ft" if ft else "")
        return dict(split_kind="random", split=f"rand{s1}", treatment=_treatment(net), n=int(n), source_half=src,
                    target_half=tgt, target_family="", num_classes=500)
    if m := _NATMAN_BASE.match(run):
        half = _NATMAN_REPO_TO_PAPER[m.group(1)]
        return dict(split_kind="natman", split="natman", treatment=_treatment(f"base{half}"), n=0,
                    source_half="", target_half=half, target_family=_NATMAN_FAMILY[half],
                    num_classes=_NATMAN_CLASSES[half])
    if m := _NATMAN_TRANSFER.match(run):
        src, tgt = (_NATMAN_REPO_TO_PAPER[h] for h in m.groups()[:2])
        n = m.group(3)
        return dict(split_kind="natman", split="natman", treatment=_treatment(f"{src}{n}{tgt}"), n=int(n),
                    source_half=src, target_half=tgt, target_family=_NATMAN_FAMILY[tgt],
                    num_classes=_NATMAN_CLASSES[tgt])
    if run == "netbase":
        return dict(split_kind="all", split="all", treatment=_treatment("baseA"), n=0, source_half="",
                    target_half="", target_family="", num_classes=1000)
    if m := _RANDOM_FILTERS.match(run):
        n = m.group(1)
        return dict(split_kind="all", split="all", treatment=_treatment(f"R{n}A"), n=int(n), source_half="R",
                    target_half="", target_family="", num_classes=1000)
    if run.startswith("reduced-"):
        return None
    raise ValueError(f"unknown run name in the reference JSON: {run!r}")


_ORDER_KIND = {"random": 0, "natman": 1, "all": 2}
_ORDER_TREATMENT = {t: i for i, t in enumerate(TREATMENTS)}  # the treatment table's order


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
    with _packaged(PAPER_CSV_NAME) as fh:
        return read_paper_networks_csv(fh)
