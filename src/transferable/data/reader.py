"""Reading a shard set (layout: shards.py): per-class arrays, memory-mapped or in memory by the host's
memory (host.py), JPEG shards decoded per batch, mean images from per-class sums, and each file checked
against the digest its shard job recorded before a job trains on it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ..provenance import file_digest
from .host import available_memory
from .errors import IngestError, ShardError
from .pixels import decode_jpegs, thread_pool

# each part's per-file digests, written by its shard job (shards.py), checked here before training
FILE_DIGESTS = "files.sha256"
# read in 4 MB blocks: hashlib releases the GIL on large blocks, so verify's threads hash in parallel
DIGEST_BLOCK = 1 << 22


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
            if content and file_digest(path, DIGEST_BLOCK) != digest:
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
            list(thread_pool("read", k).map(lambda ab: self._take_into(idx[ab[0]:ab[1]], out[ab[0]:ab[1]]),
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
