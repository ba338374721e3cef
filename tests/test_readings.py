"""Figure 2 as a reader sees it (issue 22): each numbered reading drawn only where effects.csv's verdicts
resolve it, with an arrow to a point of its own line; intervals over units; cut intervals marked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transferable.figures import effects as fx
from transferable.figures import plots
from transferable.figures.tables import coerce_runs

# line means at n = 1..7 where every line is apart from the others: AnB+ on top, BnB+ next, BnB dips, AnB falls
SHAPES = {"BnB": [0.60, 0.59, 0.57, 0.55, 0.56, 0.59, 0.60], "BnB+": [0.62, 0.625, 0.63, 0.63, 0.63, 0.63, 0.63],
          "AnB": [0.60, 0.59, 0.57, 0.53, 0.50, 0.47, 0.44], "AnB+": [0.64, 0.645, 0.65, 0.655, 0.66, 0.665, 0.67]}


def _runs(splits: int = 4, spread: float = 0.004, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(splits):
        rows.append(dict(split=f"rand{s}", split_kind="random", net="baseB", treatment="base", n=0, target_half="B",
                         top1=0.60 + rng.normal(0, spread)))
        for t, means in SHAPES.items():
            for n, m in enumerate(means, start=1):
                src = "B" if t.startswith("BnB") else "A"
                rows.append(dict(split=f"rand{s}", split_kind="random", net=f"{src}{n}B" + ("_ft" if "+" in t else ""),
                                 treatment=t, n=n, source_half=src, target_half="B", top1=m + rng.normal(0, spread)))
    return coerce_runs(pd.DataFrame(rows))


@pytest.fixture
def drawn(monkeypatch):
    """fig2's figure object instead of files."""
    figs = []

    def keep(fig, out_pdf, dpi=80):
        figs.append(fig)
        return out_pdf, out_pdf

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def _with_verdicts(df: pd.DataFrame, verdict: str) -> pd.DataFrame:
    eff = fx.effects(df, per_layer=False)
    return eff.assign(verdict=verdict)


def _line_points(ax, colour) -> set[tuple[float, float]]:
    pts = set()
    for line in ax.get_lines():
        if line.get_color() == colour and len(line.get_xdata()) > 2:
            pts |= {(round(float(x), 6), round(float(y), 6)) for x, y in zip(line.get_xdata(), line.get_ydata())}
    return pts


def test_every_reading_points_at_its_own_line(drawn):
    df = _runs()
    plots.fig2(df, "unused.pdf", paper=False, eff=_with_verdicts(df, "reproduced"))
    bottom = drawn[0].axes[1]
    notes = {a.get_text()[:1]: a for a in bottom.texts if hasattr(a, "xy")}
    assert set(notes) == {"2", "3", "4", "5"}
    for reading in plots.FIGURES.readings:
        label, line = reading.label, reading.line
        xy = tuple(round(float(v), 6) for v in notes[label].xy)
        assert xy in _line_points(bottom, plots.MARKERS[line]["color"]), (label, xy)
        # and on no other line at that point (readings 5 and 3 used to sit on each other's lines)
        for other in plots.FIG2_TREATMENTS:
            if other != line:
                assert xy not in _line_points(bottom, plots.MARKERS[other]["color"]), (label, other)
    # 5 points where AnB+ leads most; 2 at the BnB dip; 4 at the top layer
    assert notes["5"].xy[0] == 7 and notes["2"].xy[0] == 4 and notes["4"].xy[0] == 7


def test_unresolved_and_confounded_readings_are_listed_not_drawn(drawn):
    df = _runs()
    eff = _with_verdicts(df, "reproduced")
    eff.loc[eff["claim"] == "boost_over_base", "verdict"] = "confounded"
    eff.loc[eff["claim"] == "finetune_recovers", "verdict"] = "inconclusive"
    plots.fig2(df, "unused.pdf", paper=False, eff=eff)
    bottom = drawn[0].axes[1]
    arrows = {a.get_text()[:1] for a in bottom.texts if hasattr(a, "xy")}
    assert arrows == {"2", "4"}
    box = "\n".join(t.get_text() for t in bottom.texts if not hasattr(t, "xy"))
    assert "5: transfer + fine-tuning boost" in box and "confounded" in box
    assert "3: fine-tuning recovers" in box and "inconclusive" in box


