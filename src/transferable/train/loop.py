"""Training one net of the experiment, from scratch or from a source net, with evaluation and resume.

One code path for CPU and GPU. Everything a later reader needs is written next to the weights: the
resolved config, the per-evaluation history and the scores (``metrics.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import shutil
import signal
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..data.loader import EvalSet, TrainStream
from .. import advice, atomic, attempts, paths
from ..data import staging
from ..data.host import job_cpus
from ..data.errors import ShardError
from ..data.reader import Shards
from ..paths import parse_net
from ..settings import RunSettings, Train
from ..provenance import code_digest, code_version, file_digest, result_train
from ..transfer import build_net, make_optimizer, spec_from_config
from .devices import job_memory, pick_device

HISTORY_COLUMNS = list(paths.HISTORY_COLUMNS)


def stable_seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def lr_at(it: int, t: Train | dict) -> float:
    """Learning rate before iteration ``it`` (0-based). ``step``: Caffe's base_lr * gamma^floor(it/step);
    ``cosine``: cosine decay to 0 over max_iter. Both after an optional linear warm-up."""
    t = Train.from_dict(t)
    warm = t.warmup_iter
    if warm and it < warm:
        return t.lr * (it + 1) / warm
    if t.lr_policy == "step":
        return t.lr * t.gamma ** (it // t.lr_step)
    if t.lr_policy == "cosine":
        frac = (it - warm) / max(1, t.max_iter - warm)
        return t.lr * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"train.lr_policy: unknown {t.lr_policy!r} (allowed: step, cosine)")


@torch.no_grad()
def evaluate(model, val: EvalSet, mean, batch_size, frozen: int, amp: bool, scale: float) -> dict:
    model.eval()
    n, device = 0, val.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1, top-5: read back once, at the end
    for xb, yb in val.batches(mean, batch_size, scale):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(xb, frozen=frozen)
        logits = logits.float()  # fc8 runs in fp32 (CaffeNet._block); a no-op then
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        sums += torch.stack([F.cross_entropy(logits, yb, reduction="sum"), (top[:, 0] == yb).sum(),
                             (top == yb[:, None]).any(1).sum()]).to(torch.float64)
        n += len(yb)
    model.train()
    loss, top1, top5 = sums.tolist()
    return {"val_loss": loss / n, "top1": round(top1) / n, "top5": round(top5) / n}


def best_k_mean(values, k: int) -> float:
    """The paper's score: the mean of the k highest evaluations (reference §5)."""
    v = sorted(values, reverse=True)[:k]
    return float(np.mean(v)) if v else float("nan")


def train_net(*, split: str, net: str, manifest: str, shards_index: str, out_dir: str, ckpt: str,
              cfg: dict, source_model: str | None = None, device: str = "auto", threads: int = 1,
              compile_model: bool = False, gpus: int | None = None, mem_mb: int | None = None,
              stage_dir: str | None = None, log=print) -> dict:
    """Train ``net`` of ``split``; write model.pt, history.csv and metrics.json into ``out_dir``.

    ``cfg`` holds the ``net``, ``train`` and ``metric`` config sections: everything that changes the
    result. ``device``, ``threads`` and ``compile_model`` (torch.compile) do not, so a run checkpointed on
    one device resumes on another. An in-progress checkpoint at ``ckpt`` (outside the declared outputs)
    is resumed if it was written for the same cfg, net and split."""
    return train_nets(split=split, nets=[net], manifest=manifest, shards_index=shards_index,
                      out_dirs={net: out_dir}, ckpt=ckpt, cfg=cfg,
                      source_models={net: source_model} if source_model else {}, device=device,
                      threads=threads, compile_model=compile_model, gpus=gpus, mem_mb=mem_mb, stage_dir=stage_dir,
                      log=log)[net]


