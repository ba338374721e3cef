"""How a training job's last attempt ended, so that a retry asks for what it needs and no more.

The designed path for a job that runs out of time or is preempted is SIGTERM -> checkpoint -> retry,
which resumes: the checkpoint carries the progress, so the retry needs no more time or memory than the
first attempt. Only a job that ran out of memory needs more. The trainer keeps a small record next to its
checkpoint (``attempt.json``): ``running`` while it trains, then how it ended. A retry's memory request
(``retry_mem_mb``, the training rules' ``mem_mb``) grows by the first request for every earlier attempt
that ended by memory:

- the record says ``out of memory`` (the trainer caught a ``MemoryError``), or
- it still says ``running``: the process was killed without a chance to write, which is what the
  kernel's (or the job cgroup's) out-of-memory killer does with SIGKILL. A node failure looks the same
  and costs one larger request; a time limit or a preemption does not (SIGTERM: the trainer records
  ``stopped``).

A GPU out-of-memory error is recorded too, but host memory does not fix it: it does not grow the request.
The record is removed when the run ends well. Only plain JSON is read here (no torch): Snakemake
evaluates ``retry_mem_mb`` when it schedules a job.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from . import atomic

RECORD = "attempt.json"
MEMORY_ENDS = ("running", "out of memory")


def record_path(ckpt: str | os.PathLike) -> Path:
    """The record beside a run's checkpoint file (``results/ckpt/{split}/{net}/last.pt``)."""
    return Path(ckpt).parent / RECORD


def read_record(path: str | os.PathLike) -> dict | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def memory_failures(rec: dict | None) -> int:
    """Attempts so far that ended by memory, the last one included."""
    if not rec:
        return 0
    return int(rec.get("memory_failures", 0)) + (rec.get("state") in MEMORY_ENDS)


def retry_mem_mb(base_mb: int, attempt: int, ckpt: str | os.PathLike) -> int:
    """The memory (MB) of a training job's ``attempt`` (1, 2, ...): ``base_mb``, plus ``base_mb`` for each
    earlier attempt that ended by memory, never more than ``base_mb * attempt``."""
    if attempt <= 1:
        return int(base_mb)
    grow = min(memory_failures(read_record(record_path(ckpt))), attempt - 1)
    return int(base_mb) * (1 + grow)


@contextmanager
def recorded(ckpt: str | os.PathLike, **info):
    """Keep ``attempt.json`` beside ``ckpt`` while the block runs, and write how it ended."""
    path = record_path(ckpt)
    before = read_record(path)
    base = {"memory_failures": memory_failures(before), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "pid": os.getpid(), "host": os.uname().nodename, **info}

    def write(state, **more):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps({**base, "state": state, **more}, indent=1))

    write("running")
    try:
        yield
    except MemoryError:
        write("out of memory")
        raise
    except SystemExit as e:  # the trainer's own exit: a signal after its checkpoint (128 + signal)
        write("stopped", exit=e.code)
        raise
    except BaseException as e:
        # torch.cuda.OutOfMemoryError: named, but host memory does not fix it
        write("GPU out of memory" if type(e).__name__ == "OutOfMemoryError" else "failed",
              error=f"{type(e).__name__}: {str(e)[:500]}")
        raise
    path.unlink(missing_ok=True)