def test_label_5_needs_the_boost_over_selffer_too(drawn):
    df = _runs()
    eff = _with_verdicts(df, "reproduced")
    eff.loc[eff["claim"] == "boost_over_selffer", "verdict"] = "contradicted"
    assert plots.reading_status(eff)["5"][0] == "contradicted"
    plots.fig2(df, "unused.pdf", paper=False, eff=eff)
    assert "5" not in {a.get_text()[:1] for a in drawn[0].axes[1].texts if hasattr(a, "xy")}


def test_intervals_are_over_splits_and_cut_ones_are_marked(drawn):
    # two splits: t on 1 df, intervals far wider than the lines' range: not fitted, marked where cut
    df = _runs(splits=2, spread=0.03, seed=1)
    e = plots.unit_interval(df, "AnB", 7)
    assert e.units == 2 and e.df == 1
    plots.fig2(df, "unused.pdf", paper=False, eff=_with_verdicts(df, "inconclusive"))
    bottom = drawn[0].axes[1]
    y0, y1 = bottom.get_ylim()
    assert e.ci_lo < y0 or e.ci_hi > y1
    marks = [ln for ln in bottom.get_lines() if ln.get_marker() in ("^", "v")]
    assert marks and any(plots.CLIP_NOTE in t.get_text() for t in bottom.texts)
    # six splits: every interval fits, nothing is marked
    drawn.clear()
    df = _runs(splits=6, spread=0.004)
    plots.fig2(df, "unused.pdf", paper=False, eff=_with_verdicts(df, "inconclusive"))
    bottom = drawn[0].axes[1]
    assert not [ln for ln in bottom.get_lines() if ln.get_marker() in ("^", "v")]


def test_mark_clipped_by_hand():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_ylim(0, 1)
    assert plots.mark_clipped(ax, [1, 2, 3], [-0.5, 0.2, 0.1], [0.5, 1.5, 0.9], "r") == 2
    plt.close(fig)


def _spec_doc() -> dict:
    from importlib import resources

    import yaml

    return yaml.safe_load(resources.files("transferable.figures").joinpath("figures.yaml").read_text())


def test_the_figures_spec_is_data_and_a_wrong_entry_is_named():
    """Which treatment each figure, table and analysis shows lives in figures/figures.yaml; a wrong entry stops
    with the file, the place and the field."""
    import copy
    import re

    import yaml

    from transferable.figures.spec import FIGURES, load_figures

    doc = _spec_doc()
    assert load_figures(yaml.safe_dump(doc)) == FIGURES
    assert [r.label for r in FIGURES.readings] == ["2", "3", "4", "5"]
    assert FIGURES.cross_treatments == ("AnB", "AnB+", "random")

    def broken(edit):
        d = copy.deepcopy(doc)
        edit(d)
        return yaml.safe_dump(d)

    cases = (
        (lambda d: d["figure2"]["fills"][0].update(upper="CnB"), "figure2 fill 1: upper 'CnB' is not a line of Figure 2"),
        (lambda d: d["figure2"]["readings"][0].update(point="middle"),
         "figure2 reading 2: point 'middle' is not one of lowest, deepest, furthest_above"),
        (lambda d: d["figure2"]["readings"][1].pop("above"), "figure2 reading 3: point furthest_above needs"),
        (lambda d: d["figure2"]["readings"][3].update(above=["BnB", "AnB-"]),
         "figure2 reading 5: above 'AnB-' is not a line of Figure 2"),
        (lambda d: d["figure2"]["readings"][0].update(colour="red"), "figure2 reading 2: unknown field(s) colour"),
        (lambda d: d["figure3"]["relative"][0].update(split_kind="rand"),
         "figure3 relative series 1: split_kind 'rand' is not one of"),
        (lambda d: d["table1"].update(treatment="AnB++"), "table1: treatment 'AnB++' is not a treatment"),
        (lambda d: d["cross"].pop("tuned"), "cross: missing tuned"),
        (lambda d: d["cross"].update(frozen=["AnB", "AnB+"]), "cross: frozen ['AnB', 'AnB+'] is not a treatment"),
        (lambda d: d["table1"].update(treatment=None), "table1: treatment None is not a treatment"),
        (lambda d: d["figure2"]["readings"][3].update(above="BnB"), "figure2 reading 5: above 'BnB' is not a list"),
        (lambda d: d["figure2"]["readings"][0].update(claims="coadaptation"),
         "figure2 reading 2: claims 'coadaptation' is not a list"),
        (lambda d: d["figure2"]["readings"][0].update(line="random"),
         "figure2 reading 2: line 'random' is not a line of Figure 2"),
        (lambda d: d["figure2"]["readings"][0].update(spot=[0.3, 0.1, "middle", "top"]),
         "figure2 reading 2: spot [0.3, 0.1, 'middle', 'top'] is not"),
        (lambda d: d["figure2"]["readings"][1].update(label="2"), "figure2: two readings have the same label"),
        (lambda d: d["figure2"]["fills"][0].update(lower="base+"),
         "figure2 fill 1: lower 'base+' is not the reference or a line of Figure 2"),
        (lambda d: d["figure2"].update(fills={"lower": "base"}), "fills: expected a list of entries"),
    )
    for edit, message in cases:
        with pytest.raises(ValueError, match=re.escape(f"my.yaml: {message}")):
            load_figures(broken(edit), "my.yaml")


