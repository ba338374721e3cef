"""Live SLURM test: a real one-node cluster (tests/cluster/start.sh: Debian's Slurm 22.05 on 127.0.0.1, two fake
GPUs) runs configs/micro.yaml through profiles/slurm, to the figures.

Checked: every training job asked SLURM for a GPU and the small jobs went out in 4 bundled jobs; the scores
equal those of a local run (profiles/local) of the same configuration; a training job signalled mid-training
(as SLURM does before a time limit or preemption) checkpoints, is retried by Snakemake, resumes from its
checkpoint and ends with exactly the metrics of an uninterrupted run.

Needs root on Linux and apt-get (the cluster's packages are installed if missing): skipped otherwise.
About 3-4 minutes on 2 cores. Run alone with `pytest -m slurm tests/test_slurm.py`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from conftest import ROOT, VENV_BIN, built_once, copy_workflow, early_name

CLUSTER = ROOT / "tests" / "cluster"
# Every micro run asks SLURM for a GPU per training job but pins training to the CPU: on a host with real GPUs the
# fake GPU indices SLURM hands out would map onto them, and GPU (bf16) results are not reproducible bit for bit.
CPU = "resources={device: cpu, train_gpus: 1}"
# The micro run trains as the default config does: on shared streams (each half's non-base nets in one job,
# rules train_together_*); the signalled and GPU-grant runs train one base net in the per-net rule.
SHARED = "resources={device: cpu, train_gpus: 1, shared_stream: true}"
# The local test cluster has no job accounting (sacct fails there): poll with squeue, partition "debug". These
# are the profile's site settings; no account (--slurm-no-account) and a fast first status check on the CLI.
SITE = {"TRANSFERABLE_SLURM_PARTITION": "debug", "TRANSFERABLE_SLURM_STATUS_COMMAND": "squeue"}
CLUSTER_FLAGS = ["--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1",
                 "--slurm-keep-successful-logs", "--verbose"]
GROUP_JOBS = {"rule_data_demo_data_ingest", "rule_shards_shard_part", "rule_prepare_shard_index_split_manifest",
              "rule_similarity"}
SCORES = ["top1", "top1_final", "top5", "top5_final", "top1_max", "evals", "iters"]


def _why_skip() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the live SLURM test needs Linux"
    if os.geteuid() != 0:
        return "the live SLURM test starts slurmctld/slurmd (and apt-installs them if missing): run it as root"
    if not shutil.which("apt-get") and not all(map(shutil.which, ("slurmctld", "slurmd", "sbatch", "munged"))):
        return "no apt-get to install slurmctld slurmd slurm-client munge, and they are not installed"
    return None


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRANSFERABLE_SLURM_", "SLURM_")) and k not in ("TRANSFERABLE_GPUS",)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _start(args, cwd: Path, env: dict, log: str, request=None) -> subprocess.Popen:
    """Start snakemake with its output in cwd/log; with a test's ``request``, killed at the test's end if
    still running (a failed assertion does not leave it behind)."""
    with open(cwd / log, "w") as out:
        proc = subprocess.Popen([str(VENV_BIN / "snakemake"), *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    if request is not None:
        request.addfinalizer(lambda: proc.poll() is None and proc.kill())
    return proc


def _finish(proc: subprocess.Popen, cwd: Path, log: str, timeout: int):
    """Wait for a started snakemake (killed after ``timeout`` s); (returncode, output)."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, (cwd / log).read_text()


def _copy_run(wd: Path, dest: Path) -> Path:
    """A copy of a finished run's folder (Snakemake's records included, its locks not), to run a second
    Snakemake beside the first: one folder holds one Snakemake at a time."""
    shutil.copytree(wd, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "slurm_logs"))
    return dest


