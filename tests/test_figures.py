"""Tables and figures: the paper's own per-net numbers must give back its published means and Table 1,
and the figures must draw from the paper's numbers, from demo-like run files, and from incomplete runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transferable.figures import paper as paper_mod
from transferable.figures import tables
from transferable.figures.paper import PAPER_TABLE1, load_paper_networks, paper_line_means
from transferable.figures.tables import paper_runs
from transferable.figures.plots import _paper_axis, claims_figure, fig2, fig3, natman_title
from transferable.figures.tables import (
    RUN_COLUMNS,
    line_means,
    load_history,
    load_runs,
    natman_mean_of_families,
    natman_means,
    paper_comparison,
    random_filter_means,
    read_runs_csv,
    relative_top1,
    table1,
    write_paper_comparison,
    write_runs_csv,
)

REPO = Path(__file__).resolve().parents[1]


def _paper_json() -> Path | None:
    """The reference JSON: every network's score parsed from the authors' Caffe logs (a copy ships in
    tests/data; an env var or a ../shared checkout can point elsewhere)."""
    candidates = [os.environ.get("TRANSFERABLE_PAPER_RESULTS"),
                  REPO / "tests/data/paper_results.json",
                  REPO / "shared/reference/paper_results.json",
                  REPO.parent / "shared/reference/paper_results.json"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def r4(x) -> float:
    """Correctly rounded to 4 decimals, as the tables in paper.md print (not numpy's half-to-even on x*1e4)."""
    return round(float(x), 4)


@pytest.fixture(scope="module")
def pruns() -> pd.DataFrame:
    return paper_runs()


@pytest.fixture(scope="module")
def pmeans() -> pd.DataFrame:
    return paper_line_means()


# ---------------------------------------------------------------------------------------------------------
# the packaged per-net table


def test_paper_csv_is_what_the_generator_makes_from_the_json():
    src = _paper_json()
    if src is None:
        pytest.skip("shared/reference/paper_results.json not available in this checkout")
    packaged = Path(paper_mod.__file__).with_name(paper_mod.PAPER_CSV_NAME).read_text()
    assert packaged == paper_mod.paper_networks_csv_text(src)


def test_paper_table_contents():
    p = load_paper_networks()
    assert list(p.columns) == paper_mod.PAPER_COLUMNS
    assert len(p) == 136  # 112 nets of Figure 2 + 2 + 14 natural/man-made + netbase + 7 random-filter nets
    assert not p["run"].str.startswith("reduced-").any()
    counts = p.groupby(["split_kind", "treatment"]).size().to_dict()
    assert counts == {("random", "base"): 8, ("random", "BnB"): 28, ("random", "AnB"): 56,
                      ("random", "BnB+"): 10, ("random", "AnB+"): 10, ("natman", "base"): 2,
                      ("natman", "AnB"): 14, ("all", "base"): 1, ("all", "random"): 7}
    # BnB is the selffer (same half), AnB the transfer between halves
    rnd = p[p["split_kind"] == "random"]
    assert (rnd.loc[rnd["treatment"].str.startswith("BnB"), "source_half"]
            == rnd.loc[rnd["treatment"].str.startswith("BnB"), "target_half"]).all()
    assert (rnd.loc[rnd["treatment"].str.startswith("AnB"), "source_half"]
            != rnd.loc[rnd["treatment"].str.startswith("AnB"), "target_half"]).all()
    # paper orientation of the natural/man-made split: repo halfnatmanA (natural) is the paper's B
    by_run = p.set_index("run")
    assert by_run.loc["halfnatmanA", ["target_half", "target_family", "num_classes"]].tolist() == \
        ["B", "natural", 449]
    assert by_run.loc["halfnatmanB", ["target_half", "target_family", "num_classes"]].tolist() == \
        ["A", "man-made", 551]
    # transfernatmanAB: layers from repo A (natural) trained on repo B (man-made)
    assert by_run.loc["transfernatmanAB_1_3", ["source_half", "target_half", "target_family"]].tolist() == \
        ["B", "A", "man-made"]
    assert by_run.loc["transfer2B2A_1_4", "evals"] == 90
    assert r4(by_run.loc["netbase", "top1"]) == 0.5763


def test_paper_runs_has_the_runs_schema(pruns):
    assert list(pruns.columns) == RUN_COLUMNS
    assert pruns["n"].dtype.kind == "i"
    assert (pruns.loc[pruns["treatment"] == "base", "n"] == 0).all()
    assert not pruns.duplicated(["split", "net"]).any()
    assert set(pruns.loc[pruns["treatment"] == "AnB+", "net"]) >= {"A1B_ft", "A3B_ft"}


# ---------------------------------------------------------------------------------------------------------
# the paper's published numbers come back from its per-net numbers


def test_line_means_reproduce_figure2(pruns, pmeans):
    ours = line_means(pruns)
    pub = pmeans[pmeans["panel"] == "fig2"]
    for t in ("BnB", "BnB+", "AnB", "AnB+"):
        a = ours[ours["treatment"] == t].sort_values("n")
        b = pub[pub["series"] == t].sort_values("n")
        assert a["n"].tolist() == list(range(8))
        assert [r4(v) for v in a["mean"]] == b["top1"].tolist(), t
        assert a["count"].tolist() == b["count"].tolist(), t
    base = ours[ours["treatment"] == "base"].iloc[0]
    assert (r4(base["mean"]), r4(base["std"]), base["count"]) == (0.6251, 0.0055, 8)


def test_line_means_match_the_json_exactly(pruns):
    src = _paper_json()
    if src is None:
        pytest.skip("reference JSON not available")
    ref = json.loads(src.read_text())
    ours = line_means(pruns)
    for t, values in ref["figure2_line_means_n0_to_7"].items():
        got = ours[ours["treatment"] == t].sort_values("n")["mean"].to_numpy()
        np.testing.assert_allclose(got, values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(natman_mean_of_families(pruns)["mean"],
                               ref["figure3"]["natman_mean_of_two_directions_n0_to_7"], atol=1e-12)
    np.testing.assert_allclose(random_filter_means(pruns)["mean"],
                               ref["figure3"]["random_frozen_filters_fullImageNet_n0_to_7"], atol=1e-12)


def test_table1_pooled_reproduces_paper(pruns):
    t1 = table1(pruns).set_index("layers")
    for (lo, hi), want in PAPER_TABLE1.items():
        row = t1.loc[f"{lo}-{hi}"]
        assert round(row["boost_over_base"], 1) == want["over_base"]
        assert round(row["boost_over_bnb_plus"], 1) == want["over_selffer"]
    assert t1[["anb_plus_count", "base_count", "bnb_plus_count"]].values.tolist() == \
        [[10, 8, 10], [7, 8, 8], [3, 8, 5]]
    # the test can tell pooling from averaging the per-layer line means (1.67 -> 1.7 for layers 1-7)
    lm = line_means(pruns)
    per_layer = lm[(lm["treatment"] == "AnB+") & (lm["n"] > 0)]["mean"].mean()
    base = lm[lm["treatment"] == "base"]["mean"].iloc[0]
    assert round(100 * (per_layer - base), 1) != PAPER_TABLE1[(1, 7)]["over_base"]


def test_figure3_values_reproduce_paper(pruns, pmeans):
    nm = natman_means(pruns)
    for fam in ("natural", "man-made"):
        got = nm[nm["target_family"] == fam].sort_values("n")
        want = pmeans[(pmeans["panel"] == "fig3_natman") & (pmeans["series"] == fam)]
        assert got["n"].tolist() == list(range(8))
        assert [r4(v) for v in got["mean"]] == want["top1"].tolist(), fam
    both = natman_mean_of_families(pruns)
    want = pmeans[(pmeans["panel"] == "fig3_natman") & (pmeans["series"] == "mean")]
    assert [r4(v) for v in both["mean"]] == want["top1"].tolist()
    rf = random_filter_means(pruns)
    want = pmeans[pmeans["panel"] == "fig3_random"]
    assert [r4(v) for v in rf["mean"]] == want["top1"].tolist()
    rel = relative_top1(pruns)
    want = pmeans[pmeans["panel"] == "fig3_relative"]
    for series in tables.RELATIVE_SERIES:
        got = rel[(rel["series"] == series) & (rel["n"] > 0)].sort_values("n")
        assert [r4(v) for v in got["relative"]] == want[want["series"] == series]["top1"].tolist(), series


def test_paper_compared_with_itself(pruns):
    cmp = paper_comparison(pruns)
    assert {"panel", "treatment", "target_family", "n", "mean", "std", "count", "paper_mean", "paper_count",
            "diff"} == set(cmp.columns)
    assert np.allclose(cmp["diff"], 0) and (cmp["count"] == cmp["paper_count"]).all()
    assert len(cmp) == 1 + 4 * 7 + 2 * 8 + 8


# ---------------------------------------------------------------------------------------------------------
# demo-like run files


DEMO_MEANS = {  # shaped like the small calibration run (paper.md's numbers are not reachable on a CPU)
    "BnB": [0.806, 0.800, 0.812, 0.812, 0.806, 0.808, 0.796],
    "AnB": [0.802, 0.789, 0.798, 0.780, 0.768, 0.734, 0.725],
    "BnB+": [0.80, 0.81, 0.81, 0.82, 0.81, 0.81, 0.80],
    "AnB+": [0.808, 0.827, 0.820, 0.823, 0.833, 0.835, 0.850],
}


def _write_run(root: Path, row: dict, rng) -> Path:
    d = root / row["split"] / row["net"]
    d.mkdir(parents=True, exist_ok=True)
    evals = 6
    top1 = np.clip(row["top1"] - np.linspace(0.2, 0, evals) + rng.normal(0, 0.003, evals), 0, 1)
    hist = pd.DataFrame({"iter": np.arange(1, evals + 1) * 50, "epoch": np.arange(1, evals + 1), "lr": 0.02,
                         "train_loss": np.linspace(3, 0.5, evals), "val_loss": np.linspace(3, 0.7, evals),
                         "top1": top1, "top5": np.minimum(top1 + 0.1, 1), "elapsed_s": np.arange(evals) * 3.0})
    hist.to_csv(d / "history.csv", index=False)
    metrics = {**row, "top1_final": float(top1[-1]), "top5": row["top1"] + 0.1, "top5_final": float(top1[-1]) + 0.1,
               "top1_max": float(top1.max()), "evals": evals, "iters": 300, "wall_s": 12.5, "device": "cpu",
               "history": "history.csv", "config": {"ignored": True}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d / "metrics.json"


def make_demo_runs(root: Path, finetune: bool = True, natman: bool = True, random_filters: bool = True,
                   nmax: int = 7) -> list[Path]:
    """A few fake metrics.json + history.csv files: 2 random splits, optional natman and random filters."""
    rng = np.random.default_rng(0)
    rows = []
    for s in (0, 1):
        split = f"rand{s}"
        for half, base in (("A", 0.785), ("B", 0.797)):
            rows.append(dict(split=split, split_kind="random", net=f"base{half}", treatment="base", n=0,
                             source_half="", target_half=half, target_family="", num_classes=20,
                             top1=base + 0.004 * s))
        if finetune:  # the control: baseB trained on
            rows.append(dict(split=split, split_kind="random", net="baseB_ft", treatment="base+", n=0,
                             source_half="B", target_half="B", target_family="", num_classes=20,
                             top1=0.797 + 0.004 * s + 0.006))
        for t, means in DEMO_MEANS.items():
            if t.endswith("+") and not finetune:
                continue
            for n in range(1, nmax + 1):
                src, tgt = ("B", "B") if t.startswith("BnB") else ("A", "B")
                rows.append(dict(split=split, split_kind="random", treatment=t, n=n, source_half=src,
                                 target_half=tgt, target_family="", num_classes=20,
                                 net=f"{src}{n}{tgt}" + ("_ft" if t.endswith("+") else ""),
                                 top1=means[n - 1] + rng.normal(0, 0.005)))
    if natman:
        for half, fam, base, step in (("A", "man-made", 0.770, 0.027), ("B", "natural", 0.734, 0.030)):
            rows.append(dict(split="natman", split_kind="natman", net=f"base{half}", treatment="base", n=0,
                             source_half="", target_half=half, target_family=fam, num_classes=20, top1=base))
            other = "B" if half == "A" else "A"
            for n in range(1, nmax + 1):
                rows.append(dict(split="natman", split_kind="natman", net=f"{other}{n}{half}", treatment="AnB",
                                 n=n, source_half=other, target_half=half, target_family=fam, num_classes=20,
                                 top1=base - step * n))
    if random_filters:
        rows.append(dict(split="all", split_kind="all", net="baseA", treatment="base", n=0, source_half="",
                         target_half="A", target_family="", num_classes=40, top1=0.76))
        for n in range(1, nmax + 1):
            rows.append(dict(split="all", split_kind="all", net=f"R{n}A", treatment="random", n=n,
                             source_half="R", target_half="A", target_family="", num_classes=40,
                             top1=max(0.76 - 0.12 * n, 0.025)))
    return [_write_run(root, r, rng) for r in rows]


def _assert_pdf_png(pdf: Path, png: Path) -> None:
    assert pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert png.parent == pdf.parent and png.stem == pdf.stem
    assert not [p for p in pdf.parent.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing
    assert pdf.stat().st_mode & 0o044 == 0o044  # readable by others, not mkstemp's 0600


def test_load_runs_reads_metrics_and_round_trips(tmp_path):
    paths = make_demo_runs(tmp_path / "results", nmax=3)
    df = load_runs(paths)
    assert list(df.columns) == RUN_COLUMNS
    assert len(df) == len(paths) == 2 * (2 + 1 + 4 * 3) + 2 * 4 + 4
    assert set(df["treatment"]) == set(tables.TREATMENTS)
    assert df["n"].dtype.kind == "i" and df["top1"].dtype.kind == "f"
    assert (df["history"] == "history.csv").all() and (df["device"] == "cpu").all()
    # a run directory works as well as its metrics.json
    assert load_runs([paths[0].parent]).equals(load_runs([paths[0]]))
    h = load_history(paths[0])
    assert list(h.columns) == tables.HISTORY_COLUMNS and len(h) == 6
    out = write_runs_csv(df, tmp_path / "tables" / "runs.csv")
    back = read_runs_csv(out)
    pd.testing.assert_frame_equal(back, df)


def test_load_runs_rejects_bad_files(tmp_path):
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "metrics.json"
    f.write_text(json.dumps({"split": "rand0", "split_kind": "random", "net": "baseA", "treatment": "base",
                             "n": 0, "target_half": "A"}))
    with pytest.raises(ValueError, match="top1"):
        load_runs([f])
    f.write_text(json.dumps({"split": "rand0", "split_kind": "random", "net": "x", "treatment": "AnB++",
                             "n": 1, "target_half": "A", "top1": 0.5}))
    with pytest.raises(ValueError, match="treatment"):
        load_runs([f])


def test_tables_on_demo_runs(tmp_path):
    df = load_runs(make_demo_runs(tmp_path / "results"))
    lm = line_means(df)
    # the reference is the base nets of the TARGET halves (B of both splits), not baseA (only a source)
    assert lm.loc[lm["treatment"] == "AnB", "count"].tolist() == [2] + [2] * 7
    base = df[(df["split_kind"] == "random") & (df["treatment"] == "base") & (df["target_half"] == "B")]["top1"]
    assert np.isclose(lm.loc[lm["n"] == 0, "mean"], base.mean()).all()
    t1 = table1(df)
    anb = df[(df["treatment"] == "AnB+") & df["n"].between(5, 7)]["top1"].mean()
    assert np.isclose(t1.set_index("layers").loc["5-7", "boost_over_base"], 100 * (anb - base.mean()))
    rel = relative_top1(df)
    assert set(rel["series"]) == set(tables.RELATIVE_SERIES)
    mn = rel[rel["series"] == "AnB m/n split"].set_index("n")
    assert np.isclose(mn.loc[0, "reference"], (0.770 + 0.734) / 2)
    from transferable.figures import effects

    md = effects.table1_markdown(effects.table1_three_ways(df))  # the one Table 1 writer (rule table1)
    assert md.startswith("# Table 1") and "| 5-7 |" in md and "2.1 / 1.7" in md  # the published values shown
    cmp = paper_comparison(df)
    write_paper_comparison(cmp, tmp_path / "t" / "paper_comparison.csv")
    back = pd.read_csv(tmp_path / "t" / "paper_comparison.csv", keep_default_na=False, na_values=[""])
    assert len(back) == len(cmp) and (cmp["paper_count"] > 0).all()
    assert (cmp.loc[cmp["panel"] == "fig2", "count"] > 0).all()


def test_figures_from_the_paper_numbers(tmp_path, pruns):
    _assert_pdf_png(*fig2(pruns, tmp_path / "fig2.pdf"))
    _assert_pdf_png(*fig3(pruns, tmp_path / "fig3.pdf", paper=False))


def test_figures_from_demo_runs(tmp_path):
    df = load_runs(make_demo_runs(tmp_path / "results"))
    _assert_pdf_png(*fig2(df, tmp_path / "figs" / "fig2.pdf"))
    _assert_pdf_png(*fig3(df, tmp_path / "figs" / "fig3.pdf"))


def test_figures_without_finetuned_or_other_splits(tmp_path):
    df = load_runs(make_demo_runs(tmp_path / "results", finetune=False, natman=False, random_filters=False,
                                  nmax=4))
    assert not df["treatment"].str.endswith("+").any()
    lm = line_means(df)
    assert set(lm["treatment"]) == {"base", "BnB", "AnB"}
    t1 = table1(df)
    assert t1["boost_over_base"].isna().all() and (t1["anb_plus_count"] == 0).all()
    from transferable.figures import effects

    assert "| 1-7 | – | – | 0 / 0 |" in effects.table1_markdown(effects.table1_three_ways(df))  # no nets: a dash
    assert relative_top1(df)["series"].unique().tolist() == ["AnB random splits"]
    _assert_pdf_png(*fig2(df, tmp_path / "fig2.pdf"))
    _assert_pdf_png(*fig3(df, tmp_path / "fig3.pdf"))
    # and with nothing but base nets
    only_base = df[df["treatment"] == "base"]
    _assert_pdf_png(*fig2(only_base, tmp_path / "base_only.pdf", paper=False))


def test_paper_lines_get_their_own_axis_only_when_levels_differ():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert _paper_axis(ax, [0.60, 0.64], [0.54, 0.65]) is ax
    assert _paper_axis(ax, [0.72, 0.85], [0.54, 0.65]) is not ax
    plt.close(fig)


def test_figures_package_does_not_import_torch():
    code = ("import sys, transferable.figures, transferable.figures.plots; "
            "sys.exit(int('torch' in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_figures_and_tables_from_an_empty_frame(tmp_path):
    empty = load_runs([])
    assert list(empty.columns) == RUN_COLUMNS and empty.empty
    assert line_means(empty).empty and relative_top1(empty).empty
    assert table1(empty)["boost_over_base"].isna().all()
    _assert_pdf_png(*fig2(empty, tmp_path / "fig2.pdf"))
    _assert_pdf_png(*fig3(empty, tmp_path / "fig3.pdf"))


def test_fig3_titles_come_from_the_split_families(tmp_path, pruns):
    assert natman_title(pruns) == "Man-made/Natural split"  # the paper's title
    df = load_runs(make_demo_runs(tmp_path / "results"))
    nm = df["split_kind"] == "natman"
    own = df.assign(target_family=np.where(nm, df["target_family"].map({"natural": "animals",
                                                                        "man-made": "vehicles"}), ""))
    assert natman_title(own) == "Vehicles/Animals split"
    _assert_pdf_png(*fig3(own, tmp_path / "own.pdf", paper=False))
    assert natman_title(df[~nm]) == "Dissimilar halves"


def test_claims_figure_from_demo_and_paper_runs(tmp_path, pruns):
    _assert_pdf_png(*claims_figure(load_runs(make_demo_runs(tmp_path / "results")), tmp_path / "claims.pdf"))
    _assert_pdf_png(*claims_figure(pruns, tmp_path / "claims_paper.pdf"))
    _assert_pdf_png(*claims_figure(load_runs([]), tmp_path / "claims_empty.pdf"))


# ---------------------------------------------------------------------------------------------------------
# Figure 3 and the similarity figure as a reader sees them: labels beside their own lines, cut intervals
# marked, legends off the data


NATMAN_SHAPES = {  # family -> top-1 at n = 0..7 (man-made is half A, natural half B)
    "diverging": {"man-made": [0.52, 0.44, 0.40, 0.35, 0.36, 0.31, 0.27, 0.25],
                  "natural": [0.45, 0.46, 0.46, 0.45, 0.47, 0.42, 0.41, 0.39]},
    "middle": {"man-made": [0.45, 0.40, 0.35, 0.30, 0.35, 0.40, 0.45, 0.49],
               "natural": [0.50, 0.50, 0.51, 0.50, 0.50, 0.51, 0.50, 0.50]},
}


def _fig3_frame(shape: str = "diverging", seeds: int = 2, families=("man-made", "natural")) -> pd.DataFrame:
    """A runs frame for Figure 3 without files: 2 random splits (AnB and base nets), the dissimilar split and
    the random-filter split with ``seeds`` replicates each (2: intervals on 1 df, which run off the axes)."""
    rng = np.random.default_rng(1)
    rows = []
    for s in range(2):
        for half, base in (("A", 0.60), ("B", 0.62)):
            rows.append(dict(split=f"rand{s}", split_kind="random", net=f"base{half}", treatment="base", n=0,
                             target_half=half, top1=base + 0.01 * s))
        for n in range(1, 8):
            rows.append(dict(split=f"rand{s}", split_kind="random", net=f"A{n}B", treatment="AnB", n=n,
                             source_half="A", target_half="B", top1=0.61 - 0.01 * n + rng.normal(0, 0.01)))
    for r in range(seeds):
        sp = "natman" if r == 0 else f"natman.s{r}"
        for half, key, fam in (("A", "man-made", families[0]), ("B", "natural", families[1])):
            for n, v in enumerate(NATMAN_SHAPES[shape][key]):
                rows.append(dict(split=sp, split_kind="natman", net=f"base{half}" if n == 0 else f"X{n}{half}",
                                 treatment="base" if n == 0 else "AnB", n=n, target_half=half, target_family=fam,
                                 source_half="" if n == 0 else ("B" if half == "A" else "A"),
                                 top1=v + (0.02 if r % 2 else -0.02) * (1 + n % 3)))
        sp = "all" if r == 0 else f"all.s{r}"
        for n in range(8):
            rows.append(dict(split=sp, split_kind="all", net="baseA" if n == 0 else f"R{n}A",
                             treatment="base" if n == 0 else "random", n=n, target_half="A",
                             top1=max(0.32 - 0.02 * n, 0.02) + (0.05 if r % 2 else -0.05)))
    return tables.coerce_runs(pd.DataFrame(rows))


@pytest.fixture
def drawn(monkeypatch):
    """Figures the plots module would save, kept open for a look (and closed afterwards)."""
    import matplotlib.pyplot as plt

    from transferable.figures import plots

    figs = []

    def keep(fig, out_pdf, dpi=80):
        figs.append(fig)
        return Path(out_pdf), Path(out_pdf).with_suffix(".png")

    monkeypatch.setattr(plots, "_save", keep)
    yield figs
    for f in figs:
        plt.close(f)


def _line_points(ax) -> np.ndarray:
    """Display coordinates of what is drawn on ``ax``: line vertices and error-bar ends."""
    pts = [line.get_transform().transform(line.get_xydata()) for line in ax.lines if len(line.get_xydata())]
    for c in ax.collections:
        for seg in getattr(c, "get_segments", lambda: [])():
            if len(seg):
                pts.append(c.get_transform().transform(np.asarray(seg, float)))
    return np.concatenate(pts) if pts else np.empty((0, 2))


@pytest.mark.parametrize("shape", sorted(NATMAN_SHAPES))
def test_fig3_natman_labels_sit_beside_their_own_lines(tmp_path, drawn, shape):
    df = _fig3_frame(shape, seeds=3)
    fig3(df, tmp_path / "fig3.pdf", paper=False)
    fig = drawn[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    nm = natman_means(df)
    labels = [t for t in ax.texts if t.get_text().endswith(" target")]
    assert sorted(t.get_text() for t in labels) == ["man-made target", "natural target"]
    sides = {}
    for t in labels:
        fam = t.get_text()[:-len(" target")]
        own = nm[nm["target_family"] == fam].sort_values("n")
        other = nm[nm["target_family"] != fam].sort_values("n")
        bb = t.get_window_extent()
        assert ax.bbox.x0 - 1 <= bb.x0 and bb.x1 <= ax.bbox.x1 + 1  # not cut by the axis
        assert ax.bbox.y0 - 1 <= bb.y0 and bb.y1 <= ax.bbox.y1 + 1
        (x0, y0), (x1, y1) = ax.transData.inverted().transform([[bb.x0, bb.y0], [bb.x1, bb.y1]])
        xs = np.linspace(max(x0, 0), min(x1, 7), 30)
        mine, theirs = (np.interp(xs, g["n"], g["mean"]) for g in (own, other))
        for line in (mine, theirs):  # neither line runs through the label
            assert not ((line > y0) & (line < y1)).any(), (t.get_text(), shape)
        above = y0 >= mine.max()
        sides[fam] = above
        if above:  # over the lines: its own is the upper one there, so it sits between label and the other
            assert (mine >= theirs).all(), (t.get_text(), shape)
        else:
            assert y1 <= mine.min() and (mine <= theirs).all(), (t.get_text(), shape)
    assert sorted(sides.values()) == [False, True]  # one above, one below


def _cut_bars(ax) -> list[tuple[float, str]]:
    """(x, '^' or 'v') for every error bar on ``ax`` that runs past its y limits."""
    y0, y1 = ax.get_ylim()
    cut = []
    for c in ax.collections:
        for seg in getattr(c, "get_segments", lambda: [])():
            seg = np.asarray(seg, float)
            if len(seg) == 2 and np.isclose(seg[0, 0], seg[1, 0]):
                lo, hi = seg[:, 1].min(), seg[:, 1].max()
                if hi > y1:
                    cut.append((seg[0, 0], "^"))
                if lo < y0:
                    cut.append((seg[0, 0], "v"))
    return cut


def test_fig3_marks_every_interval_the_axes_cut(tmp_path, drawn):
    from transferable.figures.plots import CLIP_NOTE

    fig3(_fig3_frame(seeds=2), tmp_path / "fig3.pdf", paper=False)
    fig = drawn[0]
    for ax, title in zip(fig.axes[:3], ("natural/man-made", "random filters", "relative")):
        cut = _cut_bars(ax)
        assert cut, f"the 2-replicate intervals of the {title} panel should run off it"
        marks = [(float(line.get_xdata()[0]), line.get_marker()) for line in ax.lines
                 if line.get_marker() in ("^", "v") and len(line.get_xdata()) == 1
                 and not line.get_clip_on()]
        for x, m in cut:
            assert any(np.isclose(x, mx) and m == mm for mx, mm in marks), (title, x, m)
        assert len(marks) == len(cut)
        assert [t.get_text() for t in ax.texts].count(CLIP_NOTE) == 1, title
    # with 3 replicates the axes fit the natural/man-made intervals: nothing to mark or explain there
    drawn.clear()
    fig3(_fig3_frame(seeds=3), tmp_path / "fig3b.pdf", paper=False)
    ax = drawn[0].axes[0]
    assert not _cut_bars(ax) and CLIP_NOTE not in [t.get_text() for t in ax.texts]


@pytest.mark.parametrize("families, want", [(("man-made", "natural"), "mean AnB, man-made/natural split"),
                                            (("vehicles", "animals"), "mean AnB, vehicles/animals split"),
                                            (("", ""), "mean AnB, m/n split")])
def test_fig3_relative_legend_is_off_the_data_and_names_the_split(tmp_path, drawn, families, want):
    fig3(_fig3_frame(families=families), tmp_path / "fig3.pdf", paper=True)
    fig = drawn[0]
    fig.canvas.draw()
    ax = fig.axes[2]
    leg = ax.get_legend()
    texts = [t.get_text() for t in leg.get_texts()]
    assert want in texts and "mean AnB, random splits" in texts
    lb = leg.get_window_extent()
    assert fig.bbox.x0 <= lb.x0 and lb.x1 <= fig.bbox.x1 and fig.bbox.y0 <= lb.y0  # all of it in the PNG
    pts = _line_points(ax)
    inside = (pts[:, 0] >= lb.x0) & (pts[:, 0] <= lb.x1) & (pts[:, 1] >= lb.y0) & (pts[:, 1] <= lb.y1)
    assert not inside.any()
    assert not lb.overlaps(ax.bbox) and not lb.overlaps(ax.xaxis.label.get_window_extent())
    for t in ax.get_xticklabels():
        assert not lb.overlaps(t.get_window_extent())


def _similarity_tables(taps=("output",), splits=("rand0", "rand1")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """similarity.csv and probes.csv as the similarity job writes them, for CaffeNet's layers."""
    from transferable.paths import LAYER_NAMES

    rng = np.random.default_rng(0)
    sim, probes = [], []
    for split in splits:
        for n, layer in enumerate(LAYER_NAMES, start=1):
            for j, feat in enumerate(taps):
                for kind, level in (("A_vs_B", 0.95 - 0.1 * n), ("seed_floor", 0.97 - 0.05 * n)):
                    for net_b in ("baseA", "baseB"):
                        sim.append(dict(kind=kind, split=split, net_a="baseA", net_b=net_b, layer=layer,
                                        features=feat, n=n, cka=level - 0.1 * j + rng.normal(0, 0.02), images=64))
                for tgt in ("A", "B"):
                    for src in ("A", "B"):
                        probes.append(dict(split=split, target_half=tgt, net=f"base{src}", source_half=src,
                                           layer=layer, features=feat, n=n,
                                           top1=0.3 + 0.05 * n - 0.02 * n * (src != tgt) + rng.normal(0, 0.01),
                                           train_images=64, val_images=32))
    return pd.DataFrame(sim), pd.DataFrame(probes)


def test_similarity_figure_draws_the_tables_intervals_the_same_every_time(tmp_path):
    """The bands are similarity_by_layer's 95% intervals over cells (not a bootstrap over rows, which drew
    other bands on every run and disagreed with the table): two runs write the same PNG, and each band spans
    the table's mean ± half-width."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    from transferable.figures import plots

    runs = _fig3_frame()
    sim, probes = _similarity_tables(splits=("rand0", "rand1", "rand2"))
    figs = []
    save = plots._save
    for i in range(2):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(plots, "_save", lambda fig, out, dpi=80: (figs.append(fig), save(fig, out, dpi))[1])
            by = plots.similarity_figure(sim, probes, runs, tmp_path / f"s{i}.pdf")
    assert (tmp_path / "s0.png").read_bytes() == (tmp_path / "s1.png").read_bytes()
    ax1, ax3 = figs[0].axes[0], figs[0].axes[1]
    for ax, col, colour in ((ax1, "cka_A_vs_B", plots.SIM_KINDS["A_vs_B"][1]), (ax3, "probe_other_half", "#d7191c")):
        band = [c for c in ax.collections if isinstance(c, PolyCollection)
                and to_hex(c.get_facecolor()[0]) == to_hex(colour)]
        assert len(band) == 1, col
        xy = band[0].get_paths()[0].vertices
        for n, mean, half in zip(by["n"], by[col], by[f"{col}_ci"]):  # its edges at every n: mean -+ half-width
            at = xy[np.isclose(xy[:, 0], n), 1]
            assert half > 0 and np.isclose(at.min(), mean - half) and np.isclose(at.max(), mean + half), (col, n)


@pytest.mark.parametrize("taps", [("output",), ("class token", "patch mean")])
def test_similarity_figure_legends_sit_off_the_axes(tmp_path, drawn, taps):
    """CaffeNet's one kind of features per layer, and a ViT's two (class token, patch mean: one line
    style each, one by-layer row each, labelled)."""
    from transferable.figures.plots import similarity_figure

    runs = _fig3_frame()
    sim, probes = _similarity_tables(taps)
    by = similarity_figure(sim, probes, runs, tmp_path / "similarity.pdf")
    assert len(by) == 7 * len(taps) and list(by["features"].unique()) == sorted(taps)
    assert by.groupby("features")["r_cka_vs_anb_loss"].nunique().eq(1).all()
    labels = [t.get_text() for ax in drawn[0].axes for t in ax.get_xticklabels()]
    assert "conv1" in labels and "fc7" in labels
    fig = drawn[0]
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    labels = [t.get_text() for leg in legends for t in leg.get_texts()]
    assert any(lab.startswith("AnB transfer loss") for lab in labels)
    assert any(lab.startswith("baseA vs baseB") for lab in labels)
    for leg in legends:
        lb = leg.get_window_extent()
        assert fig.bbox.x0 <= lb.x0 and lb.x1 <= fig.bbox.x1 and fig.bbox.y0 <= lb.y0
        for ax in fig.axes:
            assert not lb.overlaps(ax.bbox)
            assert not lb.overlaps(ax.xaxis.label.get_window_extent())
