"""Pick the training device, and pin each concurrent job to its own GPU.

Snakemake's ``resources: gpu=1`` only counts GPUs; it never says WHICH one a job got. On a workstation
with K GPUs (``profiles/local``) each training job therefore takes the first GPU whose lock file it can
lock (``fcntl.flock``, released by the kernel when the process ends, even on SIGKILL), so K jobs run at
once, one per device. Under SLURM, ``CUDA_VISIBLE_DEVICES`` already holds the job's own GPU(s).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import torch

_held: dict[str, tuple[int, object]] = {}  # lock folder -> (GPU index, its lock file, open for the process's life)


def lock_dir() -> Path:
    return Path(os.environ.get("TRANSFERABLE_GPU_LOCKS", "/tmp/transferable-gpu-locks"))


def acquire_gpu(count: int | None = None, locks: Path | None = None) -> int | None:
    """Index of a CUDA device no other job of this host holds, or None if all are taken. A process that
    already holds one (several trainings in one process, as the benchmarks run them) gets the same one."""
    count = torch.cuda.device_count() if count is None else count
    locks = locks or lock_dir()
    if str(locks) in _held:
        return _held[str(locks)][0]
    locks.mkdir(parents=True, exist_ok=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    for i in range(count):
        f = open(locks / f"{socket.gethostname()}-{visible.replace(',', '_')}-gpu{i}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _held[str(locks)] = (i, f)
        return i
    return None


def pick_device(name: str) -> torch.device:
    """``auto``: a free CUDA device if any is visible, else the CPU; ``cpu``; ``cuda``; ``cuda:N``."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "auto":
            return torch.device("cpu")
        raise RuntimeError(f"resources.device: {name!r} requested but no CUDA device is visible")
    if name in ("auto", "cuda"):
        i = acquire_gpu()
        if i is None:
            raise RuntimeError(
                f"all {torch.cuda.device_count()} visible GPUs are held by other training jobs; run snakemake "
                "with --resources gpu=<number of GPUs> (profiles/local does) so it never starts more jobs than GPUs"
            )
        return torch.device(f"cuda:{i}")
    return torch.device(name)
