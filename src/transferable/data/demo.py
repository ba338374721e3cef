"""An embedded, procedurally drawn stand-in for ILSVRC2012, written in the official on-disk format.

Why: the pipeline's subject is ImageNet, but ImageNet is 150 GB behind a licence. This module writes a small
dataset that the pipeline can ingest with exactly the code paths that read the real thing, so the whole workflow
(ingest, splits, training, transfer, figures) runs end to end in minutes on a laptop CPU and in CI.

What is written into ``out_dir`` (each file atomically):

* ``ILSVRC2012_img_train.tar`` -- an uncompressed tar of per-class tars ``nXXXXXXXX.tar``, each holding
  ``nXXXXXXXX_<k>.JPEG`` (k = 1, 2, ...), as in the official training archive;
* ``ILSVRC2012_img_val.tar`` -- a flat tar of ``ILSVRC2012_val_%08d.JPEG`` with all classes shuffled;
* ``ILSVRC2012_devkit_t12.tar.gz`` -- ``ILSVRC2012_devkit_t12/data/meta.mat`` (the ``synsets`` struct array with
  the official eight fields) and ``data/ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line).
  Leaves carry ILSVRC2012_IDs 1..C in an order that is *not* sorted-WNID order (as in the real devkit), and the
  hierarchy has a root, two family nodes ("man-made" = WordNet's artifact n00021939, "natural" = natural object
  n00019128), one level of subgroups, and the leaf classes.

What the images are, and why they make the transfer experiment meaningful (Yosinski et al. 2014 split classes
into halves and ask which layers carry over):

* low-level primitives shared by *every* class -- oriented strokes and edges, colour blobs, stripes, noise
  textures -- the kind of features first layers learn and that should transfer between any two halves;
* class identity lives at a higher level: a class is a fixed arrangement of a few parts (part type, relative
  position, size, orientation, colour), jittered per image in position, scale, rotation and colour, partly
  dropped, and mixed with distractor parts (some borrowed from the other family). Classes of one subgroup share
  an anchor part, so classes are learnable but confusable;
* two families with different image statistics: "natural" has noisy earthy backgrounds and organic parts
  (blobs, rings, wavy strokes, leaves, spot clusters); "man-made" has flat, striped or gridded backgrounds in
  saturated colours and straight-edged parts (rectangles, crosses, triangles, hatched bars, frames). Splitting
  by family reproduces the paper's dissimilar-task experiment.

Everything is a pure function of ``seed`` (numpy PCG64 streams keyed by [seed, stream, class, image]), and the
archives carry constant metadata, so the same seed gives byte-identical files. ``inject`` adds the oddities of
the real archives (CMYK, grayscale and PNG-as-JPEG members) and plain corruption (truncated JPEG, empty member,
truncated outer tar) for robustness tests of the reader.
"""

from __future__ import annotations

import colorsys
import gzip
import io
import math
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from ..atomic import atomic_path

__all__ = ["generate", "imagenet_size", "SIZES", "INJECTIONS", "FAMILIES", "TRAIN_TAR", "VAL_TAR", "DEVKIT_TGZ"]

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TGZ = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"

FAMILIES = ("man-made", "natural")
INJECTIONS = ("cmyk", "grayscale", "png_as_jpeg", "truncated_jpeg", "zero_byte", "truncated_tar")
_JPEG_FAULTS = ("cmyk", "grayscale", "png_as_jpeg", "truncated_jpeg", "zero_byte")

# The official meta.mat field order; torchvision reads num_children positionally (index 4).
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
                 "num_train_images")

_JPEG_QUALITY = 90
_SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing for PIL's aliased primitives
_MTIME = 1338508800  # 2012-06-01T00:00:00Z, a constant so archives are byte-reproducible

# Random-stream keys: np.random.default_rng([seed, stream, ...]).
_S_LAYOUT, _S_CLASS, _S_TRAIN, _S_VAL, _S_GROUP, _S_INJECT = range(6)

_ROOT = ("n00001740", "entity", "that which is perceived or known or inferred to have its own distinct existence")
_FAMILY_NODES = {
    "man-made": ("n00021939", "artifact, artefact, man-made object",
                 "a man-made object; here: straight-edged parts on flat, striped or gridded saturated backgrounds"),
    "natural": ("n00019128", "natural object",
                "an object occurring naturally; here: organic parts on noisy earthy backgrounds"),
}
# Leaf WNID number ranges per family: they overlap, so sorted-WNID order interleaves the families.
_LEAF_RANGE = {"man-made": (2_600_000, 13_000_000), "natural": (1_400_000, 9_600_000)}

