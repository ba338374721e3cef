"""Where a training job reads its half from, chosen by size: the bytes each choice moves per epoch.

A job holds a set in its own memory when it takes under a quarter of what the job may use
(``ImageSet``/``JpegSet``: the rest of the job needs the room). A larger set is memory-mapped, and then
what matters is where the pages come from at every epoch:

- ``memory``: loaded once; per epoch nothing is read from storage.
- ``page cache``: memory-mapped, and the job's memory holds it in the page cache (charged to the job's
  cgroup, so it must fit there with room to spare): the first epoch reads it from the shard folder, later
  epochs from memory.
- ``stage``: it does not fit the job's memory, but a node-local folder (``resources.stage_dir``, e.g. a
  local NVMe scratch) has room: its files are copied there once (the set's bytes from the shard folder,
  once per node: a staged copy is reused by later jobs), and every epoch reads the set from the local disk.
- ``shared storage``: neither: every epoch reads the whole set from the shard folder again (the 1,000-class
  ``all`` set, 252 GB raw, in a 160 GB job: 252 GB per epoch). The job says so, with what would avoid it.

``preprocess.format: jpeg`` makes the set about 6x smaller (33 KB instead of 196 KB per 256 px image), which
moves a set from ``shared storage`` or ``stage`` to ``page cache`` or ``memory``: a choice made when the
shards are written, not here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .reader import Shards

# room kept free in the job's memory beside a page-cached set: the process, its buffers, the nets
RESERVE_FRACTION, RESERVE_MAX = 0.10, 8 << 30


def choose(set_bytes: int, job_bytes: int, stage_free: int | None) -> dict:
    """The policy for a set of ``set_bytes`` in a job that may use ``job_bytes``, with ``stage_free`` bytes
    free in the stage folder (None: no stage folder). Returns the choice and the bytes it moves."""
    reserve = min(RESERVE_MAX, RESERVE_FRACTION * job_bytes)
    if set_bytes <= job_bytes / 4:
        return {"policy": "memory", "shared_bytes_per_epoch": 0, "local_bytes_per_epoch": 0, "once": set_bytes}
    if set_bytes <= job_bytes - reserve:
        return {"policy": "page cache", "shared_bytes_per_epoch": 0, "local_bytes_per_epoch": 0, "once": set_bytes}
    if stage_free is not None and set_bytes <= stage_free:
        return {"policy": "stage", "shared_bytes_per_epoch": 0, "local_bytes_per_epoch": set_bytes, "once": set_bytes}
    return {"policy": "shared storage", "shared_bytes_per_epoch": set_bytes, "local_bytes_per_epoch": 0,
            "once": 0}


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def prepare(shards: Shards, classes: list[int], job_bytes: int, stage_dir: str | None,
            log=print) -> tuple[Shards, dict]:
    """The shard set to read this half from (the original, or a staged copy) and the policy, logged."""
    files = shards.files(classes)
    set_bytes = sum(f.stat().st_size for f in files)
    stage_root = _own_stage_root(stage_dir, shards.digest) if stage_dir else None
    stage_free = None
    if stage_root is not None:
        there = [_staged(stage_root, shards, f) for f in files]
        staged = sum(f.stat().st_size for f in there if f.exists())  # reused: counts as free room
        stage_free = shutil.disk_usage(stage_root).free + staged
    plan = choose(set_bytes, job_bytes, stage_free)
    plan.update(set_bytes=set_bytes, job_bytes=job_bytes, stage_dir=str(stage_root) if stage_root else None)
    msg = f"data: {_gb(set_bytes)} for {len(classes)} classes, job memory {_gb(job_bytes)} -> {plan['policy']}"
    if plan["policy"] == "stage":
        try:
            copied = _stage(shards, files, stage_root)
        except OSError as e:  # the disk filled up under us (another job staging), or failed: not fatal
            plan.update(policy="shared storage", shared_bytes_per_epoch=set_bytes, local_bytes_per_epoch=0)
            log(f"{msg}, but copying to {stage_root} failed ({e}): every epoch reads {_gb(set_bytes)} from "
                f"{shards.root} instead")
            return shards, plan
        log(f"{msg}: {_gb(copied)} copied to {stage_root} ({_gb(set_bytes - copied)} there already); every epoch "
            f"reads {_gb(set_bytes)} from that local disk")
        return Shards(shards.index_dir / "index.json", root=stage_root), plan
    if plan["policy"] == "shared storage":
        log(f"{msg}: every epoch reads {_gb(set_bytes)} from {shards.root} again. To avoid it: more memory "
            f"(resources.train_mem_mb >= {set_bytes / 0.9 / 2**20:.0f}), a node-local resources.stage_dir with "
            f"{_gb(set_bytes)} free{'' if stage_root is None else f' ({_gb(stage_free)} free in {stage_dir})'}, "
            "or preprocess.format: jpeg")
    else:
        log(f"{msg}: {_gb(set_bytes)} read once from {shards.root}, then from memory")
    return shards, plan


def _own_stage_root(stage_dir: str, digest: str) -> Path:
    """``<stage_dir>/transferable-shards-<digest16>``: ``$VARS`` and ``~`` expanded (the rule passes the
    setting quoted), absolute, created private (0700) and refused unless this user owns it: another user
    of the node cannot plant files the job would train on."""
    base = Path(os.path.expandvars(os.path.expanduser(stage_dir)))
    if not base.is_absolute() or "$" in str(base):
        raise ValueError(f"resources.stage_dir: {stage_dir!r} is not an absolute path once expanded ({base}); "
                         "give a node-local folder such as /local/scratch or $TMPDIR")
    base.mkdir(parents=True, exist_ok=True)
    root = base / f"transferable-shards-{digest[:16]}"
    root.mkdir(mode=0o700, exist_ok=True)
    st = root.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"{root}: the stage folder is not this user's private folder (owner uid {st.st_uid}, "
                              f"mode {oct(st.st_mode & 0o777)}): not trusted; remove it or choose another stage_dir")
    return root


def _staged(stage_root: Path, shards: Shards, f: Path) -> Path:
    return stage_root / f.relative_to(shards.root)


def _stage(shards: Shards, files: list[Path], stage_root: Path) -> int:
    """Copy the files not yet staged (same size), each to a temporary name, then renamed: two jobs of a node
    staging at once, or a job killed mid-copy, never leave a partial file under the final name."""
    copied = 0
    for f in files:
        dest = _staged(stage_root, shards, f)
        if dest.exists() and dest.stat().st_size == f.stat().st_size:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        try:
            shutil.copyfile(f, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        copied += f.stat().st_size
    return copied
