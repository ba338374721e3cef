"""One GPU per concurrent training job on a workstation: flock-held GPU indices (train/devices.py)."""

import os
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
def test_the_granted_gpus_reach_the_trainer(workdir):
    """The trainer is told the GPUs the job was granted (--gpus {resources.gpu}) and the memory it asked
    for (--mem-mb {resources.mem_mb}); `--resources gpu=0` caps the grant, so those jobs train on the CPU."""
    import re

    import yaml
    from conftest import run_snakemake

    cfg = yaml.safe_load((workdir / "configs/micro.yaml").read_text())
    cfg["resources"].update(train_gpus=1, train_mem_mb=1234)
    (workdir / "configs/gpu.yaml").write_text(yaml.safe_dump(cfg))
    out = run_snakemake(["-n", "-p", "--configfile", "configs/gpu.yaml"], workdir).stdout
    cmds = [c for c in out.splitlines() if "exec transferable train " in c]
    assert len(cmds) == 13 and all(" --device auto --gpus 1 --mem-mb 1234 --stage-dir= " in c for c in cmds), cmds[:2]
    out = run_snakemake(["-n", "-p", "--configfile", "configs/gpu.yaml", "--resources", "gpu=0"], workdir).stdout
    assert len(re.findall(r" --device auto --gpus 0 --mem-mb 1234 --stage-dir= ", out)) == 13


def _cpu_only(monkeypatch):
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)


def test_a_job_granted_a_gpu_never_trains_on_the_cpu_silently(monkeypatch):
    """Issue 26: `auto` with a GPU granted and CUDA unusable is an error naming the cause; with none granted
    it is the CPU; not said (a hand-run command), the CPU with a log line that says why."""
    _cpu_only(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "1")
    with pytest.raises(RuntimeError, match=r"granted 1 GPU\(s\) but CUDA is unusable: .+Nothing was trained.*"
                                           r"resources.device: cpu"):
        devices.pick_device("auto", 1, log=lambda m: None)
    with pytest.raises(RuntimeError, match=r"device 'cuda:1' was requested but CUDA is unusable"):
        devices.pick_device("cuda:1", None, log=lambda m: None)
    said = []
    assert devices.pick_device("auto", 0, log=said.append).type == "cpu" and said == []
    assert devices.pick_device("auto", None, log=said.append).type == "cpu"
    assert said and said[0].startswith("training on the CPU: ")
    said.clear()
    assert devices.pick_device("cpu", 2, log=said.append).type == "cpu"
    assert "the 2 GPU(s) granted to this job stay unused" in said[0]


def test_why_cuda_is_unusable_is_named(monkeypatch, tmp_path):
    proc = tmp_path / "version"
    monkeypatch.setattr(devices.torch.version, "cuda", None)
    assert "CPU-only build" in devices.cuda_unusable_reason({}, str(proc))
    monkeypatch.setattr(devices.torch.version, "cuda", "13.0")
    assert "CUDA_VISIBLE_DEVICES=''" in devices.cuda_unusable_reason({"CUDA_VISIBLE_DEVICES": ""}, str(proc))
    assert "CUDA_VISIBLE_DEVICES='-1'" in devices.cuda_unusable_reason({"CUDA_VISIBLE_DEVICES": "-1"}, str(proc))
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
                    "GCC version:  gcc version 12.2.0\n")
    why = devices.cuda_unusable_reason({}, str(proc))
    assert "driver 535.104.05 is older than" in why and "CUDA 13.0" in why and ">= 580.65.06" in why
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  590.44.01  Release Build\n")
    monkeypatch.setattr(devices.torch.cuda, "init", lambda: (_ for _ in ()).throw(RuntimeError("no CUDA-capable device")))
    assert devices.cuda_unusable_reason({}, str(proc)) == "CUDA failed to initialise: no CUDA-capable device"