_KINDS = {
    "man-made": ("rect", "cross", "triangle", "hatched", "frame"),
    "natural": ("blob", "ring", "wavy", "leaf", "spots"),
}
# A subgroup is named after its anchor part.
_GROUP_NOUN = {
    "rect": "crate", "cross": "signpost", "triangle": "kite", "hatched": "barrier", "frame": "window",
    "blob": "pebble", "ring": "shell", "wavy": "worm", "leaf": "fern", "spots": "moth",
}
_ADJECTIVES = {
    "man-made": ("striped", "checked", "bolted", "framed", "painted", "folded", "riveted", "stacked", "slotted",
                 "hinged", "glazed", "welded", "notched", "stamped", "braced", "lacquered", "flanged", "ribbed",
                 "gilded", "enamelled", "chromed", "padded", "rusted", "boxed"),
    "natural": ("spotted", "mossy", "speckled", "banded", "furred", "veined", "freckled", "mottled", "dappled",
                "tufted", "ringed", "frilled", "knobbly", "downy", "scaly", "feathered", "brindled", "crested",
                "hairy", "dusky", "lobed", "horned", "pale", "marsh"),
}


# --------------------------------------------------------------------------------------------------------------
# Class layout: hierarchy, WNIDs, IDs and the visual definition of each class
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    kind: str
    x: float  # centre, in units of the composition square's side, relative to its centre
    y: float
    size: float  # half-extent, in units of the square's side
    aspect: float  # minor/major extent (or wave amplitude)
    angle: float  # radians
    hsv: tuple[float, float, float]
    accent: tuple[float, float, float]  # second colour: hatching, leaf midrib
    shape: tuple[float, ...]  # kind-specific fixed geometry (blob radii, spot offsets)


@dataclass(frozen=True)
class _Class:
    index: int  # family-major order: man-made 0..cpf-1, then natural
    family: str
    group: int  # subgroup index within the family
    wnid: str
    words: str
    parts: tuple[_Part, ...]


@dataclass(frozen=True)
class _Node:
    sid: int
    wnid: str
    words: str
    gloss: str
    children: tuple[int, ...]
    height: int
    num_train: int


