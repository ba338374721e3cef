"""Class splits: the authors' random A/B halves, explicit class-index ranges, and hierarchy ancestors.

A manifest lists, for each half, the ORIGINAL class indices (sorted-WNID order) in increasing order; a
net trained on a half uses label = position in that list, as the authors renumbered labels 0..N-1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class SplitError(ValueError):
    pass


def random_halves(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """The authors' algorithm (``ilsvrc12/make_reduced_dataset.py``): numpy's legacy global seeding with a
    one-element LIST ``[seed]`` (argparse ``nargs=1``; the int gives a different split), then half A is
    ``sorted(choice(arange(C), C // 2, replace=False))`` and B the rest."""
    rs = np.random.RandomState([int(seed)])  # same stream as np.random.seed([seed]) + np.random.choice
    a = sorted(int(i) for i in rs.choice(np.arange(num_classes), num_classes // 2, replace=False))
    chosen = set(a)
    return a, [i for i in range(num_classes) if i not in chosen]


def parse_ranges(text: str, num_classes: int, key: str = "ranges") -> list[int]:
    """'0-397,936-958,970' -> sorted class indices (inclusive ranges)."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            lo_i, hi_i = int(lo), int(hi) if hi else int(lo)
        except ValueError as e:
            raise SplitError(f"{key}: cannot parse {part!r} (expected 'i' or 'i-j')") from e
        if not 0 <= lo_i <= hi_i < num_classes:
            raise SplitError(f"{key}: range {part!r} outside the class indices 0..{num_classes - 1}")
        out.update(range(lo_i, hi_i + 1))
    return sorted(out)


def check_half_size(n: int, key: str) -> None:
    """A half must hold at least 2 classes: with one, every prediction is right and top-1 means nothing."""
    if n == 0:
        raise SplitError(f"{key}: the half has no classes")
    if n == 1:
        raise SplitError(f"{key}: the half has one class, so every prediction is right and its accuracy "
                         "means nothing; give it at least 2")


def by_ancestors(catalog: pd.DataFrame, ancestors: list[str], key: str = "ancestors") -> list[int]:
    """Classes having any of ``ancestors`` (WNIDs) in their devkit hierarchy path."""
    wanted = set(ancestors)
    paths = catalog["ancestors"].fillna("").astype(str).str.split(";")
    picked = [int(i) for i, p in zip(catalog.class_index, paths) if wanted & set(p)]
    if not picked:
        raise SplitError(f"{key}: no class has any of {sorted(wanted)} as an ancestor")
    return sorted(picked)


def make_manifest(name: str, spec: dict, catalog: pd.DataFrame) -> dict:
    """The manifest of split ``name`` from its config ``spec`` (see workflow/schemas/config.schema.yaml)."""
    c = len(catalog)
    kind = spec["kind"]
    if kind == "random":
        if c < 2:
            raise SplitError(f"splits.{name}: a random split needs at least 2 classes, the catalog has {c}")
        a, b = random_halves(c, spec["seed"])
        halves = {"A": {"classes": a}, "B": {"classes": b}}
    elif kind == "all":
        halves = {"A": {"classes": list(range(c))}}
    elif kind in ("ranges", "ancestors"):
        halves = {}
        for h, hs in spec["halves"].items():
            key = f"splits.{name}.halves.{h}"
            if kind == "ranges":
                classes = parse_ranges(hs["ranges"], c, key + ".ranges")
            else:
                classes = by_ancestors(catalog, hs["ancestors"], key + ".ancestors")
            halves[h] = {"classes": classes, "family": hs.get("family", "")}
        for h, hv in halves.items():
            check_half_size(len(hv["classes"]), f"splits.{name}.halves.{h}")
        (h1, c1), (h2, c2) = halves.items()
        overlap = set(c1["classes"]) & set(c2["classes"])
        if overlap:
            raise SplitError(f"splits.{name}: halves {h1} and {h2} share classes {sorted(overlap)[:10]}")
    else:
        raise SplitError(f"splits.{name}.kind: unknown kind {kind!r} (allowed: random, ranges, ancestors, all)")
    wnids = catalog.wnid.tolist()
    for h in halves.values():
        h["wnids"] = [wnids[i] for i in h["classes"]]
        h.setdefault("family", "")
    return {"split": name, "kind": kind, "num_classes": c, "halves": halves}
