"""``transferable smoke``: the checks to run on one node of a cluster before a campaign (minutes).

0. **device** (first): the device, the GPUs the scheduler allocated, why CUDA is unusable if it is, and the
   memory a training job here may use with where that limit comes from. A GPU allocated (or ``--device
   cuda``) with CUDA unusable fails the smoke test at once: that is the node where a campaign would
   otherwise train on the CPU. Every training job below runs as the SLURM profile runs one: without
   SLURM's memory variables (the jobstep plugin drops them) and with this limit passed as ``--mem-mb``.
1. **resume**: a tiny net trained to the end in a job process, and the same net stopped by SIGTERM after
   its first checkpoint (what SLURM sends before a time limit or a preemption), then run again: the run
   must resume and end with the same evaluations (deterministic kernels; the net has no LRN, whose CUDA
   backward has no deterministic kernel), on the device of check 0, with the job's memory limit seen by
   the trainer. With two GPUs also stopped on ``cuda:0`` and resumed on ``cuda:1``.
2. **paper loop**: the real training loop with ``configs/paper-fast.yaml``'s kernel settings (bf16 autocast,
   TF32, cuDNN's autotuner, not deterministic) on a net with LRN and dropout, stopped and resumed (on the
   other GPU when there are two): resumed, not restarted; finite losses; a falling training loss; the
   kernel settings recorded as asked.
3. **gpu locks**: two job processes on this node each take a GPU through the pipeline's lock files and
   hold it for a moment. As ``profiles/local`` runs them (no SLURM): with two or more GPUs they get
   different ones at once; with one, the second waits for the first instead of failing. As two SLURM jobs
   (different job ids, each seeing its own GPU as index 0): both start at once. Without CUDA the same lock
   code runs with a pretend count of 1 and 2 GPUs.
4. **feed**: the same training batches whichever way they reach the device: images held there, memory-mapped
   images read ahead into pinned buffers and copied on a side stream, JPEG files decoded by nvJPEG (allowed to
   differ from the CPU decoder by under one grey level on average), with an evaluation of the JPEG
   validation set after every batch while the next one is decoded (200 batches on a GPU);
5. **step**: the paper's CaffeNet training step with the kernel settings `configs/paper-fast.yaml` trains
   with (``train.tf32``, ``train.cudnn_benchmark``, bf16 autocast), beside a bare PyTorch loop (CUDA only).

Each check prints one JSON line; the command exits 1 if any check fails. ``--device cpu`` runs checks 0-4
on the CPU (the test suite does, ``tests/test_smoke.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[3]
_HOLD = """
import json, sys, time
from pathlib import Path
from transferable.train.devices import wait_for_gpu
count = int(sys.argv[2]) if sys.argv[2] != "auto" else None
t0 = time.time()
i = wait_for_gpu(count, Path(sys.argv[1]), poll_s=0.1, log=lambda *a: None)
got = time.time() - t0
time.sleep(float(sys.argv[3]))
print(json.dumps({"gpu": i, "waited_s": round(got, 2)}))
"""


_NODE = "the node's available memory"


def _env(**extra) -> dict:
    """A job process's environment as the SLURM profile gives it: the jobstep plugin runs each rule in a
    nested ``srun`` without SLURM's memory variables (the rule passes its ``mem_mb`` as ``--mem-mb``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_MEM_")}
    return dict(env, PYTHONPATH=str(_REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def _train_cmd(exp: Path, out: Path, ckpt: Path, cfg: dict, device: str, mem_mb: int | None) -> list[str]:
    return [sys.executable, "-m", "transferable", "train", "--split", "rand0", "--net", "baseB",
            "--manifest", str(exp / "rand0.json"), "--shards", str(exp / "shards/index.json"),
            "--out-dir", str(out), "--ckpt", str(ckpt), "--device", device, "--params", json.dumps(cfg),
            *(["--mem-mb", str(mem_mb)] if mem_mb else [])]


def _history(out: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(out / "history.csv").drop(columns="elapsed_s").to_dict("records")


def _tiny_experiment(root: Path, lrn: bool, dropout: float):
    from .bench import _synthetic_experiment

    net = {"arch": "caffenet-small", "crop": 28, "widths": [16, 16, 16, 16, 16, 32, 32], "init": "kaiming",
           "outputs": "all", "dropout": dropout, "lrn": lrn, "input_scale": 0.017}
    exp = _synthetic_experiment(root / "exp", num_classes=4, train_per_class=64, val_per_class=16, size=32,
                                net_cfg=net)
    return exp, net


def _train_cfg(net: dict, iters: int, **train) -> dict:
    return {"net": net, "split_kind": "random", "metric": {"best_k": 2},
            "train": {"batch_size": 32, "max_iter": iters, "lr": 0.01, "lr_policy": "step", "lr_step": iters // 2,
                      "gamma": 0.1, "warmup_iter": 0, "grad_clip": 0, "momentum": 0.9, "weight_decay": 5e-4,
                      "eval_every": iters // 4, "checkpoint_every": 10, "seed": 0, **train}}


def _resumed_at(text: str) -> int | None:
    m = re.search(r"resumed from \S+ at iteration (\d+)", text)
    return int(m.group(1)) if m else None


def _stop_then_resume(exp: Path, out: Path, cfg: dict, first: str, second: str, mem_mb: int | None) -> dict:
    """A job on ``first`` stopped by SIGTERM after its first checkpoint (what SLURM sends before a time
    limit or a preemption), then rerun on ``second``: how it stopped and where it resumed."""
    ckpt = out.parent / f"{out.name}.ckpt/last.pt"
    proc = subprocess.Popen(_train_cmd(exp, out, ckpt, cfg, first, mem_mb), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    first_log = proc.communicate()[0]
    again = subprocess.run(_train_cmd(exp, out, ckpt, cfg, second, mem_mb), env=_env(), capture_output=True,
                           text=True)
    at = _resumed_at(again.stdout + again.stderr)
    r = {"devices": [first, second], "stopped_with": proc.returncode, "resumed_at_iter": at,
         "finished": again.returncode == 0}
    if at is None or again.returncode:
        r["log"] = first_log[-1500:] + again.stdout[-1500:] + again.stderr[-1500:]
    return r


def _used(out: Path) -> str | None:
    f = out / "metrics.json"
    return json.loads(f.read_text())["device"] if f.exists() else None


def check_resume(root: Path, device: str, iters: int = 300, gpus: int = 0, mem_mb: int | None = None) -> dict:
    """Check 1: uninterrupted against SIGTERM + rerun, in job processes as the pipeline runs them, with
    deterministic kernels: the evaluations must be identical. On a node with two GPUs also stopped on
    cuda:0 and resumed on cuda:1 (a requeued job rarely gets its old index): the checkpoint carries the
    generator of the job's own device, so the run continues the same dropout stream there."""
    exp, net = _tiny_experiment(root, lrn=False, dropout=0.5)  # LRN's CUDA backward is not deterministic
    cfg = _train_cfg(net, iters, amp=False, deterministic=True)
    t0 = time.time()
    ref = subprocess.run(_train_cmd(exp, root / "ref", root / "ref.pt", cfg, device, mem_mb), env=_env(),
                         capture_output=True, text=True)
    if ref.returncode:
        return {"check": "resume", "ok": False, "error": ref.stdout[-2000:] + ref.stderr[-2000:]}
    pairs = {"same_device": (device, device)}
    if device.startswith("cuda") and gpus >= 2:
        pairs["other_index"] = ("cuda:0", "cuda:1")
    r = {"check": "resume", "device": device, "iters": iters}
    ok = True
    for key, (first, second) in pairs.items():
        out = root / key
        got = _stop_then_resume(exp, out, cfg, first, second, mem_mb)
        got["same_evaluations"] = got["finished"] and _history(out) == _history(root / "ref")
        got["trained_on"] = _used(out)
        ok &= bool(got["stopped_with"] == 128 + signal.SIGTERM and got["resumed_at_iter"]
                   and got["same_evaluations"] and (got["trained_on"] or "").startswith(device.split(":")[0]))
        r[key] = got
    if "other_index" not in pairs:
        r["other_index"] = {"skipped": "needs two GPUs" if device.startswith("cuda") else "CPU run"}
    trainer = json.loads((root / "ref" / "metrics.json").read_text())["provenance"]["job"]
    # the scheduler's limit (check 0) reached the trainer the way the SLURM profile passes it
    memory_ok = not mem_mb or (trainer["memory_limit_mb"] <= mem_mb and trainer["memory_limit_from"] != _NODE)
    r.update(ok=bool(ok and memory_ok and _used(root / "ref") == r["same_device"]["trained_on"]),
             job_memory_limit_mb=mem_mb, memory_limit_reached_trainer=memory_ok if mem_mb else None,
             trained_on=[_used(root / "ref"), r["same_device"]["trained_on"]],
             trainer_memory_limit_mb=trainer["memory_limit_mb"], trainer_memory_limit_from=trainer["memory_limit_from"],
             seconds=round(time.time() - t0, 1))
    # flat fields of the same-device pair, as before
    r.update({k: r["same_device"][k] for k in ("stopped_with", "same_evaluations")},
             resumed=bool(r["same_device"]["resumed_at_iter"]))
    return r


def check_paper_loop(root: Path, device: str, iters: int = 120, gpus: int = 0,
                     mem_mb: int | None = None) -> dict:
    """Check 2: the real training loop with ``configs/paper-fast.yaml``'s ``train`` kernel settings (bf16
    autocast on a GPU, TF32, cuDNN's autotuner, not deterministic) on a net with the paper's LRN and dropout
    0.5, stopped by SIGTERM and resumed (on the other GPU when there are two). Not bit-exact by design:
    it must resume from its checkpoint (not restart), finish every evaluation with finite losses, lower
    its training loss, and record the kernel settings asked for and the device it was given."""
    import math

    import yaml

    paper = yaml.safe_load((_REPO / "configs/paper-fast.yaml").read_text())["train"]
    kernels = {k: paper[k] for k in ("amp", "tf32", "cudnn_benchmark", "deterministic")}
    exp, net = _tiny_experiment(root, lrn=True, dropout=0.5)
    cfg = _train_cfg(net, iters, **kernels)
    t0 = time.time()
    second = "cuda:1" if device.startswith("cuda") and gpus >= 2 else device
    first = "cuda:0" if second == "cuda:1" else device
    out = root / "run"
    got = _stop_then_resume(exp, out, cfg, first, second, mem_mb)
    r = {"check": "paper loop", "train_settings": kernels, **got, "seconds": round(time.time() - t0, 1)}
    if not got["finished"]:
        return {**r, "ok": False}
    hist = _history(out)
    losses = [h["train_loss"] for h in hist if h["train_loss"] == h["train_loss"]]
    m = json.loads((out / "metrics.json").read_text())
    want = {"tf32": kernels["tf32"], "bf16_autocast": kernels["amp"] and device.startswith("cuda"),
            "cudnn_benchmark": kernels["cudnn_benchmark"] and not kernels["deterministic"]}
    used = m["provenance"].get("kernels", {})
    r.update(evaluations=len(hist), train_loss_first=round(losses[0], 4) if losses else None,
             train_loss_last=round(losses[-1], 4) if losses else None, kernels=used, trained_on=m["device"])
    r["ok"] = bool(got["stopped_with"] == 128 + signal.SIGTERM and got["resumed_at_iter"]
                   and len(hist) == 4 and all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"])
                                              for h in hist)
                   and losses[-1] < losses[0] and all(used.get(k) == v for k, v in want.items())
                   and m["device"].split(":")[0] == device.split(":")[0])
    return r


def _two_jobs(locks: Path, count: int, hold_s: float, job_ids: tuple) -> list[dict]:
    procs = []
    for job in job_ids:
        e = _env(**({"SLURM_JOB_ID": job} if job else {}))
        if not job:
            e.pop("SLURM_JOB_ID", None)
        procs.append(subprocess.Popen([sys.executable, "-c", _HOLD, str(locks), str(count), str(hold_s)],
                                      env=e, stdout=subprocess.PIPE, text=True))
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def check_locks(root: Path, gpus: int | None, hold_s: float = 2.0) -> dict:
    """Check 3: two job processes take GPUs through the lock files. Outside SLURM (profiles/local) they
    share the node's GPUs: with two or more they get different ones at once, with one the second waits.
    Under SLURM each job's GPUs are its own (``ConstrainDevices``: each sees index 0), so two jobs with
    different job ids both start at once."""
    import torch

    counts = [gpus] if gpus is not None else [1, 2]  # without CUDA: pretend counts
    results = {}
    for count in counts:
        got = _two_jobs(root / f"locks{count}", count, hold_s, (None, None))
        waits = sorted(g["waited_s"] for g in got)
        if count >= 2:
            ok = len({g["gpu"] for g in got}) == 2 and waits[1] < hold_s / 2
        else:
            ok = waits[1] >= hold_s * 0.8  # the second waited for the first
        results[f"local_{count}_gpus"] = {"ok": ok, "jobs": got}
    got = _two_jobs(root / "locks_slurm", 1, hold_s, ("101", "102"))
    results["slurm_jobs_101_102"] = {"ok": max(g["waited_s"] for g in got) < hold_s / 2, "jobs": got}
    return {"check": "gpu locks", "ok": all(r["ok"] for r in results.values()),
            "cuda": torch.cuda.is_available(), **results}


def check_feed(root: Path, device: str, batches: int | None = None) -> dict:
    """Check 4: every way a batch reaches the device gives the same batch. Images held on the device (or
    in memory on a CPU), memory-mapped ones read ahead by 2 threads (on a GPU: into pinned buffers, copied
    on a side stream), and JPEG files decoded per batch (on a GPU by nvJPEG, whose decoder may differ from
    libjpeg-turbo's by a few grey levels: reported, and allowed a mean difference under 1 per batch). After
    every JPEG training batch the JPEG validation set is evaluated, as the loop does, while the read-ahead
    thread decodes the next batch: on a GPU for 200 batches (a stream shared between the two, or a decode
    not waited for, shows as a batch or an evaluation that differs from the others)."""
    import numpy as np
    import torch

    from ..data.loader import EvalSet, TrainStream
    from ..data.pixels import decode_jpegs, encode_jpeg
    from ..data.reader import ImageSet, JpegSet

    batches = batches or (200 if device.startswith("cuda") else 6)
    rng = np.random.default_rng(0)
    d = root / "feed"
    d.mkdir(parents=True, exist_ok=True)
    smooth = rng.integers(0, 256, (96, 3, 9, 9), dtype=np.uint8)  # photo-like: JPEG keeps it close
    imgs = np.repeat(np.repeat(smooth, 5, axis=2), 5, axis=3)[:, :, :40, :40].copy()
    np.save(d / "a.npy", imgs[:48])
    np.save(d / "b.npy", imgs[48:])
    maps = [np.load(d / f, mmap_mode="r") for f in ("a.npy", "b.npy")]
    labels = np.repeat([0, 1], 48)
    mean = imgs.mean(0).astype(np.float32)
    blobs = [encode_jpeg(x, 90) for x in imgs]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    jpegs = JpegSet([np.frombuffer(b"".join(blobs), dtype=np.uint8)], [offsets], 40)
    by_hand = decode_jpegs([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], threads=1).numpy()

    def evaluate(ev):
        return torch.cat([x.cpu() for x, _ in ev.batches(mean, 16)])

    def run(images, dev, ev=None):
        s = TrainStream(images, labels, mean, 32, 16, seed=1, device=dev, readers=2)
        got, evals = [], []
        for _ in range(batches):
            got.append(tuple(t.cpu() for t in s.next()))
            if ev is not None:  # the read-ahead thread is decoding the next batch meanwhile
                evals.append(evaluate(ev))
        return got, evals

    ref = run(ImageSet(maps), device)[0]
    mapped = run(ImageSet(maps, ram_limit=0), device)[0]
    same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, mapped))
    jpeg_ref = run(ImageSet([by_hand]), "cpu")[0]
    eval_ref = evaluate(EvalSet(ImageSet([by_hand]), labels, 32, "cpu"))
    jpeg, evals = run(jpegs, device, EvalSet(jpegs, labels, 32, device))
    per_batch = [float((a[0] - b[0]).abs().mean()) for a, b in zip(jpeg, jpeg_ref)]
    diff = torch.cat([(a[0] - b[0]).abs().flatten() for a, b in zip(jpeg, jpeg_ref)])
    labels_same = all(torch.equal(a[1], b[1]) for a, b in zip(jpeg, jpeg_ref))
    evals_same = all(torch.equal(e, evals[0]) for e in evals)  # one decoder, one input: identical every time
    eval_diff = float((evals[0] - eval_ref).abs().mean())
    exact = device != "cpu" or (float(diff.max()) == 0 and eval_diff == 0)
    ok = same and labels_same and evals_same and max(per_batch) < 1.0 and eval_diff < 1.0 and exact
    return {"check": "feed", "ok": ok, "device": device, "batches": batches,
            "memory_mapped_equals_in_memory": same,
            "jpeg_vs_cpu_decode_max_abs": round(float(diff.max()), 3),
            "jpeg_vs_cpu_decode_mean_abs": round(float(diff.mean()), 4),
            "jpeg_worst_batch_mean_abs": round(max(per_batch), 4),
            "evaluations_during_read_ahead": len(evals), "evaluations_identical": evals_same,
            "eval_vs_cpu_decode_mean_abs": round(eval_diff, 4)}


def check_step(root: Path) -> dict:
    """Check 5 (CUDA only): the paper's CaffeNet step with the pipeline's kernel settings."""
    import torch
    import yaml

    from .bench import bench_step
    from ..train.loop import kernel_settings

    if not torch.cuda.is_available():
        return {"check": "step", "ok": True, "skipped": "no CUDA device visible"}
    train = yaml.safe_load((_REPO / "configs/paper-fast.yaml").read_text())["train"]
    kernels = kernel_settings(train, torch.device("cuda"))
    r = bench_step(arch="caffenet", crop=227, batch=256, widths=None, outputs=1000, frozen=(0, 7), device="cuda",
                   amp=kernels["bf16_autocast"], min_time=3.0)
    return {"check": "step", "ok": all(x["ours_img_s"] > 0 for x in r["runs"]), "kernels": kernels, **r}


def gpus_allocated(env=None) -> int:
    """GPUs this process was given by its scheduler: SLURM's counts, else a non-empty CUDA_VISIBLE_DEVICES."""
    env = os.environ if env is None else env
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS"):
        v = env.get(key, "").strip()
        if v.isdigit():
            return int(v)
    for key in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        v = env.get(key, "").strip()
        if v and not v.startswith(("-", "NoDevFiles")):
            return len([d for d in v.split(",") if d.strip()])
    return 0


def check_device(device: str, env=None) -> dict:
    """Check 0: the device the checks (and a training job here) will use, and why. Fails when a GPU was
    allocated (or --device cuda asked) and CUDA is unusable: the case where a campaign would otherwise
    train on the CPU. Also reports the memory a training job here may use, and where that limit comes
    from (``devices.job_memory``)."""
    import torch

    from ..train.devices import cuda_unusable_reason, job_memory

    allocated = gpus_allocated(env)
    usable = torch.cuda.is_available()
    limit, source = job_memory(None, env)
    r = {"check": "device", "gpus_allocated": allocated, "cuda_usable": usable, "torch": torch.__version__,
         "torch_cuda": torch.version.cuda, "memory_limit_mb": round(limit / 2**20), "memory_limit_from": source}
    if usable:
        r.update(ok=True, devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    else:
        wanted = device.startswith("cuda") or (device == "auto" and allocated > 0)
        r.update(ok=not wanted, why_not_cuda=cuda_unusable_reason(env))
    return r


def run(device: str = "auto", workdir: str | None = None) -> bool:
    """All checks; one JSON line each; True if all pass."""
    import torch

    first = check_device(device)
    print(json.dumps(first), flush=True)
    if not first["ok"]:
        print(json.dumps({"smoke": "FAILED", "device": None, "why": "a GPU was allocated or asked for and "
                          f"CUDA is unusable: {first['why_not_cuda']}"}), flush=True)
        return False
    # the limit check 0 found (SLURM's or the cgroup's) goes to the trainers as the rule's --mem-mb
    mem_mb = first["memory_limit_mb"] if first["memory_limit_from"] != _NODE else None
    cuda = torch.cuda.is_available() and device != "cpu"
    dev = "cuda" if cuda else "cpu"
    root = Path(workdir or tempfile.mkdtemp(prefix="transferable-smoke-"))
    root.mkdir(parents=True, exist_ok=True)
    ok = True
    gpus = torch.cuda.device_count() if cuda else 0
    for fn in (lambda: check_resume(root / "resume", dev, gpus=gpus, mem_mb=mem_mb),
               lambda: check_paper_loop(root / "paper_loop", dev, gpus=gpus, mem_mb=mem_mb),
               lambda: check_locks(root, gpus if cuda else None),
               lambda: check_feed(root, dev),
               lambda: check_step(root) if cuda else {"check": "step", "ok": True, "skipped": "CPU run"}):
        r = fn()
        ok &= bool(r["ok"])
        print(json.dumps(r), flush=True)
    print(json.dumps({"smoke": "passed" if ok else "FAILED", "device": dev, "workdir": str(root)}), flush=True)
    return ok
