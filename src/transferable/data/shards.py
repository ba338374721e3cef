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
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from .. import advice, atomic
from .ilsvrc import IngestError, read_image_bytes

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec (not a dependency here); they
# are what the product card names and they work: when torchvision drops them, decode_jpegs is the one
# function to port.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def class_blocks(num_classes: int, parts: int) -> list[list[int]]:
    parts = max(1, min(parts, num_classes))
    return [b.tolist() for b in np.array_split(np.arange(num_classes), parts)]


EXIF_ORIENTATION = ("ignore", "apply")
RESIZES = ("fast", "bicubic", "imagemagick")
FORMATS = ("raw", "jpeg")


def decode(data: bytes, size: int, where: str, exif: str = "ignore", resize: str = "fast") -> np.ndarray:
    """Decode any Pillow format (CMYK, grayscale, palette, 16-bit, float and PNG-as-JPEG included) to RGB,
    warp to size x size (the paper: ``convert -resize 256x256!``, aspect ratio not kept), return uint8
    (3, size, size). High-bit-depth and float images are scaled to 8 bits, not clipped (``to_8bit``).
    ``exif``: ``ignore`` keeps the stored pixel order, as the authors' ImageMagick ``convert`` does without
    ``-auto-orient``; ``apply`` rotates/flips by the EXIF Orientation tag first.

    ``resize`` (``preprocess.resize``):
      * ``fast``: a JPEG is first shrunk in the DCT domain (libjpeg's 1/2, 1/4, 1/8 scaling, never below
        ``size``), then resized bicubically: 2-4x faster on large images, not pixel-identical to a full decode;
      * ``bicubic``: full decode, bicubic (Keys, a = -0.5);
      * ``imagemagick``: full decode and the filter ImageMagick 6's ``-resize`` picks by default: Lanczos (3
        lobes, Pillow's) when an RGB image loses area; Mitchell-Netravali (B = C = 1/3, ``mitchell_resize``)
        when it gains some, and for greyscale, palette and alpha images, which ImageMagick reads as
        PseudoClass or with alpha (ImageNet: the images under 256 x 256 = 65,536 pixels and the greyscale
        JPEGs, a few percent). Against ``convert -resize 256x256!`` (6.9.11 Q16): within one grey level.
    """
    if not data:
        raise IngestError(f"{where}: empty file (0 bytes)")
    if resize not in RESIZES:
        raise ValueError(f"preprocess.resize: {resize!r} is not one of {', '.join(RESIZES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format == "JPEG" and resize == "fast":
                im.draft("RGB", (size, size))  # DCT-domain downscale, never below size
            if exif == "apply":
                im = ImageOps.exif_transpose(im)
            im = to_8bit(im, where)
            pseudo = im.mode in ("1", "L", "LA", "P", "PA", "RGBA") or "transparency" in im.info
            im = im.convert("RGB")
            if resize != "imagemagick":
                arr = np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.uint8)
            elif pseudo or size * size > im.width * im.height:
                arr = mitchell_resize(np.asarray(im), size)
            else:
                arr = np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.uint8)
    except IngestError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise IngestError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _mitchell(x: np.ndarray) -> np.ndarray:
    """The Mitchell-Netravali cubic, B = C = 1/3: ImageMagick's default filter for enlargements and
    PseudoClass images."""
    b = c = 1 / 3
    x = np.abs(x)
    near = ((12 - 9 * b - 6 * c) * x**3 + (-18 + 12 * b + 6 * c) * x**2 + (6 - 2 * b)) / 6
    far = ((-b - 6 * c) * x**3 + (6 * b + 30 * c) * x**2 + (-12 * b - 48 * c) * x + (8 * b + 24 * c)) / 6
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def _mitchell_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling weights as ImageMagick's resize computes them: pixel centres at +0.5, the
    filter stretched by the shrink factor (support 2 x max(1, n_in / n_out)), each row normalised."""
    scale = n_out / n_in
    blur = max(1.0, 1.0 / scale)
    support = 2.0 * blur
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) / scale
        start, stop = int(max(centre - support + 0.5, 0)), int(min(centre + support + 0.5, n_in))
        taps = _mitchell((np.arange(start, stop) - centre + 0.5) / blur)
        w[i, start:stop] = taps / taps.sum()
    return w


def mitchell_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 with the Mitchell filter, separable, as ``convert -resize
    {size}x{size}!`` does (which rounds from 16-bit quanta: results agree within one grey level)."""
    h, w = rgb.shape[:2]
    out = np.tensordot(_mitchell_weights(h, size), rgb.astype(np.float64), axes=(1, 0))  # (size, W, 3)
    out = np.tensordot(_mitchell_weights(w, size), out, axes=(1, 1))  # (size_x, size_y, 3)
    return np.clip(np.rint(out.transpose(1, 0, 2)), 0, 255).astype(np.uint8)


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    """A warped uint8 (3, S, S) image as a baseline JPEG (4:2:0, as photo JPEGs are) at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0))).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpegs(blobs: list, device: str | None = None, threads: int | None = None, stack: bool = True):
    """JPEG files (1-D uint8 tensors or bytes) -> uint8 tensor (B, 3, S, S) on ``device``, with
    ``torchvision.io.decode_jpeg``: one batched nvJPEG call on a GPU; on the CPU split between ``threads``
    threads (default: torch's intra-op threads), which decode in parallel (the decoder releases the GIL).
    ``stack=False`` on the CPU returns the list of (3, S, S) images: stacking a batch of 256 px images
    took half as long as decoding it here (53 ms against 98 ms for 256), and the CPU crop reads them one
    by one anyway."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    ts = [b if isinstance(b, torch.Tensor) else torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    if not ts:
        raise ValueError("decode_jpegs: no images")
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        # On a stream of its own, finished before it returns: torchvision's batched decoder allocates its
        # outputs on the current stream and decodes on streams of its own that do not wait for it, so on
        # the training stream it could be handed memory that queued kernels still read
        # (pytorch/vision#9606). The caller marks the result as used by its stream (record_stream).
        stream = decode_stream(dev)
        with torch.cuda.stream(stream):
            out = torch.stack(decode_jpeg(ts, mode=ImageReadMode.RGB, device=dev))
        stream.synchronize()
        return out
    k = max(1, min(threads or torch.get_num_threads(), len(ts)))

    def work(chunk):
        return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in chunk]

    if k == 1:
        out = work(ts)
    else:
        out = [None] * len(ts)
        for j, imgs in enumerate(_pool("decode", k).map(work, [ts[j::k] for j in range(k)])):
            out[j::k] = imgs
    return torch.stack(out) if stack else out


