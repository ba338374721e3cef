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
import re
import socket
import stat
import time
from pathlib import Path

import torch

_held: dict[str, tuple[int, int]] = {}  # lock folder -> (GPU index, its lock's descriptor, open for the process's life)


def lock_dir() -> Path:
    return Path(os.environ.get("TRANSFERABLE_GPU_LOCKS", "/tmp/transferable-gpu-locks"))


def _shared_folder(locks: Path) -> None:
    """The lock folder, usable by every user of the node: GPUs are the node's, not one user's. Created
    sticky and world-writable like /tmp (each user may create lock files, none may delete another's);
    one that another user made without write access for us is an error that says so."""
    if not locks.is_dir():
        try:
            locks.mkdir(parents=True)
            os.chmod(locks, 0o1777)  # mkdir applies the umask (0755 for most users): set the mode itself
        except FileExistsError:
            pass  # another job made it just now
    if not os.access(locks, os.W_OK | os.X_OK):
        st = locks.stat()
        raise RuntimeError(f"{locks}: the GPU lock folder is not writable by this user (owner uid {st.st_uid}, "
                           f"mode {stat.filemode(st.st_mode)}); its owner can `chmod 1777 {locks}`, or point "
                           "TRANSFERABLE_GPU_LOCKS at a folder every user of this node can write")


def _open_lock(path: Path) -> int:
    """A descriptor to flock. Read-only is enough, so another user's lock file can be locked too; an
    existing file is opened without O_CREAT, which Linux refuses for another user's file in a sticky
    folder (fs.protected_regular)."""
    for _ in range(3):
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        except PermissionError as e:
            raise RuntimeError(f"{path}: cannot open the GPU lock file ({e.strerror}); its owner can "
                               f"`chmod a+r {path}`, or point TRANSFERABLE_GPU_LOCKS at another folder") from e
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # another job created it just now: open theirs
        os.fchmod(fd, 0o644)  # whatever this user's umask: every user must be able to open it
        return fd
    raise RuntimeError(f"{path}: the GPU lock file keeps appearing and disappearing; is another program "
                       "cleaning TRANSFERABLE_GPU_LOCKS?")


def acquire_gpu(count: int | None = None, locks: Path | None = None) -> int | None:
    """Index of a CUDA device no other job of this host holds, or None if all are taken. A process that
    already holds one (several trainings in one process, as the benchmarks run them) gets the same one.
    Only "held by another process" means try the next GPU; any other error is raised, naming the file."""
    count = torch.cuda.device_count() if count is None else count
    locks = locks or lock_dir()
    if str(locks) in _held:
        return _held[str(locks)][0]
    _shared_folder(locks)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_")
    job = os.environ.get("SLURM_JOB_ID", "local")  # a SLURM job's GPUs are its own, whatever their index
    for i in range(count):
        path = locks / f"{socket.gethostname()}-job{job}-{visible}-gpu{i}.lock"
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                continue  # held by another job
            raise RuntimeError(f"{path}: cannot lock ({e.strerror or e}); the GPU locks need a file system with "
                               "flock: point TRANSFERABLE_GPU_LOCKS at a local folder (e.g. /tmp)") from e
        _held[str(locks)] = (i, fd)
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


# The oldest Linux driver each CUDA major version of the torch wheel runs on (NVIDIA's compatibility table).
_MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}


def cuda_unusable_reason(env=None, proc_driver: str = "/proc/driver/nvidia/version") -> str:
    """Why this process cannot use CUDA, in words a user can act on: a CPU-only torch, no device made
    visible to the job, or a driver older than the torch build needs (the usual cause on a cluster)."""
    env = os.environ if env is None else env
    built = torch.version.cuda
    if not built:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and (not visible.strip() or visible.strip().startswith(("-", "NoDevFiles"))):
        return f"no GPU is visible to this process (CUDA_VISIBLE_DEVICES={visible!r})"
    try:
        driver = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", Path(proc_driver).read_text())
        driver = driver.group(1) if driver else None
    except OSError:
        driver = None
    if driver is None and not any(re.fullmatch(r"nvidia\d+", p.name) for p in Path("/dev").glob("nvidia*")):
        return f"no NVIDIA driver is loaded on {socket.gethostname()} (no {proc_driver}, no /dev/nvidia<N>)"
    need = _MIN_DRIVER.get(int(built.split(".")[0]))
    if driver and need and _version(driver) < _version(need):
        return (f"the NVIDIA driver {driver} is older than torch {torch.__version__} (CUDA {built}) needs "
                f"(>= {need}): install the torch build for the node's CUDA, or run on nodes with a newer driver")
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 - CUDA's own words are the diagnosis
        return f"CUDA failed to initialise: {e}"
    return f"torch sees {torch.cuda.device_count()} CUDA devices (CUDA_VISIBLE_DEVICES={visible!r}, driver {driver})"


