"""Retries ask for what they need (issue 26): the same time, more memory only after an out-of-memory end."""

import json

import pytest

from transferable import attempts


def _end(ckpt, exc):
    with pytest.raises(type(exc)):
        with attempts.recorded(ckpt, mem_mb=1000):
            raise exc


def test_memory_grows_only_after_an_out_of_memory_end(tmp_path):
    ckpt = tmp_path / "ckpt" / "last.pt"
    assert attempts.retry_mem_mb(1000, 1, ckpt) == 1000
    assert attempts.retry_mem_mb(1000, 2, ckpt) == 1000  # no record: nothing says memory was short

    _end(ckpt, SystemExit(143))  # SIGTERM before a time limit or a preemption: checkpointed, resumes
    rec = json.loads(attempts.record_path(ckpt).read_text())
    assert rec["state"] == "stopped" and rec["exit"] == 143 and rec["mem_mb"] == 1000
    assert attempts.retry_mem_mb(1000, 2, ckpt) == 1000

    _end(ckpt, MemoryError())  # the trainer caught it
    assert attempts.retry_mem_mb(1000, 2, ckpt) == 2000

    class OutOfMemoryError(RuntimeError):  # torch.cuda's, by name: more host memory does not help it
        pass

    _end(ckpt, OutOfMemoryError("CUDA out of memory"))
    rec = json.loads(attempts.record_path(ckpt).read_text())
    assert rec["state"] == "GPU out of memory" and rec["memory_failures"] == 1  # the MemoryError before
    assert attempts.retry_mem_mb(1000, 3, ckpt) == 2000


def test_a_process_killed_without_a_word_counts_as_out_of_memory(tmp_path):
    """SIGKILL (the out-of-memory killer's signal) leaves the record at "running"; each such end adds the
    first request once, never beyond request x attempt."""
    ckpt = tmp_path / "last.pt"
    attempts.record_path(ckpt).write_text(json.dumps({"state": "running", "memory_failures": 0}))
    assert attempts.retry_mem_mb(4000, 2, ckpt) == 8000
    attempts.record_path(ckpt).write_text(json.dumps({"state": "running", "memory_failures": 5}))
    assert attempts.retry_mem_mb(4000, 3, ckpt) == 12000
    # the next attempt starts: it carries the count on, and a good end removes the record
    with attempts.recorded(ckpt):
        assert json.loads(attempts.record_path(ckpt).read_text())["memory_failures"] == 6
    assert not attempts.record_path(ckpt).exists()
    attempts.record_path(ckpt).write_text("{not json")
    assert attempts.retry_mem_mb(4000, 2, ckpt) == 4000  # an unreadable record says nothing
