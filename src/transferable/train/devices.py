"""Pick the training device, and pin each concurrent job to its own GPU.

Snakemake's ``resources: gpu=1`` only counts GPUs; it never says WHICH one a job got. On a workstation
with K GPUs (``profiles/local``) each training job therefore takes the first GPU whose lock file it can
lock (``fcntl.flock``, released by the kernel when the process ends, even on SIGKILL), so K jobs run at
once, one per device. Under SLURM, ``CUDA_VISIBLE_DEVICES`` holds the job's own GPU(s), and with
``ConstrainDevices=yes`` every one-GPU job sees index 0: the lock names carry the SLURM job id, so two jobs
on one node never take each other's lock (they share /tmp, not GPUs).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
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
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_")
    job = os.environ.get("SLURM_JOB_ID", "local")  # a SLURM job's GPUs are its own, whatever their index
    for i in range(count):
        path = locks / f"{socket.gethostname()}-job{job}-{visible}-gpu{i}.lock"
        f = open(path, "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                continue  # held by another job
            raise RuntimeError(f"{path}: cannot lock ({e.strerror or e}); the GPU locks need a file system with "
                               "flock: point TRANSFERABLE_GPU_LOCKS at a local folder (e.g. /tmp)") from e
        _held[str(locks)] = (i, f)
        return i
    return None


def wait_for_gpu(count: int | None = None, locks: Path | None = None, poll_s: float = 5.0, log=print) -> int:
    """A free GPU's index, waiting while all are held: when more training jobs run than there are GPUs
    (Snakemake without ``--resources gpu=K``), the extra jobs queue here instead of failing."""
    count = torch.cuda.device_count() if count is None else count
    t0, said = time.time(), -1.0
    while True:
        i = acquire_gpu(count, locks)
        if i is not None:
            if said >= 0:
                log(f"got GPU {i} after waiting {time.time() - t0:.0f} s")
            return i
        if time.time() - said > 60:
            said = time.time()
            log(f"all {count} visible GPUs are held by other training jobs: waiting for one (run snakemake "
                "with --resources gpu=<number of GPUs>, as profiles/local does, to start no more jobs than GPUs)")
        time.sleep(poll_s)


def pick_device(name: str, log=print) -> torch.device:
    """``auto``: a free CUDA device if any is visible (waiting for one while all are held), else the CPU;
    ``cpu``; ``cuda``; ``cuda:N``."""
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "auto":
            return torch.device("cpu")
        raise RuntimeError(f"resources.device: {name!r} requested but no CUDA device is visible")
    dev = torch.device(f"cuda:{wait_for_gpu(log=log)}") if name in ("auto", "cuda") else torch.device(name)
    torch.cuda.set_device(dev)  # kernels, cuDNN handles and allocations without an explicit device go there
    return dev


def job_memory_bytes(env=None, cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The memory this job may use: the smallest of the node's available memory, the limit of the job's
    cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``: what SLURM enforces with ConstrainRAMSpace) and
    SLURM's allocation (``SLURM_MEM_PER_NODE``, or ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_ON_NODE``, in MB).
    A job on a 2 TB node that asked for 64 GB must not load a 127 GB half because the node has room."""
    from ..data.shards import available_memory

    env = os.environ if env is None else env
    limits = [available_memory()]
    try:
        rel = next((line.strip().split(":", 2)[2] for line in open(proc_cgroup)
                    if line.startswith("0::") or ":memory:" in line), "/")
    except OSError:
        rel = "/"
    for name in ("memory.max", "memory.limit_in_bytes"):
        for base in (Path(cgroup_root) / rel.lstrip("/"), Path(cgroup_root) / "memory" / rel.lstrip("/")):
            try:
                text = (base / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 1 << 60:  # "max" / 2^63-ish: no limit
                limits.append(int(text))
    if env.get("SLURM_MEM_PER_NODE", "").isdigit():
        limits.append(int(env["SLURM_MEM_PER_NODE"]) << 20)
    elif env.get("SLURM_MEM_PER_CPU", "").isdigit() and env.get("SLURM_CPUS_ON_NODE", "").isdigit():
        limits.append(int(env["SLURM_MEM_PER_CPU"]) * int(env["SLURM_CPUS_ON_NODE"]) << 20)
    return min(limits)
