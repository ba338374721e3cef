"""Preprocessed shards: every image decoded once, warped to size x size RGB, stored as raw uint8 pixels
or (``preprocess.format: jpeg``) re-encoded as JPEG and decoded in batches while training.

Shards depend only on the raw data and the preprocessing setting, never on a split, so every split and
every net reads the same files. Layout of one part (a block of consecutive classes)::

    part{k}/train_{class:05d}.npy          raw: uint8 (N, 3, S, S)
    part{k}/val_{class:05d}.npy            raw: uint8 (M, 3, S, S)
    part{k}/train_{class:05d}.jpeg.npy     jpeg: uint8 (bytes,), the N JPEG files one after the other
    part{k}/train_{class:05d}.offsets.npy  jpeg: int64 (N + 1,), where each starts (and the last ends)
    part{k}/val_...                        the same for the validation images
    part{k}/sum_{class:05d}.npy            float64 (3, S, S): sum of the class's train images as training
                                           sees them (for jpeg: decoded again), so that the per-pixel mean
                                           image of any set of classes (the paper's mean image of a half) is
                                           a sum of per-class sums, without rereading images
    part{k}/counts.json                    the setting and each class's image counts
    part{k}/rejects.csv                    images skipped under data.on_corrupt: skip
    part{k}/digest.txt                     SHA-256 of every array (a checkpoint tells its data by it)

One class is read without touching the other classes' bytes (the files can be memory-mapped). A raw shard
job's memory does not grow with its part: pixels are appended to the files as images arrive; a JPEG job
keeps its part's files (~30 KB each) in memory until it writes them.

This module writes a shard set; reader.py reads it, pixels.py decodes and encodes the images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import advice, atomic
from .errors import IngestError, ShardError
from .ilsvrc import read_image_bytes
from .formats import RESIZES, SHARD_FORMATS as FORMATS
from .pixels import decode, encode_jpeg
from ..provenance import file_digest
from .reader import DIGEST_BLOCK, FILE_DIGESTS

def class_blocks(num_classes: int, parts: int) -> list[list[int]]:
    parts = max(1, min(parts, num_classes))
    return [b.tolist() for b in np.array_split(np.arange(num_classes), parts)]


def seal_part(part_dir: str | os.PathLike, counts: dict, size: int, resize: str = "fast", fmt: str = "raw",
              quality: int = 90) -> str:
    """Finish a part folder: ``counts.json`` (the setting and {class: [train, val] image counts}) and
    ``digest.txt``: the SHA-256 of every array file in it (name and bytes, in name order), so that an index,
    and a checkpoint through it, can tell its data. Returns the digest."""
    part_dir = Path(part_dir)
    (part_dir / "counts.json").write_text(json.dumps(
        {"size": int(size), "resize": resize, "format": fmt, "quality": int(quality) if fmt == "jpeg" else None,
         "counts": {str(c): list(n) for c, n in counts.items()}}))
    h, lines = hashlib.sha256(), []
    for f in sorted(part_dir.glob("*.npy")):
        h.update(f.name.encode() + b"\0")
        one = hashlib.sha256()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 24):
                h.update(block)
                one.update(block)
        lines.append(f"{one.hexdigest()}  {f.stat().st_size}  {f.name}\n")
    (part_dir / FILE_DIGESTS).write_text("".join(lines))  # each file's, for the jobs that read it (verify)
    (part_dir / "digest.txt").write_text(h.hexdigest() + "\n")
    return h.hexdigest()


class _PartWriter:
    """Per-class arrays of one part, written image by image: raw pixels appended to ``.npy`` files opened
    with the expected shape in their header (plain writes, not memory maps, so that the written pages are
    page cache the kernel may drop, not the job's resident memory; at most 64 open at once), JPEG files to
    per-class lists (~30 KB each); the per-class sums of the training images as they come. A raw job's
    memory does not grow with its part (``transferable bench ingest`` measures it)."""

    def __init__(self, tmp: Path, size: int, fmt: str, quality: int, expected: dict):
        self.tmp, self.size, self.fmt, self.quality, self.expected = tmp, size, fmt, quality, expected
        self.filled: dict = {}
        self.files: dict = {}
        self.jpegs: dict = {}
        self.sums: dict = {}

    _OPEN_MAX = 64  # open raw files at once (a part of 500 classes would otherwise hold 1,000)

    def _header(self, n: int) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                                   "shape": (n, 3, self.size, self.size)})
        return buf.getvalue()

    def _raw_file(self, subset: str, c: int):
        key = (subset, c)
        f = self.files.pop(key, None)
        if f is None:
            path = self.tmp / f"{subset}_{c:05d}.npy"
            if key in self.filled:  # written before, closed to bound the open files: append to it
                f = open(path, "r+b")
                f.seek(0, os.SEEK_END)
            else:
                f = open(path, "wb")
                f.write(self._header(self.expected[key]))
            if len(self.files) >= self._OPEN_MAX:
                self.files.pop(next(iter(self.files))).close()  # the least recently used
        self.files[key] = f  # most recently used last
        return f

    def add(self, subset: str, c: int, arr: np.ndarray) -> None:
        key = (subset, c)
        if self.fmt == "jpeg":
            blob = encode_jpeg(arr, self.quality)
            self.jpegs.setdefault(key, []).append(blob)
            if subset == "train":  # the mean of what training will see: the decoded JPEG (Pillow and
                # torchvision's CPU decoder are the same libjpeg-turbo, bit for bit: tests/test_preprocess.py)
                arr = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1)
        else:
            self._raw_file(subset, c).write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
        if subset == "train":
            if c not in self.sums:
                self.sums[c] = np.zeros((3, self.size, self.size), np.float64)
            self.sums[c] += arr
        self.filled[key] = self.filled.get(key, 0) + 1

    def finish(self, classes: list[int]) -> dict:
        """Write what is left; return {class: [train count, val count]}."""
        for f in self.files.values():
            f.close()
        self.files.clear()
        for (subset, c), n in self.filled.items():
            if self.fmt != "raw" or n == self.expected[(subset, c)]:
                continue
            # images were skipped (data.on_corrupt: skip): the header says fewer, the file ends there
            path = self.tmp / f"{subset}_{c:05d}.npy"
            old, new = self._header(self.expected[(subset, c)]), self._header(n)
            if len(new) == len(old):
                with open(path, "r+b") as f:
                    f.write(new)
                    f.truncate(len(new) + n * 3 * self.size * self.size)
            else:  # the header's padding could not absorb the shorter count (rare): rewrite the file
                data = np.fromfile(path, dtype=np.uint8, offset=len(old)).reshape(n, 3, self.size, self.size)
                np.save(path.with_suffix(".short.npy"), data)
                os.replace(path.with_suffix(".short.npy"), path)
        for (subset, c), blobs in self.jpegs.items():
            np.save(self.tmp / f"{subset}_{c:05d}.jpeg.npy", np.frombuffer(b"".join(blobs), dtype=np.uint8))
            np.save(self.tmp / f"{subset}_{c:05d}.offsets.npy",
                    np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64))
        for c in classes:
            np.save(self.tmp / f"sum_{c:05d}.npy", self.sums[c])
        return {c: [self.filled.get(("train", c), 0), self.filled.get(("val", c), 0)] for c in classes}

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _tmp_name(out: Path) -> Path:
    return out.with_name(f"{out.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _remove_orphans(out: Path, max_age_s: float = 86400) -> None:
    """Temporary part folders of jobs that died (SIGKILL, a node failure) without removing theirs: on this
    host, those whose process is gone; from other hosts (a shared file system), those untouched for a day.
    A live job's folder is left alone."""
    host = socket.gethostname()
    for stale in out.parent.glob(out.name + ".tmp-*"):
        name_host, _, pid = stale.name[len(out.name) + 5:].rpartition("-")
        if name_host == host and pid.isdigit():
            try:
                os.kill(int(pid), 0)
                continue  # alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # another user's live process
        elif time.time() - stale.stat().st_mtime < max_age_s:
            continue
        shutil.rmtree(stale, ignore_errors=True)


def write_part(images_csv: str, k: int, parts: int, size: int, out_dir: str, on_corrupt: str = "error",
               log=print, exif: str = "ignore", resize: str = "fast", fmt: str = "raw", quality: int = 90) -> dict:
    """Write part ``k`` of ``parts`` into ``out_dir`` (created atomically: built in a temp dir, renamed),
    with ``counts.json`` and ``digest.txt``: the SHA-256 of every array it holds, so that a checkpoint can
    tell its data. ``resize``: see ``decode``; ``fmt``: raw pixels, or JPEG at ``quality`` (1..100)."""
    if fmt not in FORMATS:
        raise ValueError(f"preprocess.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"preprocess.jpeg_quality: {quality} is outside 1..100")
    if resize not in RESIZES:
        raise ValueError(f"preprocess.resize: {resize!r} is not one of {', '.join(RESIZES)}")
    images = atomic.read_csv(images_csv, keep_default_na=False)
    num_classes = int(images.class_index.max()) + 1
    blocks = class_blocks(num_classes, parts)
    if not 0 <= k < len(blocks):
        raise ValueError(f"shard part {k} of {parts}: the data has {num_classes} classes, so parts "
                         f"0..{len(blocks) - 1} exist (preprocess.parts is clamped to the number of classes)")
    classes = blocks[k]
    rows = images[images.class_index.isin(classes)].sort_values(["path", "offset"], kind="stable")
    expected = {(sub, int(c)): int(n) for (sub, c), n in rows.groupby(["subset", "class_index"]).size().items()}
    out = Path(out_dir)
    _remove_orphans(out)
    key = _inputs_key(rows, size=size, resize=resize, fmt=fmt, quality=quality, exif=exif, on_corrupt=on_corrupt)
    t0 = time.time()
    kept = out.parent / REUSE_DIR / out.name
    if (kept / "key.txt").is_file() and (kept / "key.txt").read_text().strip() != key:
        shutil.rmtree(kept, ignore_errors=True)  # stale: its inodes would double the part's disk while it rebuilds
    if _reuse(out, key, log):
        counts = json.loads((out / "counts.json").read_text())["counts"]
        rejects = len(atomic.read_csv(out / "rejects.csv")) if (out / "rejects.csv").is_file() else 0
        return {"classes": classes, "images": sum(sum(v) for v in counts.values()), "rejects": rejects,
                "seconds": time.time() - t0, "reused": True}
    tmp = _tmp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    handles: dict = {}
    writer = _PartWriter(tmp, size, fmt, int(quality), expected)
    rejects = []
    t0, total, last = time.time(), len(rows), 0.0
    try:
        for i, row in enumerate(rows.itertuples(index=False)):
            where = f"{row.path}" + (f": member {row.member!r}" if row.source == "tar" else "")
            try:
                arr = decode(read_image_bytes(row.source, row.path, row.offset, row.size, row.member, handles),
                             size, where, exif, resize)
            except IngestError as e:
                if on_corrupt != "skip":
                    raise IngestError(f"{e} (set data.on_corrupt: skip to record it in a rejects table)") from e
                rejects.append({"subset": row.subset, "class_index": row.class_index, "path": row.path,
                                "member": row.member, "error": str(e)})
                continue
            writer.add(row.subset, int(row.class_index), arr)
            done = (i + 1) / max(total, 1)
            if done - last >= 0.05 or i + 1 == total:
                last = done
                rate = (i + 1) / max(time.time() - t0, 1e-9)
                log(f"shard part {k}/{parts}: {i + 1}/{total} images ({100 * done:.0f}%), "
                    f"{rate:.0f} img/s, ETA {(total - i - 1) / rate:.0f} s")
        for c in classes:
            for subset in ("train", "val"):
                if not writer.filled.get((subset, c)):
                    raise IngestError(f"class {c}: no readable {subset} images left for part {k}")
        seal_part(tmp, writer.finish(classes), size, resize, fmt, quality)
        pd.DataFrame(rejects, columns=["subset", "class_index", "path", "member", "error"]).to_csv(
            tmp / "rejects.csv", index=False)
        for f in handles.values():
            f.close()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _keep_for_reuse(out, key)
    return {"classes": classes, "images": total - len(rejects), "rejects": len(rejects),
            "seconds": time.time() - t0}


# A part whose inputs did not change is linked, not rebuilt. Snakemake reruns every shard part when ingest
# reruns (images.csv is their common input), so one added image would decode the whole dataset again
# (1.6 core-hours at paper scale). Each finished part is also hard-linked (no extra disk) under
# <shards>/.reuse/part<k>/ with the key of its inputs; a job whose key matches links those files instead.
REUSE_DIR = ".reuse"


def _inputs_key(rows: pd.DataFrame, **settings) -> str:
    """What a part's content depends on: its image rows, each source file's size and mtime (a replaced
    image or archive changes them), the settings, and the shard code."""
    from ..provenance import code_digest

    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(code_digest("shards").encode())
    h.update(rows.to_csv(index=False).encode())
    for path in sorted(set(rows["path"])):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _reuse(out: Path, key: str, log) -> bool:
    """Link the kept part with this key into ``out``, after checking its files against their digests (a
    damaged kept file is rebuilt, not reused). False when there is none or it does not check."""
    kept = out.parent / REUSE_DIR / out.name
    if not (kept / "key.txt").is_file() or (kept / "key.txt").read_text().strip() != key:
        return False
    try:
        for line in (kept / FILE_DIGESTS).read_text().splitlines():
            digest, size, name = line.split("  ", 2)
            f = kept / name
            if f.stat().st_size != int(size) or file_digest(f, DIGEST_BLOCK) != digest:
                log(f"{f}: kept copy damaged: rebuilding the part")
                return False
        tmp = _tmp_name(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in kept.iterdir():
            if f.name != "key.txt":
                os.link(f, tmp / f.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except (OSError, ValueError) as e:
        log(f"{kept}: not reusable ({e}): rebuilding the part")
        return False
    log(f"{out.name}: inputs unchanged since it was built (same images, files, settings and code): "
        f"linked from {kept}")
    return True


def _keep_for_reuse(out: Path, key: str) -> None:
    kept = out.parent / REUSE_DIR / out.name
    shutil.rmtree(kept, ignore_errors=True)
    try:
        kept.mkdir(parents=True)
        for f in out.iterdir():
            os.link(f, kept / f.name)
        (kept / "key.txt").write_text(key + "\n")
    except OSError:  # no hard links here (another file system): nothing kept, nothing lost
        shutil.rmtree(kept, ignore_errors=True)


def write_index(part_dirs: list[str], size: int, out_json: str, rejects_csv: str) -> dict:
    """Join the parts: class -> part, counts, the storage format, and all rejects (written atomically)."""
    classes, counts, rejects, settings = {}, {}, [], {}
    digest = hashlib.sha256()
    for d in part_dirs:
        d = Path(d)
        if not (d / "digest.txt").is_file() or not (d / "counts.json").is_file():
            raise IngestError(f"{d}: no digest.txt or counts.json (written by an older version of transferable, "
                              "or not by write_part): rebuild the shards with: "
                              + advice.snakemake_command("--forcerun", "shard_part", "--force", out_json))
        digest.update((d / "digest.txt").read_text().strip().encode())
        part = json.loads((d / "counts.json").read_text())
        setting = {k: part.get(k) for k in ("size", "resize", "format", "quality")}
        if settings and setting != settings:
            raise IngestError(f"{d}: written with {setting}, other parts with {settings}: rebuild the shards")
        if setting["size"] != size:
            raise IngestError(f"{d}: images of {setting['size']} px, the index is for {size} px")
        settings = setting
        for c, n in part["counts"].items():
            classes[int(c)] = d.name
            counts[int(c)] = n
        r = atomic.read_csv(d / "rejects.csv", keep_default_na=False)
        if len(r):
            rejects.append(r)
    n = len(classes)
    if sorted(classes) != list(range(n)):
        raise IngestError(f"{out_json}: shard parts do not cover classes 0..{n - 1}")
    index = {"size": size, "format": settings.get("format", "raw"), "quality": settings.get("quality"),
             "resize": settings.get("resize"), "num_classes": n,
             "parts": {str(c): classes[c] for c in range(n)},
             "counts": {str(c): counts[c] for c in range(n)}, "digest": digest.hexdigest()}
    atomic.write_text(out_json, json.dumps(index, indent=1))
    rej = pd.concat(rejects) if rejects else pd.DataFrame(columns=["subset", "class_index", "path", "member", "error"])
    atomic.write_text(rejects_csv, rej.to_csv(index=False))
    return index