class _Member:
    """One net of a (possibly shared) training run: its model, optimiser, mean image and history."""

    def __init__(self, net: str, model, opt, mean: np.ndarray, frozen: int, source_key: str, device):
        self.net, self.name = net, parse_net(net)
        self.model, self.opt, self.mean, self.frozen = model, opt, mean, frozen
        self.mean_t = torch.from_numpy(mean).to(device)
        self.source_key = source_key  # nets with the same key subtract the same mean image
        # random frozen units' normalisation (net.random_units_norm): recompute, initial, or none (no
        # BatchNorm in them: CaffeNet, ViTs); "" for every other treatment. The claims' texts name it.
        self.random_norm = ""
        self.history: list[dict] = []
        # Train losses since the last evaluation, summed ON the device: reading a loss back every
        # iteration (loss.item()) would make the host wait for the GPU at every step.
        self.device = device
        self.loss_dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS: no fp64
        self.loss_sum = torch.zeros((), dtype=self.loss_dtype, device=device)
        self.loss_n = 0

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.loss_n += 1

    def take_loss(self) -> float:
        """Mean train loss since the last call (one device-to-host read), then reset."""
        mean = self.loss_sum.item() / max(self.loss_n, 1)
        self.loss_sum.zero_()
        self.loss_n = 0
        return mean

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optim": self.opt.state_dict(), "history": self.history,
                "loss_sum": self.loss_sum.cpu(), "loss_n": self.loss_n}

    def load(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optim"])
        self.history = st["history"]
        if "loss_sum" in st:
            self.loss_sum = st["loss_sum"].to(self.device, self.loss_dtype)
            self.loss_n = int(st["loss_n"])
        else:  # a checkpoint from before losses were summed on the device: a list of them
            running = list(st.get("running", []))
            self.loss_sum = torch.tensor(float(sum(running)), dtype=self.loss_dtype, device=self.device)
            self.loss_n = len(running)


class CheckpointError(RuntimeError):
    """A source model that cannot be used; the message names the file and how to rebuild it."""


def load_source(path: str, split: str, net: str) -> tuple[dict, np.ndarray]:
    """(state_dict, mean image) of the base net that ``net`` copies layers from. A file that does not load
    (truncated, overwritten, not a model.pt of this pipeline) is named, with the command that rebuilds it."""
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
        return src["state_dict"], src["mean"].numpy()
    except Exception as e:  # noqa: BLE001 - truncated zips, pickles, zero bytes: each raises its own type
        raise CheckpointError(
            f"{path}: the source model of {split}/{net} does not load ({type(e).__name__}: {e}). Rebuild it and "
            f"the nets copied from it with: {advice.snakemake_command('--force', path)}") from e


def run_identity(cfg: dict, split: str, nets: list[str], man: dict, shards: Shards, source_models: dict) -> dict:
    """Everything a training run depends on, as digests: a checkpoint is resumed only when all match."""
    return {
        "config": hashlib.sha256(json.dumps(dict(cfg, train=result_train(cfg["train"])), sort_keys=True)
                                 .encode()).hexdigest(),
        "nets": f"{split}:{','.join(nets)}",
        "manifest": manifest_digest(man),
        "shards": shards.digest,
        "sources": {n: file_digest(p) for n, p in sorted(source_models.items()) if n in nets},
        "code": code_digest("train"),
    }


def set_aside(path: Path, reason: str, log) -> Path:
    """Move a checkpoint that must not be resumed to ``<path>.set-aside`` (replacing an older one, so that
    they cannot fill the disk), with the reason in ``<path>.set-aside.txt``."""
    dest = path.with_name(path.name + ".set-aside")
    os.replace(path, dest)
    atomic.write_text(dest.with_name(dest.name + ".txt"), f"{time.strftime('%Y-%m-%d %H:%M:%S')} {path}: {reason}\n")
    log(f"set aside {path} as {dest}: {reason}; training starts from iteration 0")
    return dest


def read_checkpoint(path: Path, identity: dict, log) -> dict | None:
    """The checkpoint at ``path`` if it loads and was written for exactly this run; otherwise it is set
    aside (with the reason logged) and None is returned."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "iter" not in state:
            raise ValueError("not a training checkpoint")
    except Exception as e:  # noqa: BLE001 - any unreadable file is set aside, whatever its damage
        set_aside(path, f"it does not load ({type(e).__name__}: {e})", log)
        return None
    old = state.get("identity")
    if old != identity:
        if not isinstance(old, dict):
            why = "it was written by an older version of transferable"
        else:
            changed = [k for k in identity if old.get(k) != identity[k]]
            why = "written for other " + ", ".join(_IDENTITY_WORDS.get(k, k) for k in changed)
        set_aside(path, why, log)
        return None
    return state


_IDENTITY_WORDS = {"config": "settings (net/train/metric)", "nets": "nets", "manifest": "classes (split manifest)",
                   "shards": "data (shards)", "sources": "source models", "code": "training code"}


def _manifest_half(manifest: str, nets: list[str]) -> tuple[dict, str, dict]:
    """(manifest, target half, the half's entry) for nets that must share one target half."""
    targets = {parse_net(n).target for n in nets}
    if len(targets) != 1:
        raise ValueError(f"nets trained together must share one target half, got {sorted(targets)}")
    target = targets.pop()
    with open(manifest) as f:
        man = json.load(f)
    if target not in man["halves"]:
        raise KeyError(f"{manifest}: split {man.get('name', '?')!r} has no half {target!r} "
                       f"(halves: {sorted(man['halves'])})")
    return man, target, man["halves"][target]


def _build_members(nets, split, spec, tcfg, shards, classes, source_models, device) -> list[_Member]:
    """Each net's model (initialised, with its source's layers copied and frozen), optimiser and mean image."""
    seed = tcfg.seed
    own_mean = None
    members = []
    for net in nets:
        name = parse_net(net)
        source_state = None
        if not name.spec.has_source:
            if own_mean is None:
                own_mean = shards.mean_image(classes)  # the net's own training set
            mean, key = own_mean, "own"
        else:
            if net not in source_models:
                raise KeyError(f"{split}/{net}: no source model given (it copies "
                               f"{'all of' if name.spec.copies == 'all' else f'layers 1..{name.n} of'} base{name.source})")
            source_state, mean = load_source(source_models[net], split, net)  # its SOURCE's mean (reference §1)
            key = f"base{name.source}"
        try:
            model = build_net(spec, n=None if name.spec.copies == "all" else name.n, source_state=source_state,
                              freeze=not name.spec.fine_tuned,
                              seed=stable_seed(seed, split, net))
        except (RuntimeError, KeyError, ValueError) as e:  # another architecture or width
            if source_state is None:
                raise
            raise CheckpointError(f"{source_models.get(net)}: does not fit {split}/{net} ({e}); rebuild it with: "
                                  f"{advice.snakemake_command('--force', source_models.get(net))}") from e
        model.to(device, memory_format=torch.channels_last)
        model.train()
        opt = make_optimizer(model, tcfg)
        members.append(_Member(net, model, opt, mean, name.frozen, key, device))
    return members


def _shared_passes(members: list[_Member]) -> dict[str, _Member]:
    """Frozen nets copied from the same source share the frozen forward pass: the member frozen deepest
    computes it (its layers 1..n are the source's), the others tap it at their own n. A source with one
    frozen net has nothing to share: that net runs its own (possibly compiled) forward."""
    shared: dict[str, _Member] = {}
    frozen = [m for m in members if m.frozen and m.source_key != "own"]
    for m in frozen:
        if m.frozen > getattr(shared.get(m.source_key), "frozen", 0):
            shared[m.source_key] = m
    return {k: m for k, m in shared.items() if sum(f.source_key == k for f in frozen) > 1}


def _step(members, shared, forwards, stream, lr: float, device, amp: bool, clip: float) -> None:
    """One SGD iteration of every member on the same batch (read and augmented once)."""
    raw, yb = stream.next_raw()
    inputs = {key: stream.crops(raw, mm.mean_t) for key, mm in {m.source_key: m for m in members}.items()}
    taps = {}
    for key, deepest in shared.items():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x = inputs[key]
            taps[key] = {0: x}
            for i in range(deepest.frozen):
                x = deepest.model._block(i, x)
                taps[key][i + 1] = x
    for m in members:
        for g in m.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if m.source_key in taps and m.frozen:
                logits = m.model.forward_from(taps[m.source_key][m.frozen], m.frozen)
            else:
                logits = forwards[m.net](inputs[m.source_key], frozen=m.frozen)
        loss = F.cross_entropy(logits.float(), yb)
        m.opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in m.opt.param_groups for p in g["params"]], clip)
        m.opt.step()
        m.add_loss(loss)


