"""One GPU per concurrent training job on a workstation: flock-held GPU indices (train/devices.py)."""

import subprocess
import sys

import pytest

from transferable.train import devices

GRAB = "import sys, pathlib; from transferable.train.devices import acquire_gpu; " \
       "print(acquire_gpu(int(sys.argv[1]), pathlib.Path(sys.argv[2])), flush=True); sys.stdin.read()"


def _other_process(count, locks):
    """Another job: takes a GPU and holds it until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", GRAB, str(count), str(locks)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


@pytest.mark.subprocess
def test_jobs_get_different_gpus_and_one_process_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_held", {})
    locks = tmp_path / "locks"
    assert devices.acquire_gpu(2, locks) == 0
    assert devices.acquire_gpu(2, locks) == 0  # the same process asks again (the benchmarks do): its own GPU
    other, got = _other_process(2, locks)
    assert got == "1"
    third, got3 = _other_process(2, locks)
    assert got3 == "None"  # both taken
    third.kill()
    other.kill()  # SIGKILL: the kernel drops its lock, GPU 1 is free again
    other.wait()
    again, got = _other_process(2, locks)
    assert got == "1"
    again.kill()


@pytest.mark.subprocess
def test_two_slurm_jobs_on_one_node_each_get_their_own_gpu(tmp_path):
    """Issue 17, case 1: with ConstrainDevices every one-GPU job sees CUDA_VISIBLE_DEVICES=0; two such jobs
    on one node share /tmp. Each must get its (only) GPU, not 'all GPUs are held'."""
    import os

    locks = tmp_path / "locks"
    held = []
    for job in ("1001", "1002"):
        env = dict(os.environ, SLURM_JOB_ID=job, CUDA_VISIBLE_DEVICES="0")
        p = subprocess.Popen([sys.executable, "-c", GRAB, "1", str(locks)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        held.append((p, p.stdout.readline().strip()))
    assert [got for _, got in held] == ["0", "0"]
    for p, _ in held:
        p.kill()


def test_a_file_system_without_flock_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    monkeypatch.setattr(devices, "_held", {})

    def no_locks(f, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(devices.fcntl, "flock", no_locks)
    with pytest.raises(RuntimeError, match=r"cannot lock \(No locks available\).*TRANSFERABLE_GPU_LOCKS"):
        devices.acquire_gpu(1, tmp_path / "locks")


@pytest.mark.subprocess
def test_a_job_waits_for_a_gpu_instead_of_failing(tmp_path, monkeypatch):
    """Issue 17, case 7: more training jobs than GPUs (no --resources gpu=K): the extra ones wait."""
    import threading

    monkeypatch.setattr(devices, "_held", {})
    locks = tmp_path / "locks"
    other, got = _other_process(1, locks)
    assert got == "0"
    threading.Timer(1.0, other.kill).start()  # the other job ends after a second
    lines = []
    assert devices.wait_for_gpu(1, locks, poll_s=0.1, log=lines.append) == 0
    assert "waiting for one" in lines[0] and lines[-1].startswith("got GPU 0 after waiting")


@pytest.mark.subprocess
def test_no_gpu_resource_means_the_cpu(workdir):
    """resources.train_gpus: 0 with device auto: the training jobs are told --device cpu."""
    import yaml
    from conftest import run_snakemake

    cfg = yaml.safe_load((workdir / "configs/micro.yaml").read_text())
    cfg["resources"]["train_gpus"] = 0
    (workdir / "configs/nogpu.yaml").write_text(yaml.safe_dump(cfg))
    out = run_snakemake(["-n", "-p", "--configfile", "configs/nogpu.yaml"], workdir).stdout
    assert "--device cpu" in out and "--device auto" not in out


def test_memory_decisions_follow_the_job_not_the_node(tmp_path):
    """Issue 17, case 2: a job that asked SLURM for 64 GB on a node with far more free memory gets 64 GB as
    its budget (from SLURM's variables, or from its cgroup's limit), not the node's MemAvailable."""
    from transferable.data.shards import available_memory

    none = tmp_path / "none"
    proc = tmp_path / "cgroup"
    proc.write_text("0::/slurm/job42\n")
    # the node's free memory moves between calls: compare loosely; the limits below are far smaller (1 GB <<)
    assert abs(devices.job_memory_bytes({}, str(none), str(proc)) - available_memory()) < 512 << 20
    assert available_memory() > 2 << 30
    assert devices.job_memory_bytes({"SLURM_MEM_PER_NODE": "1024"}, str(none), str(proc)) == 1 << 30
    assert devices.job_memory_bytes({"SLURM_MEM_PER_CPU": "256", "SLURM_CPUS_ON_NODE": "2"}, str(none),
                                    str(proc)) == 512 << 20
    cg = tmp_path / "sys" / "slurm" / "job42"
    cg.mkdir(parents=True)
    (cg / "memory.max").write_text(f"{300 << 20}\n")
    assert devices.job_memory_bytes({}, str(tmp_path / "sys"), str(proc)) == 300 << 20
    (cg / "memory.max").write_text("max\n")  # no limit
    assert devices.job_memory_bytes({}, str(tmp_path / "sys"), str(proc)) > 2 << 30
