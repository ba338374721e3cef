"""Preprocessed shards: every image decoded once, warped to size x size RGB, stored as raw uint8.

Shards depend only on the raw data and the preprocessing setting, never on a split, so every split and
every net reads the same files. Layout of one part (a block of consecutive classes)::

    part{k}/train_{class:05d}.npy   uint8 (N, 3, S, S)
    part{k}/val_{class:05d}.npy     uint8 (M, 3, S, S)
    part{k}/sum_{class:05d}.npy     float64 (3, S, S): sum of the class's train images, so that the
                                    per-pixel mean image of any set of classes (the paper's mean image of a
                                    half) is a sum of per-class sums, without rereading images
    part{k}/rejects.csv             images skipped under data.on_corrupt: skip

One class is read without touching the other classes' bytes (the files can be memory-mapped).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from .. import atomic
from .ilsvrc import IngestError, read_image_bytes


def class_blocks(num_classes: int, parts: int) -> list[list[int]]:
    parts = max(1, min(parts, num_classes))
    return [b.tolist() for b in np.array_split(np.arange(num_classes), parts)]


EXIF_ORIENTATION = ("ignore", "apply")


def decode(data: bytes, size: int, where: str, exif: str = "ignore") -> np.ndarray:
    """Decode any Pillow format (CMYK, grayscale, palette, 16-bit, float and PNG-as-JPEG included) to RGB,
    warp to size x size (the paper: ``convert -resize 256x256!``, aspect ratio not kept), return uint8
    (3, size, size). High-bit-depth and float images are scaled to 8 bits, not clipped (``to_8bit``).
    ``exif``: ``ignore`` keeps the stored pixel order, as the authors' ImageMagick ``convert`` does without
    ``-auto-orient``; ``apply`` rotates/flips by the EXIF Orientation tag first."""
    if not data:
        raise IngestError(f"{where}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # DCT-domain downscale, never below size: same result, faster
            if exif == "apply":
                im = ImageOps.exif_transpose(im)
            im = to_8bit(im, where)
            im = im.convert("RGB").resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except IngestError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise IngestError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def to_8bit(im: Image.Image, where: str) -> Image.Image:
    """An 8-bit image for Pillow's ``convert("RGB")``, which CLIPS wider values (a 16-bit grey 30000 would
    become 255, a float 0.5 would become 0). Integer images are scaled from their bit depth (16-bit PNG and
    TIFF: x * 255 / 65535, rounded); float images must lie in [0, 1] and are scaled by 255. Anything else
    is refused with a message naming the image (``data.on_corrupt: skip`` records and skips it)."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    a = np.asarray(im)
    if im.mode == "F":
        lo, hi = (float(np.min(a)), float(np.max(a))) if a.size else (0.0, 0.0)
        if not np.isfinite(a).all() or lo < 0 or hi > 1:
            raise IngestError(f"{where}: float image with values outside [0, 1] (min {lo:g}, max {hi:g}); "
                              "its meaning in 8 bits is unknown: convert it to 8 bits yourself")
        return Image.fromarray(np.rint(a * 255).astype(np.uint8))
    bits = 16
    if im.mode == "I" and im.format == "TIFF":
        bps = im.tag_v2.get(258, 16) if hasattr(im, "tag_v2") else 16  # BitsPerSample
        bits = int(bps[0] if isinstance(bps, tuple) else bps)
    a = a.astype(np.int64)
    top = (1 << bits) - 1
    if a.size and (a.min() < 0 or a.max() > top):
        raise IngestError(f"{where}: {bits}-bit integer image with values outside 0..{top} "
                          f"(min {a.min()}, max {a.max()}): convert it to 8 bits yourself")
    return Image.fromarray(((a * 255 + top // 2) // top).astype(np.uint8))


def seal_part(part_dir: str | os.PathLike) -> str:
    """Write ``digest.txt`` into a part folder: the SHA-256 of every array file in it (name and bytes, in
    name order), so that an index, and a checkpoint through it, can tell its data. Returns the digest."""
    part_dir = Path(part_dir)
    h = hashlib.sha256()
    for f in sorted(part_dir.glob("*.npy")):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 24):
                h.update(block)
    (part_dir / "digest.txt").write_text(h.hexdigest() + "\n")
    return h.hexdigest()


def write_part(images_csv: str, k: int, parts: int, size: int, out_dir: str, on_corrupt: str = "error",
               log=print, exif: str = "ignore") -> dict:
    """Write part ``k`` of ``parts`` into ``out_dir`` (created atomically: built in a temp dir, renamed),
    with ``digest.txt``: the SHA-256 of every array it holds, so that a checkpoint can tell its data."""
    images = pd.read_csv(images_csv, keep_default_na=False)
    num_classes = int(images.class_index.max()) + 1
    blocks = class_blocks(num_classes, parts)
    if not 0 <= k < len(blocks):
        raise ValueError(f"shard part {k} of {parts}: the data has {num_classes} classes, so parts "
                         f"0..{len(blocks) - 1} exist (preprocess.parts is clamped to the number of classes)")
    classes = blocks[k]
    rows = images[images.class_index.isin(classes)].sort_values(["path", "offset"], kind="stable")
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    handles: dict = {}
    arrays: dict[tuple[str, int], list[np.ndarray]] = {}
    rejects = []
    t0, total, last = time.time(), len(rows), 0.0
    try:
        for i, row in enumerate(rows.itertuples(index=False)):
            where = f"{row.path}" + (f": member {row.member!r}" if row.source == "tar" else "")
            try:
                arr = decode(read_image_bytes(row.source, row.path, row.offset, row.size, row.member, handles),
                             size, where, exif)
            except IngestError as e:
                if on_corrupt != "skip":
                    raise IngestError(f"{e} (set data.on_corrupt: skip to record it in a rejects table)") from e
                rejects.append({"subset": row.subset, "class_index": row.class_index, "path": row.path,
                                "member": row.member, "error": str(e)})
                continue
            arrays.setdefault((row.subset, int(row.class_index)), []).append(arr)
            done = (i + 1) / max(total, 1)
            if done - last >= 0.05 or i + 1 == total:
                last = done
                rate = (i + 1) / max(time.time() - t0, 1e-9)
                log(f"shard part {k}/{parts}: {i + 1}/{total} images ({100 * done:.0f}%), "
                    f"{rate:.0f} img/s, ETA {(total - i - 1) / rate:.0f} s")
        for c in classes:
            for subset in ("train", "val"):
                got = arrays.get((subset, c))
                if not got:
                    raise IngestError(f"class {c}: no readable {subset} images left for part {k}")
                np.save(tmp / f"{subset}_{c:05d}.npy", np.stack(got))
            np.save(tmp / f"sum_{c:05d}.npy", np.stack(arrays[("train", c)]).sum(0, dtype=np.float64))
        seal_part(tmp)
        pd.DataFrame(rejects, columns=["subset", "class_index", "path", "member", "error"]).to_csv(
            tmp / "rejects.csv", index=False)
        for f in handles.values():
            f.close()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"classes": classes, "images": total - len(rejects), "rejects": len(rejects),
            "seconds": time.time() - t0}


def write_index(part_dirs: list[str], size: int, out_json: str, rejects_csv: str) -> dict:
    """Join the parts: class -> part, counts, and all rejects (written atomically)."""
    classes, counts, rejects = {}, {}, []
    digest = hashlib.sha256()
    for d in part_dirs:
        d = Path(d)
        if not (d / "digest.txt").is_file():
            raise IngestError(f"{d}: no digest.txt (written by an older version of transferable, or not by "
                              "write_part): rebuild the shards (snakemake --forcerun shard_part)")
        digest.update((d / "digest.txt").read_text().strip().encode())
        for f in sorted(d.glob("train_*.npy")):
            c = int(f.stem.split("_")[1])
            n_train = np.load(f, mmap_mode="r").shape[0]
            n_val = np.load(d / f"val_{c:05d}.npy", mmap_mode="r").shape[0]
            classes[c] = d.name
            counts[c] = [n_train, n_val]
        r = pd.read_csv(d / "rejects.csv", keep_default_na=False)
        if len(r):
            rejects.append(r)
    n = len(classes)
    if sorted(classes) != list(range(n)):
        raise IngestError(f"{out_json}: shard parts do not cover classes 0..{n - 1}")
    index = {"size": size, "num_classes": n, "parts": {str(c): classes[c] for c in range(n)},
             "counts": {str(c): counts[c] for c in range(n)}, "digest": digest.hexdigest()}
    atomic.write_text(out_json, json.dumps(index, indent=1))
    rej = pd.concat(rejects) if rejects else pd.DataFrame(columns=["subset", "class_index", "path", "member", "error"])
    atomic.write_text(rejects_csv, rej.to_csv(index=False))
    return index


class Shards:
    """Read access to a shard set: per-class arrays (memory-mapped) and mean images."""

    def __init__(self, index_json: str | os.PathLike):
        self.root = Path(index_json).parent
        with open(index_json) as f:
            self.index = json.load(f)
        self.size = int(self.index["size"])
        # the content of every array (from the parts' digests); an index without one: its own text
        self.digest = self.index.get("digest") or hashlib.sha256(
            json.dumps(self.index, sort_keys=True).encode()).hexdigest()

    def _file(self, what: str, c: int) -> Path:
        return self.root / self.index["parts"][str(c)] / f"{what}_{c:05d}.npy"

    def array(self, subset: str, c: int) -> np.ndarray:
        return np.load(self._file(subset, c), mmap_mode="r")

    def count(self, subset: str, c: int) -> int:
        return int(self.index["counts"][str(c)][0 if subset == "train" else 1])

    def mean_image(self, classes: list[int]) -> np.ndarray:
        """Per-pixel mean of the training images of ``classes`` (float32, (3, S, S))."""
        if not classes:
            raise ValueError(f"{self.root}: the mean image of no classes (an empty half?)")
        total = sum(np.load(self._file("sum", c)) for c in classes)
        n = sum(self.count("train", c) for c in classes)
        return (total / n).astype(np.float32)

    def load(self, subset: str, classes: list[int], ram_limit: float | None = None) -> tuple[ImageSet, np.ndarray]:
        """The images of ``classes`` and their labels (= position of the class in ``classes``). In memory
        when they take less than ``ram_limit`` bytes (default: a quarter of the available memory),
        otherwise read on demand from the memory-mapped files (a paper-scale half is ~127 GB)."""
        xs = [self.array(subset, c) for c in classes]
        ys = np.concatenate([np.full(len(x), i, dtype=np.int64) for i, x in enumerate(xs)])
        return ImageSet(xs, ram_limit), ys


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ImageSet:
    """Images of several classes as one indexable set: one array in memory, or per-class memory maps."""

    def __init__(self, arrays: list[np.ndarray], ram_limit: float | None = None):
        self.shape = (sum(len(a) for a in arrays), *arrays[0].shape[1:])
        nbytes = sum(a.nbytes for a in arrays)
        limit = available_memory() / 4 if ram_limit is None else ram_limit
        self.in_memory = nbytes <= limit
        if self.in_memory:
            self.data = np.concatenate([np.asarray(a) for a in arrays])
        else:
            self.arrays = arrays
            self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: np.ndarray) -> np.ndarray:
        if self.in_memory:
            return self.data[idx]
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        cls = np.searchsorted(self.starts, idx, side="right") - 1
        for j in np.argsort(idx, kind="stable"):  # file order: sequential-ish reads
            out[j] = self.arrays[cls[j]][idx[j] - self.starts[cls[j]]]
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        return self.take(np.arange(start, min(stop, len(self))))