def _check_finite(members, split: str, it: int, lr: float) -> None:
    """Checked where the host reads from the device anyway, never per step: a non-finite loss stops the
    run before it is evaluated or checkpointed."""
    for m in members:
        if not torch.isfinite(m.loss_sum):
            raise FloatingPointError(f"[{split}/{m.net}] non-finite train loss between iterations "
                                     f"{it - m.loss_n + 1} and {it} (lr now {lr:g}); lower train.lr or "
                                     "set train.grad_clip")


def kernel_settings(tcfg: Train | dict, device: torch.device) -> dict:
    """Apply ``train.tf32`` and ``train.cudnn_benchmark`` explicitly, for the pipeline and ``bench gpu`` alike,
    and return them for metrics.json. torch's own defaults differ by op (TF32 on for cuDNN convolutions,
    off for matmuls), so an unset flag would make "fp32" mean TF32 convolutions and fp32 fc layers.
    cuDNN's autotuner is off under ``train.deterministic`` (it may pick different kernels per run)."""
    tcfg = Train.from_dict(tcfg)
    tf32 = tcfg.tf32
    autotune = tcfg.cudnn_benchmark and not tcfg.deterministic
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = autotune
    amp = tcfg.amp and device.type == "cuda"
    return {"tf32": tf32, "cudnn_benchmark": autotune, "bf16_autocast": amp, "device_type": device.type}