@pytest.mark.subprocess
def test_a_training_job_granted_a_gpu_fails_before_loading_anything(tmp_path):
    """The command a training rule runs, on this CPU-only machine, told it was granted a GPU: it exits
    non-zero at once with the cause, and the attempt's record says it failed (not out of memory)."""
    import json
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    ckpt = tmp_path / "ckpt" / "last.pt"
    proc = subprocess.run([sys.executable, "-m", "transferable", "train", "--split", "rand0", "--net", "baseB",
                           "--manifest", str(tmp_path / "none.json"), "--shards", str(tmp_path / "none.json"),
                           "--out-dir", str(tmp_path / "out"), "--ckpt", str(ckpt), "--device", "auto",
                           "--gpus", "1", "--mem-mb", "1000", "--params", json.dumps({"train": {}, "net": {}})],
                          capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES="0"))
    assert proc.returncode != 0
    assert "granted 1 GPU(s) but CUDA is unusable" in proc.stderr, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "ckpt" / "attempt.json").read_text())
    assert rec["state"] == "failed" and "CUDA is unusable" in rec["error"] and rec["gpus"] == 1
    assert not (tmp_path / "out").exists()


def test_memory_decisions_follow_the_job_not_the_node(tmp_path):
    """Issue 17, case 2: a job that asked SLURM for 64 GB on a node with far more free memory gets 64 GB as
    its budget (from SLURM's variables, or from its cgroup's limit), not the node's MemAvailable."""
    from transferable.data.host import available_memory

    none = tmp_path / "none"
    proc = tmp_path / "cgroup"
    proc.write_text("0::/slurm/job42\n")

    def budget(env, root=none, declared=None):
        return devices.job_memory_bytes(declared, env, str(root), str(proc))

    # the node's free memory moves between calls: compare loosely; the limits below are far smaller (1 GB <<)
    assert abs(budget({}) - available_memory()) < 512 << 20
    assert available_memory() > 2 << 30
    assert budget({"SLURM_MEM_PER_NODE": "1024"}) == 1 << 30
    assert budget({"SLURM_MEM_PER_CPU": "256", "SLURM_CPUS_ON_NODE": "2"}) == 512 << 20
    assert budget({"SLURM_MEM_PER_GPU": "300", "SLURM_GPUS_ON_NODE": "2"}) == 600 << 20
    assert budget({"SLURM_MEM_PER_GPU": "300", "CUDA_VISIBLE_DEVICES": "2,3,5"}) == 900 << 20
    assert budget({"SLURM_MEM_PER_NODE": "0"}) > 2 << 30  # --mem=0: the whole node, not a budget of 0
    assert budget({}, declared=700) == 700 << 20  # the rule's mem_mb, passed as --mem-mb
    cg = tmp_path / "sys" / "slurm" / "job42"
    cg.mkdir(parents=True)
    (cg / "memory.max").write_text(f"{300 << 20}\n")
    assert budget({}, tmp_path / "sys") == 300 << 20
    (cg / "memory.max").write_text("max\n")  # no limit
    assert budget({}, tmp_path / "sys") > 2 << 30


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_cgroup_limit_on_a_parent_is_found(tmp_path, version):
    """Issue 26: SLURM limits job_X (and step_Y); the process sits in task_Z below, whose own limit is
    "max". The budget is the smallest limit on the way up, the leaf's included."""
    proc = tmp_path / "cgroup"
    rel = ["system.slice", "slurmstepd.scope", "job_7", "step_0", "user", "task_0"]
    if version == "v2":
        proc.write_text("0::/" + "/".join(rel) + "\n")
        base, name = tmp_path / "sys", "memory.max"
    else:
        proc.write_text("12:pids:/slurm/job_7\n9:memory:/" + "/".join(rel) + "\n4:cpu,cpuacct:/\n")
        base, name = tmp_path / "sys" / "memory", "memory.limit_in_bytes"
    for depth in range(len(rel) + 1):
        d = base.joinpath(*rel[:depth])
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("max\n" if version == "v2" else f"{(1 << 63) - 4096}\n")
    base.joinpath(*rel[:3], name).write_text(f"{1234 << 20}\n")  # job_7
    base.joinpath(*rel[:4], name).write_text(f"{2000 << 20}\n")  # step_0: looser than the job
    got, where = devices.job_memory(None, {}, str(tmp_path / "sys"), str(proc))
    assert got == 1234 << 20 and where.endswith("job_7/" + name)