def _sbatch_calls(output: str) -> dict[str, list[str]]:
    """The sbatch command lines snakemake --verbose printed, by the job's --comment (rule and wildcards)."""
    calls: dict[str, list[str]] = {}
    for line in re.findall(r"^sbatch call: (sbatch .*)$", output, re.M):
        calls.setdefault(re.search(r"--comment (\S+)", line).group(1), []).append(line)
    return calls


def _run_id(output: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", output).group(1)


def _jobs(run_id: str) -> list[dict]:
    """This run's SLURM jobs, finished ones included (MinJobAge=600 keeps them in squeue)."""
    out = subprocess.run(["squeue", "--states=all", "--json"], capture_output=True, text=True, check=True).stdout
    return [j for j in json.loads(out)["jobs"] if j["name"] == run_id]


def _state(job: dict) -> str:
    s = job["job_state"]
    return s[0] if isinstance(s, list) else s


def _cluster_already_up() -> bool:
    """A cluster this harness started before (by hand) is up: reused and left running."""
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True) if shutil.which("scontrol") else None
    return bool(ping and ping.returncode == 0 and "is UP" in ping.stdout
                and Path("/run/transferable-slurm/slurmctld.started").exists())


def start_early(wd: Path) -> None:
    """Start the cluster, then configs/micro.yaml on it with profiles/slurm (in a copy of the workflow, ``wd``),
    in the background: called once per test session, at its start, when a test of this file is selected
    (conftest.early_runs). The run is mostly Snakemake waiting for SLURM's status checks; meanwhile the
    workers run other files. ``cluster`` and ``micro`` wait for what it started."""
    if _why_skip():
        return
    copy_workflow(wd)
    (wd / "cluster.ours").write_text("0" if _cluster_already_up() else "1")
    snakemake = shlex.join([str(VENV_BIN / "snakemake"), "--profile", "profiles/slurm", *CLUSTER_FLAGS,
                            "--configfile", "configs/micro.yaml", "--config", SHARED])
    # each .rc file appears (renamed) once its step has ended
    script = (f"{shlex.quote(str(CLUSTER / 'start.sh'))} --fresh > cluster-start.log 2>&1; echo $? > rc.tmp; "
              "mv rc.tmp cluster-start.rc; [ \"$(cat cluster-start.rc)\" = 0 ] || exit; "
              f"date +%s.%N > micro.start; {snakemake} > slurm-micro.log 2>&1; echo $? > rc.tmp; "
              "date +%s.%N > micro.end; mv rc.tmp micro.rc")
    proc = subprocess.Popen(["bash", "-c", script], cwd=wd, env=_env(**SITE), start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (wd / "background.pid").write_text(str(proc.pid))


def _wait_for(path: Path, timeout: float) -> int:
    """The return code the background step wrote to ``path``; after ``timeout`` s, the background run
    (its process group: the cluster start or Snakemake) is killed and the test fails."""
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            _kill_background(path.parent)
            pytest.fail(f"{path.name} not written within {timeout:.0f} s: the background run was killed")
        time.sleep(0.5)
    return int(path.read_text())


def _kill_background(wd: Path) -> None:
    pid = wd / "background.pid"
    if pid.exists():
        try:
            os.killpg(int(pid.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster, started in the background at the session's start (start_early) and stopped after this
    module, even when the start failed half-way. One started before by hand is reused and left running."""
    wd = built_once(tmp_path_factory, early_name(__file__), start_early)  # started already: returns at once
    try:
        rc = _wait_for(wd / "cluster-start.rc", 600)
        if rc != 0:
            pytest.fail(f"tests/cluster/start.sh failed ({rc}):\n{(wd / 'cluster-start.log').read_text()[-6000:]}")
        yield wd
    finally:
        _kill_background(wd)  # nothing left to kill once micro has waited for its run
        if (wd / "cluster.ours").read_text() == "1":
            subprocess.run([str(CLUSTER / "stop.sh"), "--purge"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def micro(cluster):
    """configs/micro.yaml run on the cluster with profiles/slurm, from a copy of the workflow (start_early)."""
    wd = cluster
    rc = _wait_for(wd / "micro.rc", 900)
    out = (wd / "slurm-micro.log").read_text()
    seconds = float((wd / "micro.end").read_text()) - float((wd / "micro.start").read_text())
    assert rc == 0, f"snakemake on SLURM failed ({rc}) after {seconds:.0f} s:\n{out[-6000:]}"
    print(f"\nmicro on SLURM: {seconds:.0f} s (started with the session)")
    return SimpleNamespace(dir=wd, out=out, seconds=seconds, run_id=_run_id(out))


def test_micro_runs_on_slurm_with_gpu_requests(micro):
    wd = micro.dir
    for target in ("tables/runs.csv", "tables/table1.csv", "tables/paper_comparison.csv",
                   "figures/fig2.pdf", "figures/fig3.pdf"):
        assert (wd / "results" / target).stat().st_size > 0, target
    nets = sorted(p.parent for p in (wd / "results" / "nets").glob("*/*/metrics.json"))
    assert len(nets) == 13
    metrics = [json.loads((n / "metrics.json").read_text()) for n in nets]
    assert all(m["device"] == "cpu" for m in metrics)
    # the job's memory (micro: resources.train_mem_mb 1000, sbatch --mem 1000) reached the trainer through
    # the job step, which runs without SLURM's memory variables: not the node's free memory
    for m in metrics:
        job = m["provenance"]["job"]
        assert {k: job[k] for k in ("gpus_granted", "memory_limit_mb", "memory_limit_from")} == {
            "gpus_granted": 1, "memory_limit_mb": 1000, "memory_limit_from": "the job's mem_mb (1000)"}, job
        assert job["data_policy"] == "memory" and 0 < job["data_bytes"] < 250 << 20, job  # a micro half: in memory

    calls = _sbatch_calls(micro.out)
    train = {c: lines for c, lines in calls.items() if c.startswith("rule_train")}
    # the 5 base nets alone, the other 8 in one job per split and target half
    bases = [n for n in nets if n.name.startswith("base") and not n.name.endswith("_ft")]
    together = {"rand0_B", "natman_A", "natman_B", "all_A"}
    assert sorted(train) == sorted([f"rule_train_wildcards_{n.parent.name}_{n.name}" for n in bases]
                                   + [f"rule_train_together_{g}" for g in together]), sorted(train)
    # rand0's 5 non-base nets shared one stream; natman's transfers and R1A are one net per half
    assert {(m["split"], m["net"]): m["trained_with"] for m in metrics if m["trained_with"] > 1} == {
        ("rand0", n): 5 for n in ("B1B", "B1B_ft", "A1B", "A1B_ft", "baseB_ft")}
    for comment, lines in train.items():
        assert len(lines) == 1, f"{comment} was submitted {len(lines)} times"
        assert re.search(r" (--gpus=1|--gres=gpu:1)( |$)", lines[0]), lines[0]
        assert "--cpus-per-gpu=1" in lines[0] and "--signal=TERM@120" in lines[0] and "--requeue" in lines[0]
        assert " --mem 1000 " in lines[0], lines[0]
    # the small jobs (demo data, ingest, 2 shard parts, 3 manifests, the index, the aggregates, 3 curves, the
    # HTML tables, the similarity figure) went out as 4 SLURM jobs and the similarity job as one, each asking
    # for one CPU: a group's jobs run one after the other
    small = {c: lines for c, lines in calls.items() if c not in train}
    summary = [c for c in small if c.startswith("rule_summary_")]
    assert set(small) == GROUP_JOBS | set(summary) and len(summary) == 1, sorted(small)
    for comment, lines in small.items():
        assert len(lines) == 1 and "--gpus" not in lines[0] and "--gres" not in lines[0], lines
        assert "--cpus-per-task=1" in lines[0] and " -p debug " in lines[0], lines[0]
    assert len(calls) == 14  # 5 base nets, 4 shared-stream jobs, 4 groups, the similarity job

    # SLURM's own record: the GPU requests it accepted, and every job completed
    jobs = _jobs(micro.run_id)
    assert len(jobs) == 14 and {_state(j) for j in jobs} == {"COMPLETED"}
    assert sorted(j["comment"] for j in jobs if j["tres_per_job"] == "gres:gpu:1") == sorted(train)


def test_slurm_scores_equal_a_local_run(micro, micro_done):
    """The same configuration run locally (conftest.micro_done, the session's one local micro run): CPU
    training with the same seeds is deterministic, wherever it runs."""
    on_slurm = pd.read_csv(micro.dir / "results" / "tables" / "runs.csv")
    local = pd.read_csv(micro_done / "results" / "tables" / "runs.csv")
    key = ["split", "net"]
    pd.testing.assert_frame_equal(on_slurm.sort_values(key).reset_index(drop=True)[key + SCORES],
                                  local.sort_values(key).reset_index(drop=True)[key + SCORES])


# A longer rand0/baseA: ~10 s of training, a checkpoint every 250 iterations.
LONG = {"max_iter": 6000, "eval_every": 500, "checkpoint_every": 250, "lr_step": 2000}
NET = ("rand0", "baseA")


def test_signalled_training_job_resumes(micro, tmp_path, request):
    wd = micro.dir
    split, net = NET
    target = f"results/nets/{split}/{net}/metrics.json"
    out_dir, ckpt, log = wd / "results/nets" / split / net, wd / f"results/ckpt/{split}/{net}/last.pt", \
        wd / f"logs/nets/{split}/{net}.log"

    cfg = yaml.safe_load((wd / "configs" / "micro.yaml").read_text())
    cfg["train"].update(LONG)
    (wd / "configs" / "micro-long.yaml").write_text(yaml.safe_dump(cfg))

    # the reference: the same net trained uninterrupted, locally, in a copy of the run, while SLURM trains it
    ref_wd = _copy_run(wd, tmp_path / "reference")
    reference = _start([target, "--cores", "1", "--configfile", "configs/micro-long.yaml", "--config", CPU],
                       ref_wd, _env(), log="local-long.log", request=request)

    # on SLURM: SIGTERM to the job's steps (what --signal=TERM@120 or a preemption does) once it has checkpointed
    args = [target, "--profile", "profiles/slurm", *CLUSTER_FLAGS, "--configfile", "configs/micro-long.yaml",
            "--config", CPU]
    t0 = time.time()
    with open(wd / "slurm-long.log", "w") as f:
        proc = subprocess.Popen([str(VENV_BIN / "snakemake"), *args], cwd=wd, env=_env(**SITE), stdout=f,
                                stderr=subprocess.STDOUT)
    try:
        comment = f"rule_train_wildcards_{split}_{net}"
        job = None
        while time.time() - t0 < 180 and proc.poll() is None:
            if ckpt.exists():
                out = (wd / "slurm-long.log").read_text()
                running = [j for j in _jobs(_run_id(out)) if j["comment"] == comment and _state(j) == "RUNNING"]
                if running:
                    job = running[0]["job_id"]
                    subprocess.run(["scancel", "--signal=TERM", str(job)], check=True)
                    break
            time.sleep(0.2)
        assert job is not None, "no checkpoint of a running training job to interrupt within 180 s"
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (wd / "slurm-long.log").read_text()
    print(f"\ninterrupted + resumed on SLURM: {time.time() - t0:.0f} s")
    assert rc == 0, out[-6000:]

    # the signalled job failed, Snakemake resubmitted it (attempt 2), and it resumed. The retry asks for the
    # same time (resources.train_runtime_min: 10) and memory (1000 MB): its checkpoint carries the progress,
    # and a signal is no out-of-memory end
    lines = _sbatch_calls(out)[comment]
    assert len(lines) == 2, lines
    limits = [int(re.search(r" -t (\d+) ", line).group(1)) for line in lines]
    mems = [int(re.search(r" --mem (\d+) ", line).group(1)) for line in lines]
    assert limits == [10, 10] and mems == [1000, 1000], (limits, mems)
    states = {j["job_id"]: _state(j) for j in _jobs(_run_id(out))}
    assert states[job] == "FAILED" and sorted(states.values()) == ["COMPLETED", "FAILED"], states
    assert (wd / ".snakemake/slurm_logs/rule_train" / f"{split}_{net}" / f"{job}.log").exists(), \
        "the failed attempt's SLURM log is kept"
    m = re.search(rf"resumed from results/ckpt/{split}/{net}/last.pt at iteration (\d+)", log.read_text())
    assert m and 0 < int(m.group(1)) < 6000, log.read_text()[-2000:]
    assert not ckpt.exists(), "the checkpoint is removed once the net is done"

    # ... to exactly the uninterrupted result
    rc, ref_out = _finish(reference, ref_wd, "local-long.log", timeout=300)
    assert rc == 0, ref_out[-4000:]
    ref_dir = ref_wd / "results/nets" / split / net
    ref_metrics = json.loads((ref_dir / "metrics.json").read_text())
    ref_history = pd.read_csv(ref_dir / "history.csv")
    assert ref_metrics["iters"] == 6000 and not (ref_wd / f"results/ckpt/{split}/{net}/last.pt").exists()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert {k: metrics[k] for k in SCORES} == {k: ref_metrics[k] for k in SCORES}
    pd.testing.assert_frame_equal(pd.read_csv(out_dir / "history.csv").drop(columns="elapsed_s"),
                                  ref_history.drop(columns="elapsed_s"))


def test_a_job_granted_no_gpu_uses_none_and_one_granted_a_gpu_fails_without_cuda(micro, tmp_path, request):
    """Issue 26 on the live cluster. `resources.train_gpus: 0`: sbatch asks for no GPU and the trainer is told
    so (device auto -> the CPU). `train_gpus: 1` with device auto on this node, whose GPUs are fake and whose
    CUDA is unusable: the job fails at once, saying why, instead of training on the CPU. The two run at once,
    the second in a copy of the run."""
    wd = micro.dir
    target = "results/nets/rand0/baseA/metrics.json"
    (wd / target).unlink()
    gpu_wd = _copy_run(wd, tmp_path / "gpu")
    no_gpu = _start([target, "--profile", "profiles/slurm", *CLUSTER_FLAGS, "--configfile", "configs/micro.yaml",
                     "--config", "resources={device: auto, train_gpus: 0}"],
                    wd, _env(**SITE), log="slurm-nogpu.log", request=request)
    gpu = _start([target, "--profile", "profiles/slurm", *CLUSTER_FLAGS, "--retries", "0", "--configfile",
                  "configs/micro.yaml", "--config", "resources={device: auto, train_gpus: 1}"],
                 gpu_wd, _env(**SITE), log="slurm-gpu-no-cuda.log", request=request)
    rc, out = _finish(no_gpu, wd, "slurm-nogpu.log", timeout=300)
    assert rc == 0, out[-4000:]
    line = _sbatch_calls(out)["rule_train_wildcards_rand0_baseA"][0]
    assert "--gpus" not in line and "--gres" not in line and "--cpus-per-task=1" in line, line
    m = json.loads((wd / target).read_text())
    assert m["device"] == "cpu" and m["provenance"]["job"]["gpus_granted"] == 0

    rc, out = _finish(gpu, gpu_wd, "slurm-gpu-no-cuda.log", timeout=300)
    assert rc != 0 and not (gpu_wd / target).exists()
    log = (gpu_wd / "logs/nets/rand0/baseA.log").read_text()
    assert "this job was granted 1 GPU(s) but CUDA is unusable: " in log and "Nothing was trained" in log, log[-3000:]