def deterministic(device: torch.device, log=print) -> None:
    """``train.deterministic``: deterministic kernels where torch has them. On CUDA cuBLAS also needs
    ``CUBLAS_WORKSPACE_CONFIG`` (set here unless the user set it), and LRN's backward has no deterministic
    CUDA kernel: torch warns and runs it anyway, so a CUDA rerun matches to rounding, not bit for bit."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        log("train.deterministic on CUDA: CUBLAS_WORKSPACE_CONFIG=" + os.environ["CUBLAS_WORKSPACE_CONFIG"] +
            "; LRN's backward has no deterministic CUDA kernel, so reruns agree to rounding only")
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state(device: torch.device) -> dict:
    """The random state a resumed run needs: the CPU generator, and on a GPU the generator of the job's
    own device only (dropout masks are drawn there). Not every device's: a job resumed on another index,
    or on a node with another GPU count, continues the same stream."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_rng_state(state: dict, device: torch.device, log=print) -> None:
    torch.set_rng_state(state["torch_rng"])
    cuda = state.get("cuda_rng")
    if device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, (list, tuple)):  # a checkpoint of an earlier version: every device's state, by index
        i = device.index if device.index is not None and device.index < len(cuda) else 0
        log(f"checkpoint of an earlier version: CUDA generator state of device {i} of {len(cuda)}")
        cuda = cuda[i]
    torch.cuda.set_rng_state(cuda, device)


