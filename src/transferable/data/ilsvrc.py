"""Ingest: turn raw data into a class catalog and an image index, without extracting anything to disk.

Three layouts are read (``fmt='auto'`` picks by what is in the root):

* ``tars``:   the official ILSVRC2012 files: ``ILSVRC2012_img_train.tar`` (a tar of per-class tars
  ``nXXXXXXXX.tar``), ``ILSVRC2012_img_val.tar`` (flat ``ILSVRC2012_val_NNNNNNNN.JPEG``) and
  ``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` and the validation ground truth). The train tar is
  indexed by walking tar headers only, so the 140 GB archive is never extracted: each image is recorded by
  its byte offset and size inside the outer archive and later read with one seek.
* ``tree``:   an extracted copy: ``train/<wnid>/*.JPEG`` and either ``val/*.JPEG`` (flat, labelled by the
  devkit, given as the tar.gz or an extracted ``ILSVRC2012_devkit_t12/`` folder) or ``val/<wnid>/*``.
* ``folder``: any image-folder tree ``train/<class>/*``, ``val/<class>/*`` (no devkit; classes are the
  folder names in sorted order), for asking the paper's question of your own data.

The class index is the position in sorted-WNID (or sorted folder name) order, as in the paper
(``ilsvrc12/synsets.txt`` is sorted by WNID); the devkit's ILSVRC2012_ID is only used to read labels.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .errors import IngestError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The real devkit's meta.mat is ~0.4 MB and its ground truth ~0.2 MB: anything far larger is refused from
# its size before it is read (a small .tar.gz can hold gigabytes of zeros).
MAX_DEVKIT_FILE = 64 << 20
_VAL_RE = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")

CATALOG_COLUMNS = ["class_index", "wnid", "words", "ancestors", "num_train", "num_val"]
IMAGE_COLUMNS = ["subset", "class_index", "source", "path", "offset", "size", "member"]


@dataclass
class Synset:
    ilsvrc_id: int
    wnid: str
    words: str
    children: list[int]


# ----------------------------------------------------------------------------------------------- devkit
def _safe_member(name: str, archive: Path) -> str:
    # what PurePosixPath(name).is_absolute() or ".." in .parts says, at string speed (called per image)
    if name.startswith(("/", "\\")) or ".." in name.split("/"):
        raise IngestError(f"{archive}: refusing member with an unsafe path {name!r}")
    return name


def read_meta(meta_bytes: bytes, where: str) -> dict[int, Synset]:
    from scipy.io import loadmat

    try:
        mat = loadmat(io.BytesIO(meta_bytes), squeeze_me=True)
        synsets = np.atleast_1d(mat["synsets"])
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a bad file
        raise IngestError(f"{where}: cannot read the 'synsets' struct array of meta.mat ({e})") from e
    out: dict[int, Synset] = {}
    for s in synsets:
        children = np.atleast_1d(s["children"]).astype(int).tolist() if np.size(s["children"]) else []
        sid = int(s["ILSVRC2012_ID"])
        out[sid] = Synset(sid, str(s["WNID"]), str(s["words"]), children)
    return out


def _devkit_files(root: Path) -> tuple[bytes, bytes, str]:
    """meta.mat and the validation ground truth, from the devkit tar.gz or an extracted devkit folder."""
    tar_path = root / DEVKIT_TAR
    folder = root / DEVKIT_DIR
    if tar_path.is_file():
        want = {"data/meta.mat": None, "data/ILSVRC2012_validation_ground_truth.txt": None}
        try:
            with tarfile.open(tar_path, "r:gz") as tf:
                for m in tf:
                    rel = "/".join(PurePosixPath(m.name).parts[1:])
                    if rel in want and m.isfile():
                        _safe_member(m.name, tar_path)
                        _check_devkit_size(f"{tar_path}: {rel}", m.size)
                        want[rel] = tf.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise IngestError(f"{tar_path}: cannot read the devkit archive ({e})") from e
        missing = [k for k, v in want.items() if v is None]
        if missing:
            raise IngestError(f"{tar_path}: devkit lacks {missing}")
        return want["data/meta.mat"], want["data/ILSVRC2012_validation_ground_truth.txt"], str(tar_path)
    if folder.is_dir():
        meta, gt = folder / "data/meta.mat", folder / "data/ILSVRC2012_validation_ground_truth.txt"
        for f in (meta, gt):
            if not f.is_file():
                raise IngestError(f"{f}: missing from the extracted devkit")
            _check_devkit_size(str(f), f.stat().st_size)
        return meta.read_bytes(), gt.read_bytes(), str(folder)
    raise IngestError(f"{root}: no devkit found (expected {DEVKIT_TAR} or an extracted {DEVKIT_DIR}/)")


def _check_devkit_size(where: str, size: int) -> None:
    if size > MAX_DEVKIT_FILE:
        raise IngestError(f"{where} is {size} bytes, more than the {MAX_DEVKIT_FILE >> 20} MB any ILSVRC2012 "
                          "devkit file needs (the real meta.mat is about 0.4 MB): refusing to read it")


def catalog_from_devkit(root: Path) -> tuple[pd.DataFrame, dict[int, int], np.ndarray, str]:
    """Catalog of the leaf classes (sorted WNID order), ILSVRC2012_ID -> class index, val labels (IDs)."""
    meta, gt, where = _devkit_files(root)
    synsets = read_meta(meta, where)
    parent: dict[int, int] = {}
    for s in synsets.values():
        for c in s.children:
            parent[c] = s.ilsvrc_id
    leaves = sorted((s for s in synsets.values() if not s.children), key=lambda s: s.wnid)
    if not leaves:
        raise IngestError(f"{where}: meta.mat has no leaf synsets")

    def ancestors(sid: int) -> str:
        chain, seen = [], set()
        while sid in parent and sid not in seen:
            seen.add(sid)
            sid = parent[sid]
            chain.append(synsets[sid].wnid)
        return ";".join(reversed(chain))  # root first

    cat = pd.DataFrame(
        {
            "class_index": range(len(leaves)),
            "wnid": [s.wnid for s in leaves],
            "words": [s.words for s in leaves],
            "ancestors": [ancestors(s.ilsvrc_id) for s in leaves],
        }
    )
    id_to_index = {s.ilsvrc_id: i for i, s in enumerate(leaves)}
    gt_where = f"{where}: data/ILSVRC2012_validation_ground_truth.txt"
    try:
        labels = np.array([int(x) for x in gt.decode().split()], dtype=np.int64)
    except ValueError as e:
        raise IngestError(f"{gt_where}: not a list of integers") from e
    return cat, id_to_index, labels, gt_where


# ---------------------------------------------------------------------------------------------- indexing
def _index_train_tar(path: Path, wnid_to_index: dict[str, int], log=None) -> list[tuple]:
    rows: list[tuple] = []
    total, t0, shown = path.stat().st_size, time.time(), 0.0
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as outer:
            for m in outer:
                done = m.offset_data / max(total, 1)
                if log and done - shown >= 0.05:  # headers only: progress is the position in the archive
                    shown = done
                    rate = m.offset_data / max(time.time() - t0, 1e-9) / 1e6
                    log(f"indexing {path.name}: {100 * done:.0f}% ({len(rows)} images so far), {rate:.0f} MB/s "
                        f"of archive, ETA {(total - m.offset_data) / 1e6 / max(rate, 1e-9):.0f} s")
                _safe_member(m.name, path)
                if not m.isfile():
                    continue
                wnid, ext = os.path.splitext(m.name)
                if ext != ".tar":
                    raise IngestError(f"{path}: unexpected member {m.name!r} (expected per-class nXXXXXXXX.tar)")
                if wnid not in wnid_to_index:
                    raise IngestError(f"{path}: member {m.name!r} is not a class of the devkit")
                cls = wnid_to_index[wnid]
                base = m.offset_data
                inner_file = outer.extractfile(m)
                try:
                    with tarfile.open(fileobj=inner_file, mode="r:") as inner:
                        for im in inner:
                            _safe_member(im.name, path)
                            if im.isfile():
                                rows.append(("train", cls, "tar", str(path), base + im.offset_data, im.size,
                                             f"{m.name}/{im.name}"))
                except (tarfile.TarError, EOFError) as e:
                    raise IngestError(f"{path}: member {m.name!r} is not a readable tar ({e})") from e
    except (tarfile.TarError, EOFError) as e:
        raise IngestError(f"{path}: not a readable tar, or truncated ({e})") from e
    return rows


def _index_val_tar(path: Path, labels: np.ndarray, id_to_index: dict[int, int], gt_where: str) -> list[tuple]:
    rows: list[tuple] = []
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                _safe_member(m.name, path)
                if not m.isfile():
                    continue
                rows.append(_val_row(m.name, labels, id_to_index, gt_where, "tar", str(path), m.offset_data, m.size))
    except (tarfile.TarError, EOFError) as e:
        raise IngestError(f"{path}: not a readable tar, or truncated ({e})") from e
    return rows


def _val_row(name, labels, id_to_index, gt_where, source, path, offset, size) -> tuple:
    base = PurePosixPath(name).name
    mm = _VAL_RE.match(base)
    if not mm:
        raise IngestError(f"{path}: unexpected validation image name {name!r}")
    i = int(mm.group(1))
    if not 1 <= i <= len(labels):
        raise IngestError(f"{path}: validation image {name!r} has no label in {gt_where} ({len(labels)} lines)")
    sid = int(labels[i - 1])
    if sid not in id_to_index:
        raise IngestError(
            f"{gt_where}: line {i} gives label {sid} for {name!r}, outside the class range "
            f"(leaf ILSVRC2012_IDs are {min(id_to_index)}..{max(id_to_index)})"
        )
    return ("val", id_to_index[sid], source, path, offset, size, name)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


@dataclass
class SubsetWalk:
    """The one walk of an extracted tree's or image folder's ``train/`` or ``val/`` that ingest and the
    raw-data fingerprint share (``rawfiles``), so both read the same files. One rule: a class folder is a
    folder (or a link to one: followed) directly in the subset folder, and its images are the image files
    directly in it (links followed). Not read, and said: folders nested inside a class folder, and loose
    files beside the class folders (except a flat ``val/`` of loose images, labelled by the devkit).
    Nothing is walked deeper than that, so a link that loops back cannot loop the walk."""

    classes: list[Path]
    flat: list[Path]
    nested: list[Path]
    loose: list[Path]

    def notes(self) -> list[str]:
        out = []
        for what, items in (("folder(s) nested in a class folder", self.nested),
                            ("loose file(s) beside the class folders", self.loose)):
            if items:
                out.append(f"{len(items)} {what} not read (e.g. {items[0]})")
        return out


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(folders, files) directly in ``folder``, links followed, from directory entries (the file type comes
    with the entry: no stat per image, 1.28 M of them on ImageNet)."""
    dirs, files = [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_dir():
                dirs.append(Path(e.path))
            elif e.is_file():
                files.append(Path(e.path))
    return sorted(dirs), sorted(files)


def walk_subset(folder: Path, flat_ok: bool = False) -> SubsetWalk:
    classes, files = _entries(folder)
    flat = [p for p in files if p.suffix.lower() in IMAGE_EXTS] if flat_ok and not classes else []
    loose = [p for p in files if p not in set(flat) and p.suffix.lower() in IMAGE_EXTS]
    nested = [q for d in classes for q in _entries(d)[0]]
    return SubsetWalk(classes, flat, nested, loose)


def _index_class_dirs(folder: Path, subset: str, name_to_index: dict[str, int], log=None) -> list[tuple]:
    walk = walk_subset(folder)
    for note in walk.notes():
        if log:
            log(f"{folder}: {note}")
    rows = []
    for d in walk.classes:
        if d.name not in name_to_index:
            raise IngestError(f"{d}: class folder {d.name!r} is not a class of the training set")
        for f in _files(d):
            rows.append((subset, name_to_index[d.name], "file", str(f), 0, f.stat().st_size, f.name))
    return rows


# ------------------------------------------------------------------------------------------------ ingest
def detect_format(root: Path) -> str:
    if (root / TRAIN_TAR).is_file() or (root / VAL_TAR).is_file():
        return "tars"
    if (root / "train").is_dir():
        if (root / DEVKIT_TAR).is_file() or (root / DEVKIT_DIR).is_dir():
            return "tree"
        return "folder"
    raise IngestError(
        f"{root}: no dataset found: expected {TRAIN_TAR} + {VAL_TAR} + {DEVKIT_TAR}, "
        "or an extracted train/ (+ val/ and the devkit), or an image-folder tree train/<class>/, val/<class>/"
    )


def count_classes(root: str | os.PathLike, fmt: str = "auto") -> int | None:
    """The number of classes at ``root``, cheaply (the devkit's leaves, or the train/ folders), so that a
    config can be checked before any job runs. None when it cannot be told."""
    root = Path(root)
    try:
        fmt = detect_format(root) if fmt == "auto" else fmt
        if fmt in ("tars", "tree"):
            return len(catalog_from_devkit(root)[0])
        return sum(1 for p in (root / "train").iterdir() if p.is_dir())
    except (IngestError, OSError):
        return None  # ingest will say what is wrong, naming the file


def ingest(root: str | os.PathLike, fmt: str = "auto", log=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (catalog, images) for the dataset at ``root``. See the module docstring for layouts.
    ``log`` (a print-like function) gets progress lines while the train archive is indexed."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: data root does not exist or is not a directory")
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "tars":
        for f in (TRAIN_TAR, VAL_TAR):
            if not (root / f).is_file():
                raise IngestError(f"{root / f}: missing (the official layout needs {TRAIN_TAR}, {VAL_TAR}, {DEVKIT_TAR})")
        cat, id_to_index, labels, gt_where = catalog_from_devkit(root)
        wnid_to_index = dict(zip(cat.wnid, cat.class_index))
        rows = _index_train_tar(root / TRAIN_TAR, wnid_to_index, log)
        rows += _index_val_tar(root / VAL_TAR, labels, id_to_index, gt_where)
    elif fmt == "tree":
        cat, id_to_index, labels, gt_where = catalog_from_devkit(root)
        wnid_to_index = dict(zip(cat.wnid, cat.class_index))
        rows = _index_class_dirs(root / "train", "train", wnid_to_index, log)
        val = root / "val"
        if not val.is_dir():
            raise IngestError(f"{val}: missing (an extracted tree needs train/ and val/)")
        walk = walk_subset(val, flat_ok=True)
        if walk.classes:
            rows += _index_class_dirs(val, "val", wnid_to_index, log)
        else:
            for f in walk.flat:
                rows.append(_val_row(f.name, labels, id_to_index, gt_where, "file", str(f), 0, f.stat().st_size))
    elif fmt == "folder":
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not classes:
            raise IngestError(f"{root / 'train'}: no class folders")
        cat = pd.DataFrame({"class_index": range(len(classes)), "wnid": classes, "words": classes, "ancestors": ""})
        name_to_index = {c: i for i, c in enumerate(classes)}
        rows = _index_class_dirs(root / "train", "train", name_to_index, log)
        if not (root / "val").is_dir():
            raise IngestError(f"{root / 'val'}: missing (an image-folder tree needs train/<class>/ and val/<class>/)")
        rows += _index_class_dirs(root / "val", "val", name_to_index, log)
    else:
        raise IngestError(f"data.format: unknown format {fmt!r} (allowed: auto, tars, tree, folder)")

    images = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    counts = images.groupby(["subset", "class_index"]).size().unstack(0).reindex(cat.class_index).fillna(0)
    cat["num_train"] = counts.get("train", 0).astype(int).to_numpy() if "train" in counts else 0
    cat["num_val"] = counts.get("val", 0).astype(int).to_numpy() if "val" in counts else 0
    for subset, col in (("train", "num_train"), ("val", "num_val")):
        empty = cat.loc[cat[col] == 0, "wnid"].tolist()
        if empty:
            raise IngestError(f"{root}: classes with no {subset} images: {empty[:10]}{' ...' if len(empty) > 10 else ''}")
    images = images.sort_values(["subset", "class_index", "path", "offset"], kind="stable").reset_index(drop=True)
    return cat[CATALOG_COLUMNS], images


def read_image_bytes(source: str, path: str, offset: int, size: int, member: str,
                     handles: dict | None = None) -> bytes:
    """The encoded bytes of one indexed image: one seek into an archive (``source == "tar"``, the file
    handle kept in ``handles``), or one file read."""
    if source == "file":
        with open(path, "rb") as f:
            return f.read()
    handles = handles if handles is not None else {}
    f = handles.get(path)
    if f is None:
        f = handles[path] = open(path, "rb")
    f.seek(int(offset))
    data = f.read(int(size))
    if len(data) != int(size):
        raise IngestError(f"{path}: member {member!r} is truncated ({len(data)} of {size} bytes)")
    return data
