"""Batches for training and evaluation from shards: random crop + mirror (train) or centre crop (eval),
minus the per-pixel mean image, as Caffe's data layer did (the mean is subtracted at the crop's position),
times an optional scale (Caffe's ``transform_param.scale``; the paper: 1).

Crop, mirror and mean subtraction are one gather over the whole batch, on whichever device holds it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .host import job_cpus

from .reader import ImageSet, JpegSet


def _gather_crops(x: torch.Tensor, mean: torch.Tensor, oy, ox, crop: int, flip, scale: float) -> torch.Tensor:
    """x uint8 (B,3,S,S), mean float (3,S,S), offsets/flip (B,) -> float (B,3,crop,crop), channels_last
    (the memory layout the convolutions run fastest in, on CPU and GPU). The mean is subtracted at the
    crop's position and mirrored with it."""
    on_cpu = isinstance(x, list) or x.device.type == "cpu"  # a list: decoded JPEGs, one tensor each
    out = (_crops_by_slice if on_cpu else _crops_by_index)(x, mean, oy, ox, crop, flip)
    if scale != 1.0:
        out *= scale
    return out


def _crops_by_index(x, mean, oy, ox, crop, flip) -> torch.Tensor:
    """The whole batch as ONE gather: a few kernels on a GPU, whatever the batch size."""
    b = x.shape[0]
    ar = torch.arange(crop, device=x.device)
    rows = oy[:, None] + ar  # (B, crop)
    cols = torch.where(flip[:, None], ox[:, None] + crop - 1 - ar, ox[:, None] + ar)
    bi = torch.arange(b, device=x.device)[:, None, None]
    r, c = rows[:, :, None], cols[:, None, :]
    out = x.permute(0, 2, 3, 1)[bi, r, c].to(torch.float32)  # (B, crop, crop, 3)
    out -= mean.permute(1, 2, 0)[r, c]
    return out.permute(0, 3, 1, 2)  # NHWC in memory = torch.channels_last


_CROP_POOL: ThreadPoolExecutor | None = None


def _crops_by_slice(x, mean, oy, ox, crop, flip) -> torch.Tensor:
    """Image by image as strided slices: on a CPU 4x faster than the gather at 227 px (bench mmap), the
    same values. With several torch threads, a batch of large crops is split between two threads. ``x``
    is a uint8 (B, 3, S, S) tensor or a list of (3, S, S) ones."""
    global _CROP_POOL
    out = torch.empty(len(x), crop, crop, x[0].shape[0], dtype=torch.float32)
    view = out.permute(0, 3, 1, 2)  # NHWC in memory = torch.channels_last
    todo = list(enumerate(zip(oy.tolist(), ox.tolist(), flip.tolist())))

    def work(items):
        for i, (a, b, f) in items:
            t = torch.sub(x[i][:, a : a + crop, b : b + crop], mean[:, a : a + crop, b : b + crop])
            view[i].copy_(t.flip(-1) if f else t)

    # two threads when torch may use several (measured: 1.6x at 227 px); small crops are not worth one.
    # More would each start their own intra-op threads.
    k = min(2, torch.get_num_threads(), len(todo)) if crop >= 64 else 1
    if k > 1:
        if _CROP_POOL is None:
            _CROP_POOL = ThreadPoolExecutor(2)
        list(_CROP_POOL.map(work, [todo[j::k] for j in range(k)]))
    else:
        work(todo)
    return view


def with_index(device) -> torch.device:
    """``device`` with its index: a bare "cuda" is the calling thread's current device (the job's), which a
    worker thread must be bound to explicitly (``torch.cuda.set_device`` refuses a device without an index:
    the memory-mapped reader's thread pool failed on its first batch in `transferable smoke` on an H200)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def bind_device(device) -> None:
    """A worker thread's first act on a GPU job: make the job's device its current one. A new thread's
    current device is 0, and leaving a ``torch.cuda.stream(...)`` block restores it there: a job on cuda:1
    would create a CUDA context on GPU 0 (about 0.5 GB, or an error in exclusive-process mode)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)


