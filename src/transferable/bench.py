"""Benchmarks, each beside a plain baseline measured in the same run; every result is printed as JSON.

    transferable bench shards   # shard writing vs a plain Pillow decode-resize-save loop, images/s per core
    transferable bench loader   # our batches vs torchvision ImageFolder + DataLoader with the same transforms
    transferable bench step     # a CaffeNet training step (full and n frozen) vs a bare PyTorch loop
    transferable bench all      # the three above
    transferable bench dag      # the whole demo pipeline from an empty results/ (minutes)
    transferable bench gpu      # CaffeNet at 227 px on one CUDA device: images/s and fraction of the ceiling

Numbers depend on the machine; the README's "Performance" section lists what was measured and where.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _timeit(fn, min_time: float = 2.0, warmup: int = 2) -> tuple[float, int]:
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 3:
            return dt / n, n


def _demo(root: Path, classes_per_family: int, per_class: int) -> Path:
    from .data import demo

    raw = root / "raw"
    if not (raw / "ILSVRC2012_img_train.tar").exists():
        demo.generate(raw, seed=0, classes_per_family=classes_per_family, train_per_class=per_class,
                      val_per_class=2, min_side=32, max_side=64)
    return raw


def bench_shards(root: Path, size: int = 36, per_class: int = 100) -> dict:
    """Images/s on one core: our shard writer (reads the official tar by offset) against a plain loop
    that decodes each extracted JPEG with Pillow, warps it and saves it as a JPEG file."""
    from PIL import Image

    from .data.ilsvrc import ingest, read_image_bytes
    from .data.shards import write_part

    raw = _demo(root, 10, per_class)
    _, images = ingest(raw)
    images.to_csv(root / "images.csv", index=False)
    n = len(images)
    t0 = time.perf_counter()
    write_part(str(root / "images.csv"), 0, 1, size, str(root / "shards_part0"), log=lambda *a: None)
    ours = n / (time.perf_counter() - t0)

    src = root / "extracted"
    src.mkdir(exist_ok=True)
    handles: dict = {}
    files = []
    for i, r in enumerate(images.itertuples()):
        f = src / f"{i}.JPEG"
        f.write_bytes(read_image_bytes(r.source, r.path, r.offset, r.size, r.member, handles))
        files.append(f)
    out = root / "baseline_out"
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC).save(out / f"{i}.JPEG", quality=90)
    base = n / (time.perf_counter() - t0)
    return {"bench": "shards", "images": n, "size": size, "ours_img_s": round(ours, 1),
            "baseline": "Pillow open+convert+resize+save JPEG per file", "baseline_img_s": round(base, 1),
            "ratio": round(ours / base, 2)}


def bench_loader(root: Path, size: int = 36, crop: int = 32, batch: int = 128, per_class: int = 100,
                 workers: int = 2) -> dict:
    """Training batches/s -> images/s: our gather (crop + mirror + mean, batched) against torchvision's
    ImageFolder + DataLoader with RandomCrop, RandomHorizontalFlip, ToTensor and the mean subtracted, on
    the same warped images."""
    import torch
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from .data.loader import TrainStream

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n_cls = 10
    x = rng.integers(0, 256, (n_cls * per_class, 3, size, size), dtype=np.uint8)
    y = np.repeat(np.arange(n_cls), per_class)
    mean = x.mean(0).astype(np.float32)
    stream = TrainStream(x, y, mean, crop, batch, seed=0)
    ours = batch / _timeit(stream.next)[0]
    torch.set_num_threads(workers)
    ours_equal = batch / _timeit(stream.next)[0]  # as many threads as the baseline's workers
    torch.set_num_threads(1)

    folder = root / f"folder{size}"
    if not folder.exists():
        for i, (img, c) in enumerate(zip(x, y)):
            d = folder / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i}.png")
    m = torch.from_numpy(mean.mean((1, 2)) / 255.0)
    tf = T.Compose([T.RandomCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(m, [1 / 255.0] * 3)])
    results = {}
    for w in sorted({0, workers}):
        dl = DataLoader(ImageFolder(str(folder), tf), batch_size=batch, shuffle=True, num_workers=w,
                        drop_last=True, persistent_workers=w > 0)
        it = iter(dl)
        next(it)
        t0, k = time.perf_counter(), 0
        for _ in range(min(20, len(dl) - 1)):
            next(it)
            k += 1
        results[w] = batch * k / (time.perf_counter() - t0)
    best_w = max(results, key=results.get)
    return {"bench": "loader", "size": size, "crop": crop, "batch": batch, "ours_img_s": round(ours, 1),
            "ours_threads": 1, f"ours_img_s_{workers}_threads": round(ours_equal, 1),
            "ratio_at_equal_cores": round(ours_equal / results[workers], 2), "baseline": "torchvision ImageFolder(PNG) + DataLoader + RandomCrop/Flip/ToTensor/Normalize",
            "baseline_img_s": {f"workers={w}": round(v, 1) for w, v in results.items()},
            "ratio_vs_best_baseline": round(ours / results[best_w], 2)}


def bench_step(arch: str = "caffenet-small", crop: int = 32, batch: int = 128, threads: int = 1,
               widths=(16, 32, 48, 48, 32, 128, 128), outputs: int = 40, frozen=(0, 5, 7)) -> dict:
    """Images/s of one training step: our path (frozen layers without autograd, Caffe's SGD with lr and
    decay multipliers, channels_last) against a bare loop (torch.optim.SGD over the trainable parameters,
    plain forward, NCHW) on the same model."""
    import torch
    import torch.nn.functional as F

    from .models.caffenet import spec_from_config
    from .transfer import CaffeSGD, build_net, param_groups

    torch.set_num_threads(threads)
    spec = spec_from_config({"arch": arch, "crop": crop, "widths": list(widths), "init": "kaiming"}, outputs)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=g)
    y = torch.randint(0, outputs, (batch,), generator=g)
    out = {"bench": "step", "arch": arch, "crop": crop, "batch": batch, "threads": threads, "runs": []}
    xc = x.contiguous(memory_format=torch.channels_last)
    source = build_net(spec, seed=1).state_dict()

    def stepper(n: int, ours: bool, channels_last: bool):
        """One training step of a net with n frozen layers: our path, or a bare loop."""
        net = build_net(spec, n=n, source_state=source, freeze=True, seed=0)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        if ours:
            opt = CaffeSGD(param_groups(net), lr=0.001, momentum=0.9, weight_decay=5e-4)
        else:
            opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.001, momentum=0.9,
                                  weight_decay=5e-4)
        inp = xc if channels_last else x

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(inp, frozen=n) if ours else net(inp), y).backward()
            opt.step()

        return step

    for n in frozen:
        ours, bare, bare_cl = stepper(n, True, True), stepper(n, False, False), stepper(n, False, True)
        t_ours, t_bare, t_bare_cl = _timeit(ours)[0], _timeit(bare)[0], _timeit(bare_cl)[0]
        out["runs"].append({"frozen": n, "ours_img_s": round(batch / t_ours, 1),
                            "bare_img_s": round(batch / t_bare, 1), "bare_channels_last_img_s": round(batch / t_bare_cl, 1),
                            "ratio_vs_bare": round(t_bare / t_ours, 3),
                            "overhead_vs_bare_channels_last": round(t_ours / t_bare_cl - 1, 3)})
    full = out["runs"][0]["ours_img_s"]
    for r in out["runs"]:
        r["speedup_vs_ours_full"] = round(r["ours_img_s"] / full, 2)
    return out


def bench_dag(root: Path, cores: int = 2) -> dict:
    """Wall time of the demo pipeline (config.yaml) from an empty results/, in a copy of the workflow."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    wd = root / "dag"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "workflow", "envs"):
        (shutil.copytree if (repo / name).is_dir() else shutil.copy)(repo / name, wd / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", str(cores), "--quiet"], cwd=wd,
                   env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    import pandas as pd

    runs = pd.read_csv(wd / "results/tables/runs.csv")
    return {"bench": "dag", "config": "config.yaml", "cores": cores, "wall_s": round(wall, 1), "nets": len(runs),
            "net_wall_s_sum": round(float(runs.wall_s.sum()), 1), "target_s": 600}


def bench_gpu(batch: int = 256, iters: int = 50, compile_model: bool = True) -> dict:
    """CaffeNet (the paper's, 227 px, 1000 outputs) training steps on one CUDA device, bf16 autocast and
    channels_last, batches cropped and mirrored on the device from uint8 256x256 images held in GPU memory.
    Reports images/s for full training and n = 5, 7 frozen, and the fraction of the H100 bf16 ceiling
    (~240k images/s, reference performance.md)."""
    import torch
    import torch.nn.functional as F

    from .data.loader import TrainStream
    from .models.caffenet import spec_from_config
    from .transfer import CaffeSGD, build_net, param_groups

    if not torch.cuda.is_available():
        return {"bench": "gpu", "skipped": "no CUDA device visible"}
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    spec = spec_from_config({"arch": "caffenet", "crop": 227, "init": "caffe"}, 1000)
    n_img = 4096
    x = np.random.default_rng(0).integers(0, 256, (n_img, 3, 256, 256), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 1000, n_img)
    stream = TrainStream(x, y, x[:64].mean(0).astype(np.float32), 227, batch, seed=0, device=dev)
    assert stream.on_device is not None, "the benchmark set should sit in GPU memory"
    out = {"bench": "gpu", "device": torch.cuda.get_device_name(0), "batch": batch, "compile": compile_model,
           "runs": []}
    for n in (0, 5, 7):
        net = build_net(spec, n=n, source_state=build_net(spec, seed=1).state_dict(), freeze=True, seed=0)
        net = net.to(dev, memory_format=torch.channels_last)
        fwd = torch.compile(net) if compile_model else net
        opt = CaffeSGD(param_groups(net), lr=0.001, momentum=0.9, weight_decay=5e-4)

        def step():
            xb, yb = stream.next()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(fwd(xb, frozen=n).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(10):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
        ips = batch * iters / (time.perf_counter() - t0)
        out["runs"].append({"frozen": n, "img_s": round(ips, 1), "fraction_of_240k_ceiling": round(ips / 240000, 3)})
    return out


def run(which: str, workdir: str | None = None) -> list[dict]:
    root = Path(workdir or tempfile.mkdtemp(prefix="transferable-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    results = []
    todo = ["shards", "loader", "step"] if which == "all" else [which]
    benches = {"shards": lambda: bench_shards(root), "loader": lambda: bench_loader(root), "step": bench_step,
               "dag": lambda: bench_dag(root), "gpu": bench_gpu}
    for w in todo:
        r = benches[w]()
        r.update(env)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results