def _version(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def pick_device(name: str, gpus: int | None = None, log=print) -> torch.device:
    """The device a job trains on. ``gpus`` is what the job was granted (the rule's ``resources.gpu``,
    which ``--resources gpu=K`` and SLURM's ``--gpus`` follow); None: not said (a hand-run command).

    ``auto``: with ``gpus`` 0, the CPU; with ``gpus`` >= 1, a free CUDA device, or an error naming why
    CUDA is unusable: a job granted a GPU never trains on the CPU without a word. Not said: CUDA if
    usable, else the CPU, and the log says so. ``cpu``: the CPU. ``cuda``, ``cuda:N``: that, or the error."""
    if name == "cpu":
        if gpus:
            log(f"resources.device: cpu; the {gpus} GPU(s) granted to this job stay unused")
        return torch.device("cpu")
    if name == "auto" and gpus == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        reason = cuda_unusable_reason()
        if name == "auto" and gpus is None:
            log(f"training on the CPU: {reason}")
            return torch.device("cpu")
        asked = f"this job was granted {gpus} GPU(s)" if gpus else f"device {name!r} was requested"
        raise RuntimeError(f"{asked} but CUDA is unusable: {reason}. Nothing was trained. To train on the "
                           "CPU on purpose, set resources.device: cpu (or resources.train_gpus: 0)")
    dev = torch.device(f"cuda:{wait_for_gpu(log=log)}") if name in ("auto", "cuda") else torch.device(name)
    torch.cuda.set_device(dev)  # kernels, cuDNN handles and allocations without an explicit device go there
    return dev


def _cgroup_limits(cgroup_root: str, proc_cgroup: str) -> list[tuple[int, str]]:
    """(bytes, file) of every memory limit on this process's cgroup AND its ancestors: SLURM sets the
    limit on job_X (and step_Y) while the process sits in task_Z below, where memory.max is "max".
    cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes`` in the memory hierarchy)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, rel = parts
        if hid == "0" and controllers == "":
            bases, name = [Path(cgroup_root)], "memory.max"
        elif "memory" in controllers.split(","):
            bases, name = [Path(cgroup_root) / "memory", Path(cgroup_root) / controllers], "memory.limit_in_bytes"
        else:
            continue
        steps = [p for p in rel.split("/") if p]
        for base in bases:
            for depth in range(len(steps), -1, -1):
                f = base.joinpath(*steps[:depth]) / name
                try:
                    text = f.read_text().strip()
                except OSError:
                    continue
                if text.isdigit() and int(text) < 1 << 60:  # "max" / 2^63-ish: no limit
                    found.append((int(text), str(f)))
    return found


def job_memory(declared_mb: int | None = None, env=None, cgroup_root: str = "/sys/fs/cgroup",
               proc_cgroup: str = "/proc/self/cgroup") -> tuple[int, str]:
    """(bytes, where from): the memory this job may use, the smallest of
    - the job's own request, ``declared_mb`` (the rule's ``resources.mem_mb``, passed as ``--mem-mb``: under
      the SLURM profile the job step runs without SLURM's memory variables, so this is how the request
      reaches the trainer);
    - every memory limit on the job's cgroup and its ancestors (what SLURM enforces with ConstrainRAMSpace);
    - SLURM's allocation where its variables are set: ``SLURM_MEM_PER_NODE`` (0 means the whole node: no
      limit), ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_ON_NODE``, ``SLURM_MEM_PER_GPU`` x the job's GPUs (MB);
    - the node's available memory.
    A job on a 2 TB node that asked for 64 GB must not load a 127 GB half because the node has room."""
    from ..data.host import available_memory

    env = os.environ if env is None else env
    limits = [(available_memory(), "the node's available memory")]
    if declared_mb:
        limits.append((int(declared_mb) << 20, f"the job's mem_mb ({int(declared_mb)})"))
    limits += [(b, f"cgroup {f}") for b, f in _cgroup_limits(cgroup_root, proc_cgroup)]

    def mb(key):
        v = env.get(key, "").strip()
        return int(v) if v.isdigit() else None

    per_node, per_cpu, per_gpu = mb("SLURM_MEM_PER_NODE"), mb("SLURM_MEM_PER_CPU"), mb("SLURM_MEM_PER_GPU")
    if per_node:
        limits.append((per_node << 20, f"SLURM_MEM_PER_NODE={per_node}"))
    elif per_cpu and mb("SLURM_CPUS_ON_NODE"):
        limits.append((per_cpu * mb("SLURM_CPUS_ON_NODE") << 20,
                       f"SLURM_MEM_PER_CPU={per_cpu} x SLURM_CPUS_ON_NODE={mb('SLURM_CPUS_ON_NODE')}"))
    elif per_gpu:
        gpus = mb("SLURM_GPUS_ON_NODE") or len([d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])
        if gpus:
            limits.append((per_gpu * gpus << 20, f"SLURM_MEM_PER_GPU={per_gpu} x {gpus} GPU(s)"))
    return min(limits)


def job_memory_bytes(declared_mb: int | None = None, env=None, cgroup_root: str = "/sys/fs/cgroup",
                     proc_cgroup: str = "/proc/self/cgroup") -> int:
    """``job_memory``'s bytes."""
    return job_memory(declared_mb, env, cgroup_root, proc_cgroup)[0]
