"""Which treatment each figure, table and analysis shows: ``figures.yaml`` (beside this module), read once
and checked against the treatment table, so that the drawing and tabulating code names places (Figure 2's
fills and readings, Figure 3's panels, Table 1, the cross experiment's answer), never treatments."""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources

import yaml

from ..paths import PAPER_TRANSFER_TREATMENTS, TREATMENT, TREATMENT_TABLE

# the reference of every effect: the treatment that copies nothing (a net trained from scratch on its half)
REFERENCE = next(t.key for t in TREATMENT_TABLE if not t.copies)
# extra training alone, the control of every fine-tuned treatment: the treatment that copies every unit
CONTROL = next(t.key for t in TREATMENT_TABLE if t.copies == "all")
LINES = PAPER_TRANSFER_TREATMENTS  # Figure 2's lines of means (the paper's transfer treatments)

SPEC_FILE = "figures.yaml"
READING_POINTS = ("lowest", "deepest", "furthest_above")
SPLIT_KINDS = ("random", "natman", "all")  # the kinds of split a run belongs to; a Figure 3 series comes from one


@dataclass(frozen=True)
class Fill:
    """Figure 2: the area between the means of ``lower`` and ``upper``, in ``colour``."""

    lower: str
    upper: str
    colour: str


@dataclass(frozen=True)
class Reading:
    """One of the paper's numbered readings of Figure 2 (figures.yaml says what each field means)."""

    label: str
    claims: tuple[str, ...]
    line: str
    point: str
    text: str
    wording: str
    opposite: str
    spot: tuple[float, float, str, str]
    above: tuple[str, ...] = ()


@dataclass(frozen=True)
class Relative:
    """A series of Figure 3's bottom panel: ``treatment`` on splits of ``split_kind`` minus its reference."""

    series: str
    split_kind: str
    treatment: str
    label: str


@dataclass(frozen=True)
class Figures:
    fills: tuple[Fill, ...]
    readings: tuple[Reading, ...]
    dissimilar: str
    random_filters: str
    relative: tuple[Relative, ...]
    table1_treatment: str
    table1_selffer: str
    similarity_transfer: str
    cross_frozen: str
    cross_tuned: str
    cross_random: str

    @property
    def cross_treatments(self) -> tuple[str, ...]:
        """The cross experiment's compared treatments, in its tables' order."""
        return self.cross_frozen, self.cross_tuned, self.cross_random


def _record(cls, entry, where: str):
    """``cls`` built from the mapping ``entry``; a missing or unknown field raises ValueError naming ``where``."""
    names = {f.name for f in fields(cls)}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping of {', '.join(sorted(names))}")
    if unknown := set(entry) - names:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        record = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None
    for f in fields(cls):
        value, many = getattr(record, f.name), f.type.startswith("tuple")
        if many and not isinstance(value, tuple) or not many and not isinstance(value, str):
            raise ValueError(f"{where}: {f.name} {value!r} is not {'a list' if many else 'a text'}")
    return record


def _section(doc: dict, key: str, names: tuple[str, ...], where: str) -> dict:
    s = doc.get(key)
    if not isinstance(s, dict):
        raise ValueError(f"{where}: expected a section {key}: with {', '.join(names)}")
    missing, unknown = [n for n in names if n not in s], sorted(set(s) - set(names))
    if missing:
        raise ValueError(f"{where}: {key}: missing {', '.join(missing)}")
    if unknown:
        raise ValueError(f"{where}: {key}: unknown {', '.join(unknown)}")
    return s


def _check_treatments(where: str, allowed=tuple(TREATMENT), what: str = "a treatment", **named) -> None:
    """Each value of ``named`` (a key, or a list of keys for a list field) one of ``allowed``."""
    for field, keys in named.items():
        for k in keys if isinstance(keys, tuple) else (keys,):
            if not isinstance(k, str) or k not in allowed:
                raise ValueError(f"{where}: {field} {k!r} is not {what} ({', '.join(allowed)})")