class TrainStream:
    """An endless stream of shuffled, augmented batches over in-memory uint8 images.

    Its whole state (generator, current permutation, position) is saved in checkpoints, so a resumed run
    sees exactly the batches an uninterrupted one would."""

    def __init__(self, images, labels: np.ndarray, mean: np.ndarray, crop: int, batch_size: int,
                 seed: int, mirror: bool = True, device: str | torch.device = "cpu", scale: float = 1.0,
                 readers: int | None = None):
        # an ImageSet (in memory or memory-mapped), a JpegSet (decoded per batch), or a uint8 array (N, 3, S, S)
        self.images = images if isinstance(images, (ImageSet, JpegSet)) else ImageSet([images])
        self.device = torch.device(device)
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.mean = torch.from_numpy(mean).to(device)
        self.size = images.shape[-1]
        if crop > self.size:
            raise ValueError(f"net.crop: {crop} is larger than the preprocessed size {self.size}")
        if batch_size > len(self.y):
            raise ValueError(f"train.batch_size: {batch_size} is larger than the {len(self.y)} training images "
                             "of this half; lower it (every batch would be the whole half, reshuffled)")
        self.crop, self.batch_size, self.mirror, self.scale = crop, batch_size, mirror, float(scale)
        # On a GPU, a set that fits in half the free device memory is copied there once as uint8: every
        # batch is then gathered, cropped, mirrored and normalised on the device, with no host traffic.
        self.on_device = None
        if self.device.type == "cuda" and self.images.in_memory:
            free, _ = torch.cuda.mem_get_info(self.device)
            # blocks the caching allocator holds but does not use are free to this process too
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            if self.images.data.nbytes < 0.5 * free:
                self.on_device = torch.from_numpy(self.images.data).to(self.device)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(self.y), generator=self.gen)
        self.pos = 0
        self.epoch = 0
        # Memory-mapped sets (a paper-scale half) and JPEG sets: a background thread reads (and decodes) the
        # NEXT batch's images while the current one trains. Only the reading moves ahead; every random draw
        # stays in order, so the batches (and checkpoints) are exactly those of the in-memory path.
        # On a GPU every host-resident set reads ahead, the images gathered by ``readers`` threads (default:
        # the job's CPUs) straight into one of two pinned buffers, then copied to the device on a side
        # stream, so that the copy overlaps the previous step's kernels instead of queuing behind them.
        host_gpu = self.device.type == "cuda" and self.on_device is None
        read_ahead = not self.images.in_memory or host_gpu
        self._pool = (ThreadPoolExecutor(1, initializer=bind_device, initargs=(with_index(self.device),))
                      if read_ahead and self.on_device is None else None)
        self._pending = None  # ((epoch, pos), future of the uint8 images)
        self.readers = max(1, readers or job_cpus())
        self._pinned: list = []  # [pinned host buffer, event of its last copy to the device]
        self._slot = 0
        self._copy_stream = torch.cuda.Stream(self.device) if host_gpu and isinstance(self.images, ImageSet) else None

    def __len__(self) -> int:
        return len(self.y)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A float batch (crop, mirror, minus this stream's mean image, times scale) and its labels."""
        raw, y = self.next_raw()
        return self.crops(raw, self.mean), y

    def crops(self, raw: tuple, mean: torch.Tensor) -> torch.Tensor:
        """The float batch of ``next_raw``'s images with ``mean`` (3, S, S) subtracted: several nets with
        different mean images (their sources') share one read of the data."""
        x, oy, ox, flip = raw
        return _gather_crops(x, mean, oy, ox, self.crop, flip, self.scale)

    def next_raw(self) -> tuple[tuple, torch.Tensor]:
        """The next batch before mean subtraction: ((uint8 images, crop offsets y, x, mirror flags), labels)."""
        if self.pos + self.batch_size > len(self.perm):  # Caffe wraps around; we reshuffle each epoch
            self.perm = torch.randperm(len(self.y), generator=self.gen)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        b = len(idx)
        span = self.size - self.crop + 1
        oy = torch.randint(span, (b,), generator=self.gen)
        ox = torch.randint(span, (b,), generator=self.gen)
        flip = torch.rand(b, generator=self.gen) < 0.5 if self.mirror else torch.zeros(b, dtype=torch.bool)
        dev = self.device
        # indices, offsets, flags and labels travel to the device as ONE small pinned copy per batch
        meta = torch.stack([idx, oy, ox, flip.long(), self.y[idx]])
        if dev.type == "cuda":
            meta = meta.pin_memory().to(dev, non_blocking=True)
        if self.on_device is not None:
            raw = self.on_device[meta[0]]
        else:
            raw = self._read(idx)
            if isinstance(raw, tuple):  # made on another stream: wait for it there (not on the host), and
                raw, done = raw  # tell the allocator the training stream uses it
                if done is not None:
                    torch.cuda.current_stream(dev).wait_event(done)
                raw.record_stream(torch.cuda.current_stream(dev))
            elif dev.type == "cuda":
                raw = raw.to(dev, non_blocking=True)
        return (raw, meta[1], meta[2], meta[3].bool()), meta[4]

    def _fetch(self, idx: np.ndarray) -> torch.Tensor:
        """Read (or decode) the images: a CPU tensor, a list of decoded JPEGs, a GPU tensor (nvJPEG), or
        (GPU tensor, event) from the pinned-buffer copy. Runs in the read-ahead thread, off the loop's path."""
        if isinstance(self.images, JpegSet):  # decoded on the GPU (nvJPEG) when training runs on one
            if self.device.type == "cuda":  # decoded on a stream of its own, finished when it returns
                return self.images.batch(idx, device=self.device), None
            return self.images.batch(idx, stack=False)
        if self._copy_stream is None:
            return torch.from_numpy(self.images.take(idx, threads=self.readers))
        return self._to_device(idx)

    def _to_device(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Gather into a pinned buffer (two, used in turn; one is reused only after its last copy ended) and
        queue the copy to the device on the side stream; the event marks its end."""
        shape = (len(idx), *self.images.shape[1:])
        if not self._pinned or tuple(self._pinned[0][0].shape) != shape:
            self._pinned = [[torch.empty(shape, dtype=torch.uint8, pin_memory=True), None] for _ in range(2)]
        buf, last = self._pinned[self._slot]
        if last is not None:
            last.synchronize()
        self.images.take(idx, out=buf.numpy(), threads=self.readers)
        with torch.cuda.stream(self._copy_stream):
            x = buf.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        self._pinned[self._slot][1] = done
        self._slot = 1 - self._slot
        return x, done

    def _read(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images of the batch just drawn (ending at self.pos), from the prefetch when it has them;
        then start reading the next batch of this epoch."""
        key = (self.epoch, self.pos)
        if self._pending is not None and self._pending[0] == key:
            data = self._pending[1].result()
        else:
            data = self._fetch(idx.numpy())
        self._pending = None
        if self._pool is not None and self.pos + self.batch_size <= len(self.perm):
            nxt = self.perm[self.pos : self.pos + self.batch_size].numpy()
            self._pending = ((self.epoch, self.pos + self.batch_size), self._pool.submit(self._fetch, nxt))
        return data

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.pos / len(self.y)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, s: dict) -> None:
        if self._pending is not None:  # a read in flight writes into a buffer: let it end first
            try:
                self._pending[1].result()
            except Exception:  # noqa: BLE001 - its batch is discarded anyway
                pass
        self.gen.set_state(s["gen"])
        self.perm, self.pos, self.epoch = s["perm"], int(s["pos"]), int(s["epoch"])
        self._pending = None


class EvalSet:
    """The validation images, ready for every evaluation of a run: centre-cropped ONCE (Caffe's test phase:
    no mirror) into a uint8 array, which on a GPU is kept on the device when it fits in a quarter of its
    free memory (then an evaluation reads nothing from the host), else pinned and copied asynchronously
    batch by batch. Sets that are not in memory (memory-mapped, JPEG) are read, cropped and copied per
    batch, as before; on a GPU a JPEG set is decoded there by nvJPEG."""

    def __init__(self, images, labels: np.ndarray, crop: int, device="cpu"):
        self.images = images if isinstance(images, (ImageSet, JpegSet)) else ImageSet([images])
        self.device = torch.device(device)
        size = self.images.shape[-1]
        if crop > size:
            raise ValueError(f"net.crop: {crop} is larger than the preprocessed size {size}")
        self.crop, self.off, self.n = crop, (size - crop) // 2, len(self.images)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.cropped = None  # uint8 (N, 3, crop, crop): on the device, pinned, or in host memory
        self.where = "per batch"
        if isinstance(self.images, ImageSet) and self.images.in_memory:
            o = self.off
            cropped = torch.from_numpy(np.ascontiguousarray(self.images.data[:, :, o : o + crop, o : o + crop]))
            self.where = "host memory"
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
                if cropped.nbytes < 0.25 * free:
                    cropped, self.where = cropped.to(self.device), "device"
                else:
                    cropped, self.where = cropped.pin_memory(), "pinned host memory"
            self.cropped = cropped

    def __len__(self) -> int:
        return self.n

    def batches(self, mean: np.ndarray, batch_size: int, scale: float = 1.0):
        """(float batch minus ``mean``'s centre crop, times ``scale``, channels-last; labels), in order."""
        o, c, dev = self.off, self.crop, self.device
        m = torch.from_numpy(np.ascontiguousarray(mean[:, o : o + c, o : o + c])).to(dev)
        gpu_decode = isinstance(self.images, JpegSet) and dev.type == "cuda"
        for i in range(0, self.n, batch_size):
            if self.cropped is not None:
                xb = self.cropped[i : i + batch_size].to(dev, non_blocking=True)
            elif gpu_decode:
                block = self.images.batch(np.arange(i, min(i + batch_size, self.n)), device=dev)
                block.record_stream(torch.cuda.current_stream(dev))  # decoded on another stream
                xb = block[:, :, o : o + c, o : o + c]
            else:
                block = self.images.slice(i, i + batch_size)
                xb = torch.from_numpy(np.ascontiguousarray(block[:, :, o : o + c, o : o + c])).to(dev)
            xb = (xb.to(torch.float32) - m).contiguous(memory_format=torch.channels_last)
            if scale != 1.0:
                xb *= scale
            yield xb, self.labels[i : i + batch_size]


def eval_batches(images, labels: np.ndarray, mean: np.ndarray, crop: int, batch_size: int,
                 device="cpu", scale: float = 1.0):
    """Centre-cropped, mean-subtracted batches in order, of a set used once (``EvalSet`` keeps them ready
    for a run's many evaluations). ``images``: an ImageSet, a JpegSet or a uint8 array (N, 3, S, S)."""
    return EvalSet(images, labels, crop, device).batches(mean, batch_size, scale)
