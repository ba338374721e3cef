"""The pre-campaign smoke script (issue 17): its CPU part runs here; on a GPU node it adds the CUDA step."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.subprocess


def test_smoke_on_the_cpu(tmp_path):
    import os

    # as under `srun --mem=3000`: the trainers must see this limit with SLURM's variables removed, as the
    # SLURM profile's job steps run them
    env = dict(os.environ, SLURM_MEM_PER_NODE="3000")
    proc = subprocess.run([sys.executable, "-m", "transferable", "smoke", "--device", "cpu", "--workdir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    checks = {r["check"]: r for r in lines if "check" in r}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # stopped by SIGTERM after a checkpoint (exit 128 + 15), resumed, the same evaluations as uninterrupted
    r = checks["resume"]
    assert r["ok"] and r["stopped_with"] == 143 and r["resumed"] and r["same_evaluations"]
    assert r["trained_on"] == ["cpu", "cpu"] and r["same_device"]["resumed_at_iter"] > 0
    assert r["other_index"] == {"skipped": "CPU run"}
    dev = checks["device"]
    assert dev["ok"] and dev["memory_limit_mb"] <= 3000 and dev["memory_limit_from"]
    assert r["memory_limit_reached_trainer"] and r["trainer_memory_limit_mb"] <= 3000
    assert r["trainer_memory_limit_from"] != "the node's available memory"
    # the real loop with paper-fast's train settings: stopped, resumed (not restarted), learning, finite
    p = checks["paper loop"]
    assert p["ok"] and p["stopped_with"] == 143 and p["resumed_at_iter"] > 0 and p["evaluations"] == 4
    assert p["train_settings"] == {"amp": True, "tf32": True, "cudnn_benchmark": True, "deterministic": False}
    assert p["train_loss_last"] < p["train_loss_first"] and p["kernels"]["tf32"] is True
    locks = checks["gpu locks"]
    assert locks["local_1_gpus"]["jobs"][0]["gpu"] == locks["local_1_gpus"]["jobs"][1]["gpu"] == 0
    assert max(j["waited_s"] for j in locks["local_1_gpus"]["jobs"]) >= 1.6  # one waited for the other
    assert sorted(j["gpu"] for j in locks["local_2_gpus"]["jobs"]) == [0, 1]
    feed = checks["feed"]  # memory-mapped batches (2 reader threads) and JPEG ones equal the in-memory path
    assert feed["ok"] and feed["memory_mapped_equals_in_memory"] and feed["jpeg_vs_cpu_decode_max_abs"] == 0
    assert feed["evaluations_during_read_ahead"] == feed["batches"] and feed["evaluations_identical"]
    assert checks["step"]["skipped"] == "CPU run"
    assert lines[-1]["smoke"] == "passed"


def test_smoke_fails_where_a_gpu_was_allocated_and_cuda_is_unusable(tmp_path):
    """Issue 26: on a node whose driver does not fit the torch build (here: no GPU at all), a job that SLURM
    gave a GPU must not report "passed" after running every check on the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0", SLURM_GPUS_ON_NODE="1", SLURM_JOB_ID="77")
    proc = subprocess.run([sys.executable, "-m", "transferable", "smoke", "--workdir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert lines[0]["check"] == "device" and not lines[0]["ok"] and lines[0]["gpus_allocated"] == 1
    assert lines[-1]["smoke"] == "FAILED" and "CUDA is unusable: " + lines[0]["why_not_cuda"] in lines[-1]["why"]
    assert len(lines) == 2  # nothing ran on the CPU in the GPU's place