_POOLS: dict = {}  # (purpose, threads) -> a thread pool kept for the process's life
_DECODE_STREAMS: dict = {}  # (CUDA device, thread) -> the stream nvJPEG decodes on


def decode_stream(dev):
    """The CUDA stream nvJPEG decodes on for this device AND this thread: one per consumer. The read-ahead
    thread (training batches) and the main thread (evaluation) never share one, so an evaluation started
    while a prefetch decodes cannot wait on, or reuse memory of, the other's work."""
    import threading

    import torch

    key = (torch.device(dev), threading.get_ident())
    if key not in _DECODE_STREAMS:
        _DECODE_STREAMS[key] = torch.cuda.Stream(key[0])
    return _DECODE_STREAMS[key]


def _pool(name: str, k: int):
    from concurrent.futures import ThreadPoolExecutor

    if (name, k) not in _POOLS:
        _POOLS[(name, k)] = ThreadPoolExecutor(k, thread_name_prefix=name)
    return _POOLS[(name, k)]


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
    bits, signed = 16, im.mode.startswith("I;16S")
    if im.mode == "I" and im.format == "TIFF":
        tags = im.tag_v2 if hasattr(im, "tag_v2") else {}
        bps, fmt = tags.get(258, 16), tags.get(339, 1)  # BitsPerSample, SampleFormat (2: signed)
        bits = int(bps[0] if isinstance(bps, tuple) else bps)
        signed = int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2
    elif im.mode == "I":
        bits = 32  # a 32-bit integer image of another format (Pillow's mode I)
    if signed or bits > 16:
        raise IngestError(f"{where}: {'signed ' if signed else ''}{bits}-bit integer image: what its values mean in "
                          "8 bits is unknown (scaling a 32-bit range would make it black): convert it to 8 bits "
                          "yourself")
    a = a.astype(np.int64)
    top = (1 << bits) - 1
    if a.size and (a.min() < 0 or a.max() > top):
        raise IngestError(f"{where}: {bits}-bit integer image with values outside 0..{top} "
                          f"(min {a.min()}, max {a.max()}): convert it to 8 bits yourself")
    return Image.fromarray(((a * 255 + top // 2) // top).astype(np.uint8))


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


FILE_DIGESTS = "files.sha256"


class ShardError(RuntimeError):
    """A shard file that is missing, of the wrong size or content: names the part and how to rebuild it."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)  # hashlib releases the GIL on large blocks: threads hash in parallel
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
            if f.stat().st_size != int(size) or _sha256_file(f) != digest:
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


class Shards:
    """Read access to a shard set: per-class arrays (memory-mapped) and mean images."""

    def __init__(self, index_json: str | os.PathLike, root: str | os.PathLike | None = None):
        """``root``: where the parts' files are read from, when not beside the index (a staged copy)."""
        self.root = Path(root) if root is not None else Path(index_json).parent
        self.index_dir = Path(index_json).parent  # the parts' recorded digests stay there (files.sha256)
        with open(index_json) as f:
            self.index = json.load(f)
        self.size = int(self.index["size"])
        self.format = self.index.get("format", "raw")
        # the content of every array (from the parts' digests); an index without one: its own text
        self.digest = self.index.get("digest") or hashlib.sha256(
            json.dumps(self.index, sort_keys=True).encode()).hexdigest()

    def _file(self, what: str, c: int, suffix: str = ".npy") -> Path:
        return self.root / self.index["parts"][str(c)] / f"{what}_{c:05d}{suffix}"

    def array(self, subset: str, c: int) -> np.ndarray:
        """A class's images, uint8 (N, 3, S, S): memory-mapped (raw), or decoded (jpeg)."""
        if self.format == "jpeg":
            return self.load(subset, [c])[0].slice(0, self.count(subset, c))
        return np.load(self._file(subset, c), mmap_mode="r")

    def files(self, classes: list[int]) -> list[Path]:
        """Every file a training job reads for ``classes``: images of both subsets and the mean-image sums."""
        if self.format == "jpeg":
            names = [("train", ".jpeg.npy"), ("train", ".offsets.npy"), ("val", ".jpeg.npy"), ("val", ".offsets.npy")]
        else:
            names = [("train", ".npy"), ("val", ".npy")]
        return [self._file(what, c, suffix) for c in classes for what, suffix in names + [("sum", ".npy")]]

    def verify(self, classes: list[int], threads: int = 1, log=print, content: bool = True) -> dict:
        """Check every file of ``classes`` against the size and SHA-256 its shard job recorded
        (``files.sha256``), ``threads`` files at a time, before a job trains on them: a missing, truncated,
        zero-filled or flipped file raises ShardError naming the file, its part and the command that
        rebuilds the part (with the run's configuration). Reading them also brings them into the page cache
        the first epoch reads from. ``content`` False: presence and sizes only (no reading). The digests
        are read beside the index, the files from ``root`` (a staged copy is checked against the originals'
        digests). Parts written before per-file digests: sizes unchecked, said once. The first bad file
        stops the check at once."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        from .. import advice

        t0, recorded, unrecorded = time.time(), {}, set()
        for part in sorted({self.index["parts"][str(c)] for c in classes}):
            f = self.index_dir / part / FILE_DIGESTS
            if not f.is_file():
                unrecorded.add(part)
                continue
            for line in f.read_text().splitlines():
                digest, size, name = line.split("  ", 2)
                recorded[self.root / part / name] = (digest, int(size))
        original = {self.root / part: self.index_dir / part for part in self.index["parts"].values()}
        files = self.files(classes)

        def check(path: Path) -> int:
            part = original.get(path.parent, path.parent)  # the part to rebuild: the original, not a staged copy
            rebuild = advice.snakemake_command("--force", str(part))
            if not path.is_file():
                raise ShardError(f"{path}: missing from shard part {part.name}; rebuild the part with: {rebuild}")
            if part.name in unrecorded:
                return 0
            digest, size = recorded.get(path, (None, None))
            actual = path.stat().st_size
            if size is None or actual != size:
                raise ShardError(f"{path}: {actual} bytes, its shard job wrote {size}: the file of part "
                                 f"{part.name} is damaged; rebuild the part with: {rebuild}")
            if content and _sha256_file(path) != digest:
                raise ShardError(f"{path}: its content differs from what its shard job wrote (SHA-256): part "
                                 f"{part.name} is damaged; rebuild the part with: {rebuild}")
            return actual

        pool = ThreadPoolExecutor(max(1, threads))
        try:
            futures = [pool.submit(check, f) for f in files]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            bad = next((f for f in done if f.exception()), None)
            if bad is not None:
                raise bad.exception()
            nbytes = sum(f.result() for f in futures)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        seconds = time.time() - t0
        if not content:
            return {"files": len(files), "bytes": nbytes, "seconds": seconds}
        if unrecorded:
            log(f"shards: part(s) {', '.join(sorted(unrecorded))} have no per-file digests (written by an "
                "older version): their files' content is not verified")
        log(f"shards: {len(files)} files ({nbytes / 1e9:.2f} GB) verified against their digests in {seconds:.1f} s "
            f"({nbytes / 1e6 / max(seconds, 1e-9):.0f} MB/s, {max(1, threads)} threads)")
        return {"files": len(files), "bytes": nbytes, "seconds": seconds}

    def count(self, subset: str, c: int) -> int:
        return int(self.index["counts"][str(c)][0 if subset == "train" else 1])

    def mean_image(self, classes: list[int]) -> np.ndarray:
        """Per-pixel mean of the training images of ``classes`` (float32, (3, S, S))."""
        if not classes:
            raise ValueError(f"{self.root}: the mean image of no classes (an empty half?)")
        total = sum(np.load(self._file("sum", c)) for c in classes)
        n = sum(self.count("train", c) for c in classes)
        return (total / n).astype(np.float32)

    def load(self, subset: str, classes: list[int], ram_limit: float | None = None):
        """The images of ``classes`` and their labels (= position of the class in ``classes``). Raw shards:
        an ImageSet, in memory when the pixels take less than ``ram_limit`` bytes (default: a quarter of the
        available memory), otherwise read on demand from the memory-mapped files (a paper-scale half is
        ~127 GB). JPEG shards: a JpegSet, its files in memory under the same rule, decoded per batch."""
        if self.format == "jpeg":
            blobs = [np.load(self._file(subset, c, ".jpeg.npy"), mmap_mode="r") for c in classes]
            offsets = [np.load(self._file(subset, c, ".offsets.npy")) for c in classes]
            ys = np.concatenate([np.full(len(o) - 1, i, dtype=np.int64) for i, o in enumerate(offsets)])
            return JpegSet(blobs, offsets, self.size, ram_limit), ys
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


def job_cpus(env=None) -> int:
    """The CPUs this job may use: its CPU affinity (what SLURM's task binding and cgroup cpusets leave it),
    at most ``SLURM_CPUS_PER_TASK``."""
    env = os.environ if env is None else env
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    per_task = env.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(n, int(per_task)) if per_task.isdigit() else n)


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

    def take(self, idx: np.ndarray, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
        """Images ``idx`` as uint8 (B, 3, S, S), into ``out`` if given (e.g. a pinned buffer), read by
        ``threads`` threads (numpy copies without the GIL; from memory maps, the page faults that read the
        files then overlap)."""
        idx = np.asarray(idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index outside 0..{len(self) - 1}")
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8) if out is None else out
        k = max(1, min(threads, len(idx) // 8 or 1))
        if k > 1:  # contiguous blocks of the batch, one per thread
            bounds = np.linspace(0, len(idx), k + 1).astype(int)
            list(_pool("read", k).map(lambda ab: self._take_into(idx[ab[0]:ab[1]], out[ab[0]:ab[1]]),
                                   zip(bounds[:-1], bounds[1:])))
        else:
            self._take_into(idx, out)
        return out

    def _take_into(self, idx: np.ndarray, out: np.ndarray) -> None:
        if self.in_memory:
            np.take(self.data, idx, axis=0, out=out, mode="clip")  # "raise" would copy through a buffer;
            return  # the indices come from a permutation of this set
        cls = np.searchsorted(self.starts, idx, side="right") - 1
        for j in np.argsort(idx, kind="stable"):  # file order: sequential-ish reads
            out[j] = self.arrays[cls[j]][idx[j] - self.starts[cls[j]]]

    def slice(self, start: int, stop: int) -> np.ndarray:
        return self.take(np.arange(start, min(stop, len(self))))


class JpegSet:
    """JPEG-compressed images of several classes as one indexable set, decoded batch by batch with
    ``torchvision.io.decode_jpeg`` (``decode_jpegs``): on the GPU when ``batch`` is asked for one, by CPU
    threads otherwise. The files stay memory-mapped unless they fit under ``ram_limit`` (a paper-scale
    half at quality 90: ~20 GB instead of ~127 GB of pixels)."""

    in_memory = False  # no pixels are held: every batch is decoded

    def __init__(self, blobs: list[np.ndarray], offsets: list[np.ndarray], size: int, ram_limit: float | None = None):
        self.shape = (sum(len(o) - 1 for o in offsets), 3, size, size)
        nbytes = sum(b.nbytes for b in blobs)
        limit = available_memory() / 4 if ram_limit is None else ram_limit
        self.in_ram = nbytes <= limit
        self.blobs = [np.array(b) if self.in_ram else b for b in blobs]  # np.asarray of a map is the map
        self.offsets = offsets
        self.starts = np.cumsum([0] + [len(o) - 1 for o in offsets])

    def __len__(self) -> int:
        return self.shape[0]

    def files(self, idx) -> list:
        """The JPEG files of images ``idx`` as 1-D uint8 tensors (copies: the maps stay read-only)."""
        import torch

        idx = np.asarray(idx)
        cls = np.searchsorted(self.starts, idx, side="right") - 1
        out = []
        for i, c in zip(idx.tolist(), cls.tolist()):
            j = i - self.starts[c]
            a, b = self.offsets[c][j], self.offsets[c][j + 1]
            out.append(torch.from_numpy(np.array(self.blobs[c][a:b])))
        return out

    def batch(self, idx, device=None, threads: int | None = None, stack: bool = True):
        """Images ``idx`` decoded: uint8 tensor (B, 3, S, S) on ``device`` (default: the CPU), or on the
        CPU with ``stack=False`` the list of (3, S, S) images."""
        x = decode_jpegs(self.files(idx), device=device, threads=threads, stack=stack)
        got = tuple(x[0].shape[-2:])
        if got != self.shape[-2:]:
            raise IngestError(f"JPEG shards: decoded images are {got}, the index says {self.shape[-2:]}: "
                              "rebuild the shards")
        return x

    def take(self, idx: np.ndarray) -> np.ndarray:
        return self.batch(idx).numpy()

    def slice(self, start: int, stop: int) -> np.ndarray:
        return self.take(np.arange(start, min(stop, len(self))))