def _hsv_rgb(hsv: tuple[float, float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hsv[0] % 1.0, min(max(hsv[1], 0.0), 1.0), min(max(hsv[2], 0.0), 1.0))
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def _part_colour(family: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """A part colour in HSV from the family's palette."""
    if family == "man-made":
        if rng.random() < 0.15:  # black, white or grey
            return 0.0, 0.0, float(rng.choice([0.08, 0.5, 0.95]))
        # Twelve quantised hues: classes share exact hues, so colour alone does not identify a class.
        return float(rng.integers(12) / 12), float(rng.uniform(0.75, 1.0)), float(rng.uniform(0.75, 1.0))
    kind = rng.integers(6)
    ranges = [  # greens, browns, ochre, rust, flower purple, bone white
        ((0.22, 0.38), (0.40, 0.75), (0.30, 0.70)),
        ((0.05, 0.10), (0.45, 0.80), (0.25, 0.55)),
        ((0.10, 0.15), (0.55, 0.90), (0.60, 0.90)),
        ((0.00, 0.04), (0.50, 0.80), (0.40, 0.70)),
        ((0.74, 0.86), (0.30, 0.60), (0.45, 0.80)),
        ((0.08, 0.14), (0.05, 0.18), (0.80, 0.95)),
    ][kind]
    return tuple(float(rng.uniform(*r)) for r in ranges)  # type: ignore[return-value]


def _accent_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A second colour for hatching and leaf midribs: near-black or near-white, in HSV."""
    return float(rng.random()), float(rng.uniform(0, 0.3)), float(rng.choice([0.1, 0.92]))


def _part_shape(kind: str, rng: np.random.Generator) -> tuple[float, ...]:
    if kind == "blob":  # 16 radius multipliers from two random harmonics: a fixed organic outline
        t = np.arange(16) * (2 * math.pi / 16)
        r = 1 + 0.18 * np.sin(2 * t + rng.uniform(0, 6.3)) + 0.12 * np.sin(3 * t + rng.uniform(0, 6.3))
        return tuple(float(v) for v in r)
    if kind == "spots":  # 3-5 dots: (dx, dy, radius) in units of the part size
        n = int(rng.integers(3, 6))
        ang = rng.uniform(0, 2 * math.pi) + np.arange(n) * (2 * math.pi / n) + rng.normal(0, 0.3, n)
        dist = rng.uniform(0.45, 0.8, n)
        rad = rng.uniform(0.22, 0.38, n)
        return tuple(float(v) for trip in zip(np.cos(ang) * dist, np.sin(ang) * dist, rad) for v in trip)
    return ()


def _sample_part(kind: str, family: str, x: float, y: float, rng: np.random.Generator,
                 hsv: tuple[float, float, float] | None = None) -> _Part:
    aspect = {"rect": (0.35, 0.9), "hatched": (0.25, 0.4), "triangle": (0.6, 1.2), "frame": (0.6, 1.0),
              "cross": (0.7, 1.0), "wavy": (0.2, 0.45), "ring": (0.6, 1.0), "leaf": (0.35, 0.5),
              "blob": (0.65, 1.0), "spots": (1.0, 1.0)}[kind]
    accent = _accent_colour(rng)
    return _Part(kind=kind, x=x, y=y, size=float(rng.uniform(0.13, 0.22)), aspect=float(rng.uniform(*aspect)),
                 angle=float(rng.uniform(0, math.pi)) if family == "natural" else float(rng.integers(4) * math.pi / 4),
                 hsv=hsv if hsv is not None else _part_colour(family, rng), accent=accent,
                 shape=_part_shape(kind, rng))


def _positions(n: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """n part centres in the composition square, spread out (min distance 0.24)."""
    pts: list[tuple[float, float]] = []
    while len(pts) < n:
        for _ in range(200):
            p = (float(rng.uniform(-0.28, 0.28)), float(rng.uniform(-0.28, 0.28)))
            if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 > 0.24 ** 2 for q in pts):
                break
        pts.append(p)
    return pts


def _num_groups(cpf: int) -> int:
    return min(cpf, max(2, min(4, round(cpf / 5))))


def _layout(seed: int, cpf: int, train_per_class: int) -> tuple[list[_Class], list[_Node], dict[str, int]]:
    """The classes (family-major order), the synset nodes (ordered by ILSVRC2012_ID), and WNID -> ID."""
    rng = np.random.default_rng([seed, _S_LAYOUT])
    taken = {_ROOT[0]} | {w for w, _, _ in _FAMILY_NODES.values()}

    def fresh_wnid(lo: int, hi: int) -> str:
        while True:
            w = f"n{int(rng.integers(lo, hi)):08d}"
            if w not in taken:
                taken.add(w)
                return w

    n_groups = _num_groups(cpf)
    classes: list[_Class] = []
    groups: dict[str, list[tuple[str, str, str, str]]] = {}  # family -> [(wnid, words, gloss, anchor kind)]
    for f, family in enumerate(FAMILIES):
        anchors = [str(k) for k in rng.permutation(_KINDS[family])[:n_groups]]
        groups[family] = []
        for g, anchor in enumerate(anchors):
            noun = _GROUP_NOUN[anchor]
            groups[family].append((fresh_wnid(2_000, 19_000), noun,
                                   f"demo subgroup of {family} classes sharing a {anchor} part", anchor))
        adjectives = [str(a) for a in rng.permutation(_ADJECTIVES[family])]
        group_rng = [np.random.default_rng([seed, _S_GROUP, f, g]) for g in range(n_groups)]
        anchor_hsv = [_part_colour(family, r) for r in group_rng]
        for j in range(cpf):
            g = j * n_groups // cpf
            anchor = groups[family][g][3]
            crng = np.random.default_rng([seed, _S_CLASS, f, j])
            n_parts = int(crng.choice([3, 3, 4]))
            pos = _positions(n_parts, crng)
            kinds = [anchor] + [str(k) for k in crng.choice(_KINDS[family], n_parts - 1)]
            # The anchor keeps its subgroup hue most of the time: siblings look alike.
            parts = tuple(
                _sample_part(k, family, *p, crng, hsv=anchor_hsv[g] if i == 0 and crng.random() < 0.75 else None)
                for i, (k, p) in enumerate(zip(kinds, pos))
            )
            words = f"{adjectives[j % len(adjectives)]} {_GROUP_NOUN[anchor]}"
            if j >= len(adjectives):  # more classes than adjectives: number the repeats
                words += f" {j // len(adjectives) + 1}"
            classes.append(_Class(index=f * cpf + j, family=family, group=g, wnid=fresh_wnid(*_LEAF_RANGE[family]),
                                  words=words, parts=parts))

    # Leaf ILSVRC2012_IDs 1..C by a seeded permutation that is guaranteed not to be sorted-WNID order.
    n_classes = len(classes)
    by_wnid = sorted(classes, key=lambda c: c.wnid)
    perm = rng.permutation(n_classes)
    if n_classes > 1 and np.array_equal(perm, np.arange(n_classes)):
        perm[[0, 1]] = perm[[1, 0]]
    leaf_id = {c.wnid: int(perm[i]) + 1 for i, c in enumerate(by_wnid)}

    # Internal nodes: root, the two families, then subgroups, IDs C+1.. in that order.
    nodes: list[_Node] = []
    root_id = n_classes + 1
    family_id = {family: n_classes + 2 + f for f, family in enumerate(FAMILIES)}
    next_id = n_classes + 4
    group_nodes: list[_Node] = []
    for family in FAMILIES:
        group_ids = []
        for g, (wnid, words, gloss, _) in enumerate(groups[family]):
            kids = tuple(sorted(leaf_id[c.wnid] for c in classes if c.family == family and c.group == g))
            group_nodes.append(_Node(next_id, wnid, words, gloss, kids, 1, 0))
            group_ids.append(next_id)
            next_id += 1
        wnid, words, gloss = _FAMILY_NODES[family]
        nodes.append(_Node(family_id[family], wnid, words, gloss, tuple(group_ids), 2, 0))
    nodes.append(_Node(root_id, *_ROOT, tuple(family_id.values()), 3, 0))
    nodes.extend(group_nodes)
    for c in classes:
        gloss = f"demo {c.family} class: " + ", ".join(
            f"{p.kind} #{'%02x%02x%02x' % _hsv_rgb(p.hsv)} at ({p.x:+.2f}, {p.y:+.2f})" for p in c.parts)
        nodes.append(_Node(leaf_id[c.wnid], c.wnid, c.words, gloss, (), 0, train_per_class))
    nodes.sort(key=lambda n: n.sid)
    return classes, nodes, leaf_id


# --------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------

_CIRCLE = np.stack([np.cos(np.arange(16) * (2 * math.pi / 16)), np.sin(np.arange(16) * (2 * math.pi / 16))], 1)
_CIRCLE_CLOSED = np.concatenate([_CIRCLE, _CIRCLE[:2]])
_t = np.linspace(0, 1, 9)
_LEAF = np.concatenate([np.stack([2 * _t - 1, np.sin(math.pi * _t)], 1),
                        np.stack([1 - 2 * _t[1:-1], -np.sin(math.pi * _t[1:-1])], 1)])
_WAVE = np.stack([np.linspace(-1, 1, 13), np.sin(np.linspace(0, 3 * math.pi, 13))], 1)
_SQUARE = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float)
_SQUARE_CLOSED = np.concatenate([_SQUARE, _SQUARE[:2]])
_TRIANGLE = np.array([(0, -1), (0.9, 0.75), (-0.9, 0.75)], dtype=float)
_a = 0.32
_CROSS = np.array([(-_a, -1), (_a, -1), (_a, -_a), (1, -_a), (1, _a), (_a, _a), (_a, 1), (-_a, 1), (-_a, _a),
                   (-1, _a), (-1, -_a), (-_a, -_a)], dtype=float)
_HATCH = np.array([(x, s) for x in np.linspace(-0.75, 0.75, 5) for s in (-1.0, 1.0)])  # hatch line ends
_HATCH[:, 0] += _HATCH[:, 1] * 0.25  # slanted


def _tf(unit: np.ndarray, cx: float, cy: float, sx: float, sy: float, ang: float) -> list[float]:
    """Scale a unit shape by (sx, sy), rotate by ang, move to (cx, cy); flat [x0, y0, x1, y1, ...]."""
    c, s = math.cos(ang), math.sin(ang)
    x, y = unit[:, 0] * sx, unit[:, 1] * sy
    return np.column_stack((cx + c * x - s * y, cy + s * x + c * y)).ravel().tolist()


def _draw_part(d: ImageDraw.ImageDraw, p: _Part, cx: float, cy: float, r: float, ang: float,
               rgb: tuple[int, int, int], accent: tuple[int, int, int], flip: float = 1.0) -> None:
    """Draw part p centred at (cx, cy) with half-extent r, rotated by ang; flip = -1 mirrors its shape."""
    k, asp, fr = p.kind, p.aspect, flip * r
    if k == "blob":
        d.polygon(_tf(_CIRCLE * np.asarray(p.shape)[:, None], cx, cy, fr, r * asp, ang), fill=rgb)
    elif k == "ring":
        d.line(_tf(_CIRCLE_CLOSED, cx, cy, r, r * asp, ang), fill=rgb, width=max(2, round(0.32 * r)), joint="curve")
    elif k == "wavy":
        d.line(_tf(_WAVE, cx, cy, fr * 1.2, r * asp, ang), fill=rgb, width=max(2, round(0.25 * r)), joint="curve")
    elif k == "leaf":
        d.polygon(_tf(_LEAF, cx, cy, r * 1.2, r * 1.2 * asp, ang), fill=rgb)
        d.line(_tf(_LEAF[[0, 8]], cx, cy, r * 1.3, 0, ang), fill=accent, width=max(1, round(0.08 * r)))
    elif k == "spots":
        sh = p.shape
        c, s = math.cos(ang), math.sin(ang)
        for i in range(0, len(sh), 3):
            x, y, rr = flip * sh[i], sh[i + 1], r * sh[i + 2]
            x, y = cx + r * (c * x - s * y), cy + r * (s * x + c * y)
            d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=rgb)
    elif k == "rect":
        d.polygon(_tf(_SQUARE, cx, cy, r, r * asp, ang), fill=rgb)
    elif k == "cross":
        d.polygon(_tf(_CROSS, cx, cy, r, r * asp, ang), fill=rgb)
    elif k == "triangle":
        d.polygon(_tf(_TRIANGLE, cx, cy, r, r * asp, ang), fill=rgb)
    elif k == "hatched":
        d.polygon(_tf(_SQUARE, cx, cy, r * 1.2, r * 1.2 * asp, ang), fill=rgb)
        pts = _tf(_HATCH, cx, cy, fr * 1.2, r * 1.2 * asp, ang)
        w = max(1, round(0.1 * r))
        for i in range(0, len(pts), 4):
            d.line(pts[i:i + 4], fill=accent, width=w)
    elif k == "frame":
        d.line(_tf(_SQUARE_CLOSED, cx, cy, r, r * asp, ang), fill=rgb, width=max(2, round(0.3 * r)), joint="curve")
    else:  # pragma: no cover - kinds are a closed set
        raise ValueError(f"unknown part kind {k!r}")


def _jitter_hsv(hsv: tuple[float, float, float], rng: np.random.Generator) -> tuple[float, float, float]:
    return (hsv[0] + rng.normal(0, 0.025), hsv[1] * rng.uniform(0.85, 1.1), hsv[2] * rng.uniform(0.8, 1.15))


def _background(family: str, W: int, H: int, rng: np.random.Generator) -> Image.Image:
    if family == "natural":  # smooth two-colour noise field in earthy colours
        c1 = _hsv_rgb((rng.uniform(0.04, 0.30), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.65)))
        c2 = _hsv_rgb((rng.uniform(0.04, 0.30), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.65)))
        gx, gy = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        mask = Image.fromarray(rng.integers(0, 256, (gy, gx), dtype=np.uint8)).resize((W, H), Image.BICUBIC)
        return Image.composite(Image.new("RGB", (W, H), c1), Image.new("RGB", (W, H), c2), mask)
    c1 = _hsv_rgb((rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)))
    img = Image.new("RGB", (W, H), c1)
    style = rng.random()
    if style < 0.35:  # flat
        return img
    d = ImageDraw.Draw(img)
    c2 = _hsv_rgb((rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)))
    ang = rng.integers(4) * math.pi / 4 + rng.normal(0, 0.05)
    period = float(rng.uniform(6, 16)) * _SUPERSAMPLE
    D = W + H
    dirs = [ang] if style < 0.7 else [ang, ang + math.pi / 2]  # stripes, or a grid
    width = max(1, round(period * 0.5)) if style < 0.7 else int(rng.integers(1, 4))
    for a in dirs:
        c, s = math.cos(a), math.sin(a)
        for t in np.arange(-D / 2, D / 2, period):
            x0, y0 = W / 2 - s * t, H / 2 + c * t  # a point on the line, offset along the normal
            d.line((x0 - c * D, y0 - s * D, x0 + c * D, y0 + s * D), fill=c2, width=width)
    return img


SIZES = ("uniform", "imagenet")
STYLES = ("plain", "negative")
# ImageNet-like sizes (``sizes="imagenet"``), a model of ILSVRC2012's training images: most are Flickr's
# "medium" size with the long side at 500 px, the rest smaller (a few larger); 4:3 and 3:2 dominate, a
# fifth are portrait. It gives a mean of about 400 x 350 px and a median of 500 x 375 or so
# (tests/test_preprocess.py checks these), and with the grain below about 100 KB per JPEG at quality 90, as
# the real 140 GB / 1.28 M images (110 KB).
_LONG_500, _LONG_SMALLER = 0.45, 0.985  # P(long side = 500), P(<= 500): the rest are 501..1600 px
_ASPECTS, _ASPECT_P = (4 / 3, 3 / 2, 1.0), (0.55, 0.2, 0.12)  # the other 13 %: uniform in [1, 1.8]
_PORTRAIT = 0.22
_TEXTURE_AMP = 60.0  # amplitude of the fine grain (grey levels) that gives photos' JPEG weights


def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn from the ImageNet-like size model above."""
    u = rng.random()
    long = 500 if u < _LONG_500 else int(rng.integers(160, 500)) if u < _LONG_SMALLER else int(rng.integers(501, 1601))
    v = rng.random()
    cum = np.cumsum(_ASPECT_P)
    aspect = _ASPECTS[int(np.searchsorted(cum, v, side="right"))] if v < cum[-1] else rng.uniform(1.0, 1.8)
    short = max(32, round(long / aspect))
    return (long, short) if rng.random() >= _PORTRAIT else (short, long)


def _texture(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Fine grain: white noise minus its own half-resolution (Lanczos down, bicubic up) version, so its
    energy lies in the finest octave, which a warp to 256 px mostly removes. Photos owe much of their
    JPEG weight to such detail; with it, originals weigh ~100 KB at quality 90 (ImageNet's: ~110 KB) and
    their 256 x 256 re-encodings ~33 KB, heavier than ImageNet's 17-20 KB (docs/performance.md), so decode
    rates measured on them err on the slow side."""
    n = rng.standard_normal((h, w, 3), dtype=np.float32)
    low = np.stack([np.asarray(Image.fromarray(n[..., c], mode="F").resize((max(1, w // 2), max(1, h // 2)),
                                                                             Image.LANCZOS).resize((w, h), Image.BICUBIC))
                    for c in range(3)], -1)
    return (n - low) * _TEXTURE_AMP


def _render(cls: _Class, rng: np.random.Generator, min_side: int, max_side: int, sizes: str = "uniform",
            style: str = "plain") -> Image.Image:
    if sizes == "imagenet":
        w, h = imagenet_size(rng)
    else:
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    W, H = w * _SUPERSAMPLE, h * _SUPERSAMPLE
    S = min(W, H)  # the class composition lives in the central square, so centre crops keep it
    fam, other = cls.family, FAMILIES[1 - FAMILIES.index(cls.family)]
    img = _background(fam, W, H, rng)
    d = ImageDraw.Draw(img)

    # Shared low-level clutter: short oriented strokes in any colour.
    for _ in range(int(rng.integers(2, 6))):
        x, y, a, L = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(0, math.pi), rng.uniform(0.06, 0.14) * S
        col = _hsv_rgb((rng.random(), rng.uniform(0, 1), rng.uniform(0.1, 1)))
        d.line((x - L * math.cos(a), y - L * math.sin(a), x + L * math.cos(a), y + L * math.sin(a)), fill=col,
               width=int(rng.integers(1, 4)))

    def distractor(scale: tuple[float, float]) -> None:
        f = fam if rng.random() < 0.65 else other
        p = _sample_part(str(rng.choice(_KINDS[f])), f, 0.0, 0.0, rng)
        _draw_part(d, p, rng.uniform(0, W), rng.uniform(0, H), rng.uniform(*scale) * S, p.angle,
                   _hsv_rgb(p.hsv), _hsv_rgb(p.accent))

    for _ in range(int(rng.integers(1, 3))):
        distractor((0.07, 0.14))

    # The class composition: global shift, scale, rotation, mirror and hue shift, then per-part jitter. The
    # global jitter is large enough that a fixed pixel template (a linear classifier) does much worse than a
    # convnet that learns the parts and their arrangement.
    gcx, gcy = W / 2 + rng.uniform(-0.15, 0.15) * S, H / 2 + rng.uniform(-0.15, 0.15) * S
    gs, ga, gm, gh = rng.uniform(0.75, 1.25), rng.normal(0, 0.35), rng.choice([-1.0, 1.0]), rng.normal(0, 0.04)
    cg, sg = math.cos(ga), math.sin(ga)
    for i, p in enumerate(cls.parts):
        if i and rng.random() < 0.1:  # occasionally a part is missing (occlusion, pose)
            continue
        x, y = gm * (p.x + rng.normal(0, 0.035)), p.y + rng.normal(0, 0.035)
        cx, cy = gcx + gs * S * (cg * x - sg * y), gcy + gs * S * (sg * x + cg * y)
        r = p.size * gs * S * rng.uniform(0.85, 1.15)
        hsv = _jitter_hsv((p.hsv[0] + gh, p.hsv[1], p.hsv[2]), rng)
        _draw_part(d, p, cx, cy, r, gm * p.angle + ga + rng.normal(0, 0.2), _hsv_rgb(hsv), _hsv_rgb(p.accent), gm)

    if rng.random() < 0.4:
        distractor((0.06, 0.1))

    img = img.reduce(_SUPERSAMPLE)
    grain = 7.0 if fam == "natural" else 2.5
    arr = np.asarray(img, dtype=np.float32) + rng.standard_normal((h, w, 1), dtype=np.float32) * grain
    if sizes == "imagenet":
        arr += _texture(w, h, rng)
    arr = np.clip(arr, 0, 255)
    if style == "negative":  # photographic negatives: every low-level statistic flipped, the shapes kept
        arr = 255 - arr
    return Image.fromarray(arr.astype(np.uint8))


def _encode(img: Image.Image, fault: str | None) -> bytes:
    buf = io.BytesIO()
    if fault == "zero_byte":
        return b""
    if fault == "png_as_jpeg":
        img.save(buf, format="PNG")
        return buf.getvalue()
    if fault == "cmyk":
        img = img.convert("CMYK")
    elif fault == "grayscale":
        img = img.convert("L")
    img.save(buf, format="JPEG", quality=_JPEG_QUALITY)
    data = buf.getvalue()
    return data[: len(data) // 2] if fault == "truncated_jpeg" else data


# --------------------------------------------------------------------------------------------------------------
# Archive writing
# --------------------------------------------------------------------------------------------------------------


def _tarinfo(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    ti.mtime = _MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


@contextmanager
def _atomic(path: Path) -> Iterator[io.BufferedRandom]:
    """A binary file open on a temporary name; on success it replaces path (transferable.atomic)."""
    with atomic_path(path) as tmp, open(tmp, "w+b") as f:
        yield f


def _meta_mat(nodes: list[_Node]) -> bytes:
    synsets = np.empty((len(nodes), 1), dtype=[(f, object) for f in SYNSET_FIELDS])  # K x 1, as the official file
    for i, n in enumerate(nodes):
        synsets[i, 0] = (n.sid, n.wnid, n.words, n.gloss, len(n.children),
                         np.array(n.children, dtype=np.int64).reshape(1, -1), n.height, n.num_train)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets}, format="5", oned_as="row")
    data = bytearray(buf.getvalue())
    # savemat stamps the creation time into the 116-byte text header; make it constant for reproducibility.
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: transferable.data.demo".ljust(116, b" ")
    return bytes(data)


def _write_devkit(path: Path, nodes: list[_Node], val_ids: list[int]) -> None:
    gt = "".join(f"{i}\n" for i in val_ids).encode()
    with _atomic(path) as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name in (DEVKIT_DIR, f"{DEVKIT_DIR}/data"):
                    tar.addfile(_tarinfo(name, 0, directory=True))
                _add(tar, f"{DEVKIT_DIR}/data/meta.mat", _meta_mat(nodes))
                _add(tar, f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt", gt)


def _check_args(seed: int, classes_per_family: int, train_per_class: int, val_per_class: int, min_side: int,
                max_side: int, inject: Sequence[str], sizes: str = "uniform") -> tuple[str, ...]:
    if sizes not in SIZES:
        raise ValueError(f"sizes must be one of {', '.join(SIZES)}, got {sizes!r}")
    for name, v, lo in (("seed", seed, 0), ("classes_per_family", classes_per_family, 1),
                        ("train_per_class", train_per_class, 1), ("val_per_class", val_per_class, 1),
                        ("min_side", min_side, 8)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < min_side:
        raise ValueError(f"max_side must be an integer >= min_side ({min_side}), got {max_side!r}")
    names = (inject,) if isinstance(inject, str) else tuple(inject)
    bad = [n for n in names if n not in INJECTIONS]
    if bad:
        raise ValueError(f"unknown inject value(s) {', '.join(map(repr, bad))}; allowed: {', '.join(INJECTIONS)}")
    return tuple(dict.fromkeys(names))


def _fault_slots(faults, by_wnid, seed: int, train_per_class: int):
    """Where the injected faults go: distinct train images; with a truncated tar, only in classes before the
    cut so they stay reachable. The cut falls inside the class tar in the middle of the archive. Returns
    ({fault: member}, {(class index, k): fault}, the position of the class tar that is cut, or None)."""
    injected: dict[str, str] = {}
    slot_fault: dict[tuple[int, int], str] = {}
    cut_pos = len(by_wnid) // 2 if "truncated_tar" in faults else None
    jpeg_faults = [f for f in faults if f in _JPEG_FAULTS]
    if jpeg_faults:
        eligible = by_wnid[:cut_pos] if cut_pos is not None else by_wnid
        n_slots = len(eligible) * train_per_class
        if n_slots < len(jpeg_faults):
            raise ValueError(f"too few train images ({n_slots}) to hold the injections {jpeg_faults}")
        picks = np.random.default_rng([seed, _S_INJECT]).choice(n_slots, len(jpeg_faults), replace=False)
        for fault, slot in zip(jpeg_faults, picks):
            c, k = eligible[int(slot) // train_per_class], int(slot) % train_per_class + 1
            slot_fault[(c.index, k)] = fault
            injected[fault] = f"{c.wnid}_{k}.JPEG"
    return injected, slot_fault, cut_pos


def _write_train_tar(path: Path, by_wnid, seed, train_per_class, min_side, max_side, sizes, slot_fault, cut_pos,
                     injected: dict, style: str = "plain") -> None:
    """The train archive: one in-memory tar per class, appended to the outer tar in sorted-WNID order (cut in
    the middle of the class tar at ``cut_pos``, recorded in ``injected``)."""
    with _atomic(path) as f:
        cut = None
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as outer:
            for pos, c in enumerate(by_wnid):
                inner_buf = io.BytesIO()
                with tarfile.open(fileobj=inner_buf, mode="w", format=tarfile.USTAR_FORMAT) as inner:
                    for k in range(1, train_per_class + 1):
                        img = _render(c, np.random.default_rng([seed, _S_TRAIN, c.index, k]), min_side, max_side, sizes,
                                      style)
                        _add(inner, f"{c.wnid}_{k}.JPEG", _encode(img, slot_fault.get((c.index, k))))
                data = inner_buf.getvalue()
                _add(outer, f"{c.wnid}.tar", data)
                if pos == cut_pos:
                    data_start = outer.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                    cut = data_start + len(data) // 2
                    injected["truncated_tar"] = f"{c.wnid}.tar"
        if cut is not None:
            f.flush()
            f.truncate(cut)


def _write_val_tar(path: Path, classes, leaf_id, seed, val_per_class, min_side, max_side, sizes,
                   style: str = "plain") -> list[int]:
    """The validation archive: all classes shuffled; image i of the tar is line i of the ground truth
    (returned: the ground truth's ILSVRC2012 ids)."""
    order = [(c, k) for c in classes for k in range(1, val_per_class + 1)]
    perm = np.random.default_rng([seed, _S_VAL]).permutation(len(order))
    val_ids = []
    with _atomic(path) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i, j in enumerate(perm, start=1):
                c, k = order[int(j)]
                img = _render(c, np.random.default_rng([seed, _S_VAL, c.index, k]), min_side, max_side, sizes, style)
                _add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", _encode(img, None))
                val_ids.append(leaf_id[c.wnid])
    return val_ids


def generate(out_dir: str | os.PathLike, *, seed: int = 0, classes_per_family: int = 20,
             train_per_class: int = 200, val_per_class: int = 50, min_side: int = 32, max_side: int = 64,
             inject: Sequence[str] = (), sizes: str = "uniform", style: str = "plain") -> dict:
    """Write the demo dataset as the three official ILSVRC2012 archives into ``out_dir``.

    ``classes_per_family`` leaf classes per family (C = 2 x classes_per_family), ``train_per_class`` and
    ``val_per_class`` images per class, each image ``min_side``..``max_side`` pixels wide and (independently)
    high. ``sizes="imagenet"`` instead draws each image's size from a model of ILSVRC2012's (``imagenet_size``:
    mean about 400 x 350 px) and adds a photo-like texture, so that the JPEGs weigh what real ones do (about
    100 KB at quality 90): the data path is then measured at the paper's scale (``transferable bench ingest``).
    ``inject`` is a subset of :data:`INJECTIONS` (see the module docstring). ``style="negative"`` writes every
    image as its photographic negative (255 - pixel): the same kind of classes with every low-level statistic
    flipped (backgrounds, colours, edge polarity), a second dataset "of another kind" for transfer between
    datasets (configs/demo-cross.yaml).

    Returns {"classes", "train_images", "val_images", "bytes" (of the three files), "seconds",
    "families": {"man-made": [leaf WNIDs], "natural": [...]}, "injected": {kind: member name}}. For the JPEG
    faults the member name is the inner name ``nXXXXXXXX_<k>.JPEG`` (inside ``nXXXXXXXX.tar``); for
    ``truncated_tar`` it is the class tar ``nXXXXXXXX.tar`` that the file ends inside.
    """
    t0 = time.perf_counter()
    faults = _check_args(seed, classes_per_family, train_per_class, val_per_class, min_side, max_side, inject,
                         sizes)
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    seed = int(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes, nodes, leaf_id = _layout(seed, classes_per_family, train_per_class)
    by_wnid = sorted(classes, key=lambda c: c.wnid)  # the outer train tar's member order
    n_classes = len(classes)

    injected, slot_fault, cut_pos = _fault_slots(faults, by_wnid, seed, train_per_class)
    _write_train_tar(out / TRAIN_TAR, by_wnid, seed, train_per_class, min_side, max_side, sizes, slot_fault, cut_pos,
                     injected, style)
    val_ids = _write_val_tar(out / VAL_TAR, classes, leaf_id, seed, val_per_class, min_side, max_side, sizes, style)
    _write_devkit(out / DEVKIT_TGZ, nodes, val_ids)

    return {
        "classes": n_classes,
        "train_images": n_classes * train_per_class,
        "val_images": n_classes * val_per_class,
        "bytes": sum(os.path.getsize(out / n) for n in (TRAIN_TAR, VAL_TAR, DEVKIT_TGZ)),
        "seconds": round(time.perf_counter() - t0, 3),
        "families": {fam: sorted(c.wnid for c in classes if c.family == fam) for fam in FAMILIES},
        "injected": injected,
    }