def _entries(section: dict, key: str, where: str) -> list:
    items = section[key]
    if not isinstance(items, list) or not items:
        raise ValueError(f"{where}: {key}: expected a list of entries")
    return items


def load_figures(text: str | None = None, where: str = SPEC_FILE) -> Figures:
    """The figures' definitions of a figures file (default: the packaged figures.yaml), checked: a wrong entry
    raises ValueError naming ``where``, the place and the field."""
    if text is None:
        text = resources.files(__package__).joinpath(SPEC_FILE).read_text()
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected sections figure2, figure3, table1, similarity, cross")
    f2 = _section(doc, "figure2", ("fills", "readings"), where)
    f3 = _section(doc, "figure3", ("dissimilar", "random_filters", "relative"), where)
    t1 = _section(doc, "table1", ("treatment", "selffer"), where)
    sim = _section(doc, "similarity", ("transfer",), where)
    cross = _section(doc, "cross", ("frozen", "tuned", "random"), where)
    fills = tuple(_record(Fill, e, f"{where}: figure2 fill {i + 1}")
                  for i, e in enumerate(_entries(f2, "fills", where)))
    for i, f in enumerate(fills):
        _check_treatments(f"{where}: figure2 fill {i + 1}", (REFERENCE, *LINES), "the reference or a line of Figure 2",
                          lower=f.lower)
        _check_treatments(f"{where}: figure2 fill {i + 1}", LINES, "a line of Figure 2", upper=f.upper)
    readings = []
    for i, e in enumerate(_entries(f2, "readings", where)):
        name = f"{where}: figure2 reading {e.get('label', i + 1) if isinstance(e, dict) else i + 1}"
        r = _record(Reading, e, name)
        _check_treatments(name, LINES, "a line of Figure 2", line=r.line, above=r.above)
        if r.point not in READING_POINTS:
            raise ValueError(f"{name}: point {r.point!r} is not one of {', '.join(READING_POINTS)}")
        if r.point == "furthest_above" and not r.above:
            raise ValueError(f"{name}: point furthest_above needs the lines it is above (above: [...])")
        if not r.claims or not all(isinstance(c, str) for c in r.claims):
            raise ValueError(f"{name}: claims {list(r.claims)!r} is not a list of claim keys")
        if len(r.spot) != 4 or r.spot[2] not in ("left", "center", "right") or \
                r.spot[3] not in ("top", "center", "bottom") or not all(isinstance(v, (int, float)) for v in r.spot[:2]):
            raise ValueError(f"{name}: spot {list(r.spot)!r} is not [x, y, left|center|right, top|center|bottom]")
        readings.append(r)
    if len({r.label for r in readings}) != len(readings):
        raise ValueError(f"{where}: figure2: two readings have the same label")
    relative = tuple(_record(Relative, e, f"{where}: figure3 relative series {i + 1}")
                     for i, e in enumerate(_entries(f3, "relative", where)))
    for i, r in enumerate(relative):
        name = f"{where}: figure3 relative series {i + 1}"
        if r.split_kind not in SPLIT_KINDS:
            raise ValueError(f"{name}: split_kind {r.split_kind!r} is not one of {', '.join(SPLIT_KINDS)}")
        # a random-split series is a line of Figure 2's means
        _check_treatments(name, LINES if r.split_kind == "random" else tuple(TREATMENT),
                          "a line of Figure 2" if r.split_kind == "random" else "a treatment", treatment=r.treatment)
    if len({(r.series, r.split_kind) for r in relative}) != len(relative) or \
            len({r.split_kind for r in relative}) != len(relative):
        raise ValueError(f"{where}: figure3: one relative series per split kind (drawn in its panel's colours)")
    for section, values in (("figure3", {k: f3[k] for k in ("dissimilar", "random_filters")}), ("table1", t1),
                            ("similarity", sim), ("cross", cross)):
        _check_treatments(f"{where}: {section}", **values)
    return Figures(fills, tuple(readings), f3["dissimilar"], f3["random_filters"], relative, t1["treatment"],
                   t1["selffer"], sim["transfer"], cross["frozen"], cross["tuned"], cross["random"])


FIGURES: Figures = load_figures()