def test_the_lock_folder_is_shared_by_every_user(tmp_path):
    """Issue 26: the folder is made sticky and world-writable whatever the creator's umask, and its lock
    files readable by all; a folder another user made without access for us is an error naming it."""
    import os
    import stat

    old = os.umask(0o077)
    try:
        devices._shared_folder(tmp_path / "locks")
        fd = devices._open_lock(tmp_path / "locks" / "gpu0.lock")
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o1777
    assert stat.S_IMODE((tmp_path / "locks" / "gpu0.lock").stat().st_mode) == 0o644


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as a second user")
def test_a_second_user_on_the_node_gets_a_gpu(monkeypatch):
    """Issue 26 (checked on a shared node): user A's job made the lock folder and files with umask 022;
    user B's job must lock a GPU there, and see A's held lock as held, not crash or wait forever."""
    import pwd
    import shutil
    import tempfile
    from pathlib import Path

    monkeypatch.setattr(devices, "_held", {})
    nobody = pwd.getpwnam("nobody")
    top = Path(tempfile.mkdtemp(prefix="transferable-locks-test-", dir="/tmp"))  # not under root's 0700 tmp
    try:
        os.chmod(top, 0o755)
        locks = top / "locks"
        old = os.umask(0o022)
        try:
            assert devices.acquire_gpu(2, locks) == 0  # user A (root) holds GPU 0
        finally:
            os.umask(old)
        # user B: the same Python, started as root (it lives under /root), drops to nobody before locking
        code = ("import os, sys, pathlib; from transferable.train.devices import acquire_gpu; "
                f"os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid}); "
                "print(acquire_gpu(2, pathlib.Path(sys.argv[1])), flush=True)")
        proc = subprocess.run([sys.executable, "-c", code, str(locks)], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr[-2000:]
        # a folder user B cannot write: a clear error, not an endless "all GPUs are held"
        os.chmod(locks, 0o755)
        (locks / "x").mkdir()
        proc = subprocess.run([sys.executable, "-c", code, str(locks / "x")], capture_output=True, text=True)
        assert proc.returncode != 0 and "not writable by this user" in proc.stderr, proc.stderr[-2000:]
        assert str(locks / "x") in proc.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_worker_threads_take_the_jobs_device_and_decode_on_their_own_stream(tmp_path, monkeypatch):
    """Issue 26: the read-ahead thread makes the job's GPU its current device before anything else (a new
    thread's is GPU 0); nvJPEG decodes on one stream per device and thread, so the read-ahead thread and
    an evaluation in the main thread never share one. torch.cuda's functions are replaced: no GPU here."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from transferable.data import loader, pixels, reader

    bound = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: bound.append((threading.get_ident(), torch.device(d))))
    pool = ThreadPoolExecutor(1, initializer=loader.bind_device, initargs=(torch.device("cuda", 1),))
    worker = pool.submit(threading.get_ident).result()
    assert bound == [(worker, torch.device("cuda", 1))]
    loader.bind_device("cpu")
    assert len(bound) == 1

    # the stream's own read-ahead pool is made that way (a memory-mapped set reads ahead on the CPU too)
    np.save(tmp_path / "a.npy", np.zeros((8, 3, 12, 12), np.uint8))
    images = reader.ImageSet([np.load(tmp_path / "a.npy", mmap_mode="r")], ram_limit=0)
    s = loader.TrainStream(images, np.zeros(8, np.int64), np.zeros((3, 12, 12), np.float32), 8, 4, seed=0)
    assert s._pool._initializer is loader.bind_device and s._pool._initargs == (torch.device("cpu"),)

    monkeypatch.setattr(pixels, "_DECODE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", lambda dev: object())
    main = pixels.decode_stream("cuda:0")
    assert pixels.decode_stream(torch.device("cuda", 0)) is main
    other = pool.submit(pixels.decode_stream, "cuda:0").result()
    assert other is not main and pixels.decode_stream("cuda:1") is not main