def test_a_reading_of_a_claim_the_claims_file_lacks_is_refused():
    """A misspelt claim key in figures.yaml would leave its reading unresolved for ever: plots refuses it."""
    import dataclasses

    from transferable.figures.spec import FIGURES

    plots.check_readings()  # the packaged files agree
    typo = dataclasses.replace(FIGURES.readings[0], claims=("coadaptaton",))
    broken = dataclasses.replace(FIGURES, readings=(typo, *FIGURES.readings[1:]))
    with pytest.raises(ValueError, match=r"reading 2: claims \['coadaptaton'\] are not in paper_claims.yaml"):
        plots.check_readings(figures=broken)


def test_table1_and_its_claims_name_the_same_treatments():
    """Table 1 (figures.yaml) and the claims it reports (paper_claims.yaml) compare the same nets."""
    from transferable.figures.spec import FIGURES
    from transferable.figures.spec import REFERENCE

    claims = {c.key: c for c in fx.CLAIMS}
    over_base, over_selffer = claims["boost_over_base"], claims["boost_over_selffer"]
    assert (over_base.treatment, over_base.reference) == (FIGURES.table1_treatment, REFERENCE)
    assert (over_selffer.treatment, over_selffer.reference) == (FIGURES.table1_treatment, FIGURES.table1_selffer)


def test_figure2_draws_what_the_spec_says(drawn, monkeypatch):
    """An edit of figures.yaml alone moves a reading's arrow and recolours a fill."""
    import yaml

    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    from transferable.figures.spec import load_figures

    doc = _spec_doc()
    doc["figure2"]["readings"][0]["point"] = "deepest"  # reading 2: BnB's top n instead of its dip at n = 4
    doc["figure2"]["fills"][1]["colour"] = "#00ff00"
    monkeypatch.setattr(plots, "FIGURES", load_figures(yaml.safe_dump(doc)))
    df = _runs()
    plots.fig2(df, "unused.pdf", paper=False, eff=_with_verdicts(df, "reproduced"))
    bottom = drawn[0].axes[1]
    notes = {a.get_text()[:1]: a for a in bottom.texts if hasattr(a, "xy")}
    assert notes["2"].xy[0] == 7 and notes["4"].xy[0] == 7
    fills = [to_hex(c.get_facecolor()[0]) for c in bottom.collections if isinstance(c, PolyCollection)]
    assert fills == ["#ffeeee", "#00ff00", "#ffcccc"]
