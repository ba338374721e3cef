"""The pre-campaign smoke script (issue 17): its CPU part runs here; on a GPU node it adds the CUDA step."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.subprocess


def test_smoke_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "transferable", "smoke", "--device", "cpu", "--workdir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    checks = {r["check"]: r for r in lines if "check" in r}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # stopped by SIGTERM after a checkpoint (exit 128 + 15), resumed, the same evaluations as uninterrupted
    r = checks["resume"]
    assert r["ok"] and r["stopped_with"] == 143 and r["resumed"] and r["same_evaluations"]
    locks = checks["gpu locks"]
    assert locks["local_1_gpus"]["jobs"][0]["gpu"] == locks["local_1_gpus"]["jobs"][1]["gpu"] == 0
    assert max(j["waited_s"] for j in locks["local_1_gpus"]["jobs"]) >= 1.6  # one waited for the other
    assert sorted(j["gpu"] for j in locks["local_2_gpus"]["jobs"]) == [0, 1]
    feed = checks["feed"]  # memory-mapped batches (2 reader threads) and JPEG ones equal the in-memory path
    assert feed["ok"] and feed["memory_mapped_equals_in_memory"] and feed["jpeg_vs_cpu_decode_max_abs"] == 0
    assert checks["step"]["skipped"] == "CPU run"
    assert lines[-1]["smoke"] == "passed"