class _StopOnSignal:
    """SLURM sends SIGTERM (or the --signal of the job) before killing a preempted or timed-out job:
    remember it, so that the loop checkpoints at the next iteration boundary and exits. The previous
    handlers come back however the block ends."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __enter__(self):
        self.signal = None
        self.old = {s: signal.signal(s, self._on) for s in self.SIGNALS}
        return self

    def _on(self, signum, _frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


def train_nets(*, split: str, nets: list[str], manifest: str, shards_index: str, out_dirs: dict, ckpt: str,
               cfg: dict, source_models: dict | None = None, device: str = "auto", threads: int = 1,
               compile_model: bool = False, ram_limit: float | None = None, gpus: int | None = None,
               mem_mb: int | None = None, stage_dir: str | None = None, log=print) -> dict:
    """Train several nets of one split and target half together, on ONE stream of batches: each batch is
    read and augmented once, and nets whose frozen layers come from the same source share that frozen
    forward pass (computed once, to the deepest frozen layer, and tapped at each n). With dropout 0 in
    the frozen layers this gives exactly the weights of training each net alone (tests/test_train.py);
    with dropout there, the nets sharing a frozen pass share its dropout masks.

    ``source_models`` maps each transferred net to its source's model.pt; ``out_dirs`` each net to its
    output folder. ``ram_limit`` (bytes) overrides when the images are read from memory-mapped shards
    instead of memory (default: when they take more than a quarter of the memory this job may use,
    ``devices.job_memory``, which ``mem_mb``, the job's own request, bounds). ``gpus``: the GPUs the job
    was granted (``devices.pick_device``). ``stage_dir``: a node-local folder to copy a half too large for the
    job's memory to (``data.staging``). A checkpoint at ``ckpt`` is resumed only if it was written for
    this very run (``run_identity``); how the attempt ends is kept beside it (``attempts``). Returns
    {net: metrics}."""
    with attempts.recorded(ckpt, nets=nets, mem_mb=mem_mb, gpus=gpus):
        return _train_nets(split=split, nets=nets, manifest=manifest, shards_index=shards_index,
                           out_dirs=out_dirs, ckpt=ckpt, cfg=cfg, source_models=source_models, device=device,
                           threads=threads, compile_model=compile_model, ram_limit=ram_limit, gpus=gpus,
                           mem_mb=mem_mb, stage_dir=stage_dir, log=log)


def _train_nets(*, split, nets, manifest, shards_index, out_dirs, ckpt, cfg, source_models, device, threads,
                compile_model, ram_limit, gpus, mem_mb, stage_dir, log) -> dict:
    """Set-up (settings, device, data), then resume or start (the checkpoint), then the loop, then outputs."""
    t_start = time.time()
    device = pick_device(device, gpus, log=log)  # first: a job that cannot have its GPU fails in a second
    source_models = source_models or {}
    run = RunSettings.from_dict(cfg)
    cfg = run.as_dict()  # the typed settings, schema defaults filled: what model.pt and the checkpoint keep
    tcfg, ncfg = run.train, run.net
    man, target, half = _manifest_half(manifest, nets)
    classes = half["classes"]
    outputs = {"all": man["num_classes"], "half": len(classes)}.get(ncfg.outputs, ncfg.outputs)
    if int(outputs) < len(classes):
        raise ValueError(f"net.outputs: {outputs} < {len(classes)} classes of half {target}")
    spec = spec_from_config(ncfg, outputs)
    if threads:
        torch.set_num_threads(threads)
    if tcfg.deterministic:
        deterministic(device, log)
    kernels = kernel_settings(tcfg, device)
    tag = f"{split}/{nets[0]}" if len(nets) == 1 else f"{split}/{len(nets)} nets on {target}"
    say = lambda msg: log(f"[{tag}] {msg}")  # noqa: E731

    t_load = time.time()
    data = _load_data(Shards(shards_index), classes, spec, device, mem_mb, ram_limit, gpus, stage_dir, say)

    def fresh_start():
        members = _build_members(nets, split, spec, tcfg, data.shards, classes, source_models, device)
        for m in members:
            if m.name.is_random and m.frozen:
                m.random_norm = ncfg.random_units_norm if m.model.norm_layers(m.frozen) else "none"
        if ncfg.random_units_norm == "recompute":
            _normalise_random_units(members, data, spec, run, split, target, device, say)
        own = next((m.mean for m in members if m.source_key == "own"), members[0].mean)
        # Every net that trains on the same half of the same split sees the same stream of batches, as
        # every Caffe net read the same shuffled LevelDB in the same order (performance.md §1).
        stream = TrainStream(data.x_train, data.y_train, own, spec.crop, tcfg.batch_size,
                             seed=stable_seed(tcfg.seed, split, target, "data"), device=device,
                             scale=ncfg.input_scale, readers=torch.get_num_threads())  # resources.train_threads
        return members, stream

    members, stream = fresh_start()
    for m in members:
        log(f"[{split}/{m.net}] {m.name.treatment} n={m.name.n} on half {target} ({len(classes)} classes, "
            f"{len(data.x_train)} train / {len(data.val)} val images); device {device}; "
            f"trainable tensors {len(m.opt.param_groups)}; fc8 outputs {outputs}")
    say(f"data loaded in {time.time() - t_load:.1f} s; validation images cropped once, read from {data.val.where}")

    identity = run_identity(cfg, split, nets, man, data.shards, source_models)
    members, stream, it, elapsed_before = _resume(Path(ckpt), identity, members, stream, device, fresh_start, say)
    loop = _Loop(members, stream, data.val, tcfg, kernels["bf16_autocast"], ncfg.input_scale, device, split,
                 identity, Path(ckpt), compile_model, say, log)
    it, wall = loop.run(it, elapsed_before)

    run_info = {"code": code_version(), "kernels": kernels,  # the same for every net of the run: asked once
                "job": {"gpus_granted": gpus, "memory_limit_mb": round(data.job_bytes / 2**20),
                        "memory_limit_from": data.job_bytes_from, "data_policy": data.plan["policy"],
                        "data_bytes": int(data.plan["set_bytes"])},
                "shards": {"index": str(shards_index), "format": data.shards.format,
                           "resize": data.shards.index.get("resize"), "quality": data.shards.index.get("quality"),
                           "digest": data.shards.digest}}
    results = {m.net: _write_outputs(m, out_dirs[m.net], cfg, split, man, half, target, it, wall / len(members),
                                     len(members), outputs, spec, device, source_models.get(m.net), run_info, log)
               for m in members}
    Path(ckpt).unlink(missing_ok=True)
    say(f"{wall:.1f} s total ({time.time() - t_start:.1f} s with setup); {loop.ckpt_count} checkpoints written in "
        f"{loop.ckpt_time:.1f} s ({100 * loop.ckpt_time / max(wall, 1e-9):.1f}% of the run)")
    return results


NORM_IMAGES = 2048  # training images of the target half that re-estimate a random unit's normalisation


def _normalise_random_units(members, data, spec, run: RunSettings, split, target, device, say) -> None:
    """net.random_units_norm recompute: the BatchNorm statistics of each random-filter net's frozen units,
    re-estimated on a fixed sample of the target half's training images (centre crops, the net's own mean
    image) before training, so that a random unit normalises its outputs as a trained one does."""
    random = [m for m in members if m.name.is_random and m.frozen]
    if not random:
        return
    order = np.random.default_rng(stable_seed(run.train.seed, split, target, "norm")).permutation(len(data.x_train))
    idx = np.sort(order[:NORM_IMAGES])
    sample = EvalSet(data.x_train.take(idx), data.y_train[idx], spec.crop, device)
    for m in random:
        batches = (xb for xb, _ in sample.batches(m.mean, run.train.eval_batch_size, run.net.input_scale))
        k = m.model.recompute_norms(m.frozen, batches)
        if k:
            say(f"{m.net}: the running statistics of the {k} BatchNorm layers of its {m.frozen} random frozen "
                f"unit(s) re-estimated on {len(idx)} training images of half {target} (net.random_units_norm)")


@dataclasses.dataclass
class _Data:
    """What a run reads: the (possibly staged) shards, the training images and the validation set."""

    shards: Shards
    plan: dict
    x_train: object
    y_train: object
    val: EvalSet
    job_bytes: int
    job_bytes_from: str


def _load_data(shards: Shards, classes, spec, device, mem_mb, ram_limit, gpus, stage_dir, say) -> _Data:
    """The job's memory, then every shard file checked (sizes), staged if it must be (data/staging.py), the
    content of what will be read checked against the digests, and the images loaded."""
    job_bytes, job_bytes_from = job_memory(mem_mb)
    say(f"memory this job may use: {job_bytes / 2**20:.0f} MB ({job_bytes_from}); device {device}"
        + (f" ({gpus} GPU(s) granted)" if gpus is not None else ""))
    if ram_limit is None:  # a quarter of what THIS job may use, not of the node's free memory
        ram_limit = job_bytes / 4
    # before any training: every file there and of its size (a stat), then staged if it must be, then the
    # content of what will be read (the staged copy: local disk, not the shard folder again) against the digests
    shards.verify(classes, threads=job_cpus(), log=say, content=False)
    original = shards
    shards, data_plan = staging.prepare(shards, classes, job_bytes, stage_dir, say)
    try:
        shards.verify(classes, threads=job_cpus(), log=say)
    except ShardError as e:
        if shards is original:
            raise
        say(f"the staged copy is damaged ({e}): removed; reading the shard folder instead")
        shutil.rmtree(data_plan["stage_dir"], ignore_errors=True)
        shards = original
        shards.verify(classes, threads=job_cpus(), log=say)
        data_plan["policy"] = "shared storage"
    x_train, y_train = shards.load("train", classes, ram_limit)
    val = EvalSet(*shards.load("val", classes, ram_limit), spec.crop, device)  # cropped once, for every evaluation
    return _Data(shards, data_plan, x_train, y_train, val, job_bytes, job_bytes_from)


def _resume(ckpt_path: Path, identity: dict, members, stream, device, fresh_start, say):
    """The run's checkpoint, when it was written for the same identity: members, stream, RNG and iteration
    restored. One that matches but does not fit is set aside and the run starts over."""
    state = read_checkpoint(ckpt_path, identity, say)
    if state is None:
        return members, stream, 0, 0.0
    try:
        for m in members:
            m.load(state["members"][m.net])
        stream.load_state_dict(state["stream"])
        set_rng_state(state, device, say)
        it, elapsed = int(state["iter"]), float(state["elapsed_s"])
        say(f"resumed from {ckpt_path} at iteration {it}")
        return members, stream, it, elapsed
    except Exception as e:  # noqa: BLE001 - a checkpoint that matches but does not fit: start over
        set_aside(ckpt_path, f"it does not fit the nets ({type(e).__name__}: {e})", say)
        members, stream = fresh_start()
        return members, stream, 0, 0.0


class _Loop:
    """The training loop of a run's members on one stream: steps, evaluations (with rate and ETA),
    checkpoints every ``checkpoint_every`` iterations and/or ``checkpoint_minutes``, and a checkpoint then
    exit on SIGTERM/SIGINT."""

    def __init__(self, members, stream, val, tcfg: Train, amp: bool, scale: float, device, split: str,
                 identity: dict, ckpt_path: Path, compile_model: bool, say, log):
        self.members, self.stream, self.val, self.t = members, stream, val, tcfg
        self.amp, self.scale, self.device, self.split = amp, scale, device, split
        self.identity, self.ckpt_path, self.say, self.log = identity, ckpt_path, say, log
        self.forwards = {m.net: (torch.compile(m.model) if compile_model else m.model) for m in members}
        self.shared = _shared_passes(members)
        self.ckpt_count, self.ckpt_time = 0, 0.0

    def run(self, it: int, elapsed_before: float) -> tuple[int, float]:
        """Train from iteration ``it`` to max_iter; the last iteration and the wall time of the run."""
        t = self.t
        ckpt_s = 60.0 * (t.checkpoint_minutes or 0.0)  # 0: not by time
        clip = t.grad_clip or 0.0
        t0 = time.time() - elapsed_before
        t_ckpt = t_rate = time.time()
        it_rate = it
        with _StopOnSignal() as stop:
            while it < t.max_iter:
                lr = lr_at(it, t)
                _step(self.members, self.shared, self.forwards, self.stream, lr, self.device, self.amp, clip)
                it += 1
                evaluate_now = it % t.eval_every == 0 or it == t.max_iter
                due = ((t.checkpoint_every > 0 and it % t.checkpoint_every == 0)
                       or (ckpt_s > 0 and time.time() - t_ckpt >= ckpt_s))
                checkpoint_now = it < t.max_iter and (due or stop.signal)
                if evaluate_now or checkpoint_now:
                    _check_finite(self.members, self.split, it, lr)
                if evaluate_now:
                    rate = (it - it_rate) * t.batch_size / max(time.time() - t_rate, 1e-9)
                    self._evaluate(it, lr, time.time() - t0, rate)
                    t_rate, it_rate = time.time(), it
                if checkpoint_now:
                    self._checkpoint(it, time.time() - t0)
                    t_ckpt = time.time()
                    if stop.signal:
                        self.say(f"got signal {stop.signal}: checkpointed iteration {it} to {self.ckpt_path}; "
                                 "rerun to resume")
                        raise SystemExit(128 + stop.signal)
        return it, time.time() - t0

    def _evaluate(self, it: int, lr: float, elapsed: float, rate: float) -> None:
        t = self.t
        progress = f"{rate:.0f} img/s, ETA {(t.max_iter - it) * t.batch_size / max(rate, 1e-9):.0f} s"
        for m in self.members:
            ev = evaluate(m.model, self.val, m.mean, t.eval_batch_size, m.frozen, self.amp, self.scale)
            _record(m, ev, it, t.max_iter, lr, self.stream.epochs_done, elapsed, self.split, progress, self.log)

    def _checkpoint(self, it: int, elapsed: float) -> None:
        t_write = time.time()
        atomic.torch_save({"identity": self.identity, "members": {m.net: m.state() for m in self.members},
                           "stream": self.stream.state_dict(), **rng_state(self.device), "iter": it,
                           "elapsed_s": elapsed}, self.ckpt_path)
        self.ckpt_count += 1
        self.ckpt_time += time.time() - t_write


def _record(m: _Member, ev: dict, it: int, max_iter: int, lr: float, epochs: float, elapsed: float, split: str,
            progress: str, log) -> None:
    """One evaluation of one net: a history row and a log line with the rate and ETA."""
    row = {"iter": it, "epoch": round(epochs, 4), "lr": lr, "train_loss": m.take_loss(), **ev,
           "elapsed_s": round(elapsed, 3)}
    m.history.append(row)
    log(f"[{split}/{m.net}] iter {it}/{max_iter} epoch {row['epoch']:.2f} lr {lr:.3g} loss {row['train_loss']:.3f} "
        f"val top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} | {progress}")


def _write_outputs(m: _Member, out_dir, cfg, split, man, half, target, iters, wall_s, together, outputs, spec,
                   device, source_model, run_info, log) -> dict:
    """model.pt (weights, mean image, the net's spec and config), history.csv and metrics.json of one net."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = int(cfg["metric"]["best_k"])
    top1 = [h["top1"] for h in m.history]
    top5 = [h["top5"] for h in m.history]
    classes = half["classes"]
    metrics = {
        "split": split, "split_kind": cfg.get("split_kind") or man["kind"], "net": m.net,
        "treatment": m.name.treatment, "n": m.name.n,
        "source_half": m.name.source, "target_half": target, "target_family": half.get("family", ""),
        "num_classes": len(classes), "top1": best_k_mean(top1, k), "top1_final": top1[-1],
        "top5": best_k_mean(top5, k), "top5_final": top5[-1], "top1_max": max(top1), "evals": len(m.history),
        "best_k": k, "iters": iters, "wall_s": round(wall_s, 2), "device": str(device), "random_norm": m.random_norm,
        "trained_with": together, "history": "history.csv",
        "provenance": {"transferable": __version__, "code": run_info["code"], "torch": torch.__version__,
                       "python": platform.python_version(), "host": platform.node(),
                       "source_model": source_model, "kernels": run_info["kernels"], "job": run_info["job"],
                       "shards": run_info["shards"],
                       "config": cfg},
    }
    atomic.torch_save({"state_dict": {k_: v.cpu() for k_, v in m.model.state_dict().items()},
                        "mean": torch.from_numpy(m.mean), "outputs": outputs, "classes": torch.tensor(classes),
                        "net": m.net, "spec": json.dumps(dataclasses.asdict(spec)),
                        "config": json.dumps(cfg, sort_keys=True)}, out / "model.pt")
    atomic.write_text(out / "history.csv", history_csv(m.history))
    atomic.write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    log(f"[{split}/{m.net}] done: top1 (best-{k} mean) {metrics['top1']:.4f}, final {metrics['top1_final']:.4f}")
    return metrics


def history_csv(rows: list[dict]) -> str:
    """history.csv: HISTORY_COLUMNS, one line per evaluation, floats as Python writes them (shortest
    round-trip), a missing or NaN value an empty cell: the text pandas' to_csv wrote (tests/test_train.py),
    without importing pandas into every training job (0.7 s of CPU each)."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(HISTORY_COLUMNS)
    for row in rows:
        values = (row.get(c) for c in HISTORY_COLUMNS)
        out.writerow(["" if v is None or v != v else (float(v) if isinstance(v, np.floating) else v) for v in values])
    return buf.getvalue()


def manifest_digest(man: dict) -> str:
    return hashlib.sha256(json.dumps(man, sort_keys=True).encode()).hexdigest()
