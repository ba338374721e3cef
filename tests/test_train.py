"""One net end to end on the CPU: outputs, the metric, the source-mean rule, fc8 width, the lr schedule."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT

from transferable.data.reader import Shards
from transferable.paths import HISTORY_COLUMNS
from transferable.train.loop import best_k_mean, history_csv, lr_at, train_net

MICRO = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())


def _cfg(**train):
    cfg = {"net": dict(MICRO["net"]), "train": dict(MICRO["train"], max_iter=8, eval_every=2, amp=False),
           "metric": {"best_k": 2}, "split_kind": "random"}
    cfg["train"].update(train)
    return cfg


def _train(prepared, tmp_path, net, source=None, cfg=None):
    out = tmp_path / net
    return train_net(split="rand0", net=net, manifest=str(prepared / "rand0.json"),
                     shards_index=str(prepared / "shards/index.json"), out_dir=str(out),
                     ckpt=str(tmp_path / f"{net}.ckpt"), cfg=cfg or _cfg(), device="cpu",
                     source_model=str(source) if source else None, log=lambda *a: None), out


def test_base_then_transfer_keeps_the_source_mean(prepared, tmp_path):
    man = json.loads((prepared / "rand0.json").read_text())
    shards = Shards(prepared / "shards/index.json")
    m_base, out_a = _train(prepared, tmp_path, "baseA")
    saved = torch.load(out_a / "model.pt", weights_only=True)
    assert np.allclose(saved["mean"].numpy(), shards.mean_image(man["halves"]["A"]["classes"]))
    m_t, out_t = _train(prepared, tmp_path, "A1B", source=out_a / "model.pt")
    mean_t = torch.load(out_t / "model.pt", weights_only=True)["mean"].numpy()
    assert np.array_equal(mean_t, saved["mean"].numpy())  # the SOURCE's mean, not half B's own
    assert not np.allclose(mean_t, shards.mean_image(man["halves"]["B"]["classes"]))
    # the copied, frozen conv1 is the source's
    assert torch.equal(torch.load(out_t / "model.pt", weights_only=True)["state_dict"]["conv1.weight"],
                       saved["state_dict"]["conv1.weight"])
    assert m_t["treatment"] == "AnB" and m_t["n"] == 1 and m_t["source_half"] == "A" and m_t["target_half"] == "B"


def test_metrics_and_history(prepared, tmp_path):
    m, out = _train(prepared, tmp_path, "baseB")
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.iter) == [2, 4, 6, 8] and m["evals"] == 4 and m["iters"] == 8
    assert m["top1"] == pytest.approx(hist.top1.nlargest(2).mean())
    assert m["top1_final"] == hist.top1.iloc[-1] and m["top1_max"] == hist.top1.max()
    assert (hist.top5 >= hist.top1).all()
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert state["fc8.weight"].shape[0] == 4  # outputs: all = every class of the dataset, as the paper's 1000
    json.loads((out / "metrics.json").read_text())


def test_fc8_width_half(prepared, tmp_path):
    cfg = _cfg()
    cfg["net"]["outputs"] = "half"
    _, out = _train(prepared, tmp_path, "baseB", cfg=cfg)
    assert torch.load(out / "model.pt", weights_only=True)["state_dict"]["fc8.weight"].shape[0] == 2


def test_diverging_run_stops_with_the_net_and_iterations_and_writes_nothing(prepared, tmp_path):
    """The loss is read back only at evaluations and checkpoints (no per-step sync), yet a run that
    diverges still stops there, naming the net and the window, and leaves no model behind."""
    cfg = _cfg(lr=1e12, grad_clip=0, warmup_iter=0, max_iter=8, eval_every=4, checkpoint_every=4)
    with pytest.raises(FloatingPointError, match=r"rand0/baseB\] non-finite train loss between iterations 1 and 4 \(lr now"):
        _train(prepared, tmp_path, "baseB", cfg=cfg)
    assert not (tmp_path / "baseB").exists() and not (tmp_path / "baseB.ckpt").exists()


def test_train_loss_in_history_is_the_mean_of_the_step_losses(prepared, tmp_path, monkeypatch):
    import torch.nn.functional as F

    seen = []
    real = F.cross_entropy

    def spy(*a, **k):
        loss = real(*a, **k)
        if "reduction" not in k:  # training steps (evaluation sums with reduction="sum")
            seen.append(loss.item())
        return loss

    monkeypatch.setattr("transferable.train.loop.F.cross_entropy", spy)
    _, out = _train(prepared, tmp_path, "baseB")
    hist = pd.read_csv(out / "history.csv")
    assert np.allclose(hist.train_loss, np.mean(np.reshape(seen, (4, 2)), axis=1), rtol=1e-6)


def test_a_caffenet_job_imports_neither_dynamo_nor_pandas(prepared, tmp_path):
    """What a training job pays before its first step: torch._dynamo (imported by the first call of torch's
    dynamo-disabled Optimizer methods, 1.5-3 s) and pandas (0.7 s) are not among it for CaffeNet, whose
    optimizer is CaffeSGD: a micro net trains in 0.1 s. A fresh interpreter, as a Snakemake job is."""
    import subprocess
    import sys

    code = f"""
import json, sys
from transferable.train.loop import train_net
train_net(split="rand0", net="baseB", manifest={str(prepared / "rand0.json")!r},
          shards_index={str(prepared / "shards/index.json")!r}, out_dir={str(tmp_path / "baseB")!r},
          ckpt={str(tmp_path / "baseB.ckpt")!r}, cfg=json.loads(sys.argv[1]), device="cpu", log=lambda *a: None)
print(json.dumps(sorted(m for m in ("torch._dynamo", "pandas", "matplotlib") if m in sys.modules)))
"""
    cfg = _cfg(checkpoint_every=4)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    in_process, _ = _train(prepared, tmp_path / "here", "baseB", cfg=cfg)  # and the results are those of
    assert json.loads((tmp_path / "baseB/metrics.json").read_text())["top1"] == in_process["top1"]  # this process


def test_history_csv_is_the_text_pandas_wrote():
    rows = [{"iter": 2, "epoch": 1.0, "lr": 0.01, "train_loss": 1.0937508344650269, "val_loss": 0.9641464352607727,
             "top1": 0.5, "top5": 1.0, "elapsed_s": 0.013},
            {"iter": 4, "epoch": 2.0, "lr": 1e-05, "train_loss": float("nan"), "val_loss": 1 / 3, "top1": 0.0,
             "top5": 0.125, "elapsed_s": 12345.678},
            {"iter": 10000, "epoch": 3.0004, "lr": 0.001, "train_loss": 2.5, "val_loss": 1e-20, "top1": 1.0,
             "top5": np.float64(0.75)}]  # no elapsed_s
    assert history_csv(rows) == pd.DataFrame(rows, columns=HISTORY_COLUMNS).to_csv(index=False)
    assert history_csv([]) == pd.DataFrame([], columns=HISTORY_COLUMNS).to_csv(index=False)
    assert history_csv(rows).splitlines()[2] == "4,2.0,1e-05,,0.3333333333333333,0.0,0.125,12345.678"


def test_best_k_mean_is_the_papers_metric():
    assert best_k_mean([0.1, 0.5, 0.3, 0.4], 2) == pytest.approx(0.45)


def test_step_schedule_is_caffes():
    t = dict(MICRO["train"], lr=0.01, lr_policy="step", lr_step=100000, gamma=0.1, max_iter=450000)
    assert [lr_at(i, t) for i in (0, 99999, 100000, 250000, 449999)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4, 1e-6])


@pytest.mark.parametrize("arch", ["caffenet-small", "vit-small", "resnet-small"])
def test_nets_trained_together_equal_nets_trained_alone(prepared, tmp_path, arch):
    """One data stream and shared frozen passes for many nets give exactly the weights and histories of
    training each net alone (no dropout in the frozen layers), for CaffeNet (SGD), a ViT (AdamW) and a ResNet
    (SGD; frozen BatchNorm): conftest's ViT and ResNet family runs train on shared streams, micro_done alone."""
    from transferable.train.loop import train_nets

    cfg = _cfg(max_iter=6)
    cfg["net"]["dropout"] = 0.0
    if arch != "caffenet-small":
        cfg["net"] = {"arch": arch, "crop": 16, "outputs": "all", "input_scale": 0.017, "dropout": 0.0}
        cfg["train"].update({"optimizer": "adamw", "lr": 0.001} if arch.startswith("vit") else {"optimizer": "sgd"})
    _, out_a = _train(prepared, tmp_path, "baseA", cfg=cfg)
    _, out_b = _train(prepared, tmp_path, "baseB", cfg=cfg)
    group = ["B1B", "B3B_ft", "A1B", "A2B", "A5B", "A5B_ft"]
    sources = {n: str((out_b if n.startswith("B") else out_a) / "model.pt") for n in group}
    train_nets(split="rand0", nets=group, manifest=str(prepared / "rand0.json"),
               shards_index=str(prepared / "shards/index.json"), out_dirs={n: str(tmp_path / "g" / n) for n in group},
               ckpt=str(tmp_path / "g.ckpt"), cfg=cfg, source_models=sources, device="cpu", log=lambda *a: None)
    for n in group:
        _, alone = _train(prepared, tmp_path / "alone", n, source=sources[n], cfg=cfg)
        a = torch.load(alone / "model.pt", weights_only=True)["state_dict"]
        g = torch.load(tmp_path / "g" / n / "model.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], g[k]) for k in a), n
        ha, hg = (pd.read_csv(p / "history.csv").drop(columns="elapsed_s") for p in (alone, tmp_path / "g" / n))
        pd.testing.assert_frame_equal(ha, hg)


def test_checkpoint_written_before_device_side_loss_sums_still_resumes():
    """Checkpoints of earlier versions hold the losses since the last evaluation as a list."""
    from transferable.models.caffenet import spec_from_config
    from transferable.train.loop import _Member
    from transferable.transfer import CaffeSGD, build_net, param_groups

    model = build_net(spec_from_config(MICRO["net"], 4), seed=0)
    opt = CaffeSGD(param_groups(model), lr=0.01, momentum=0.9, weight_decay=5e-4)
    m = _Member("baseB", model, opt, np.zeros((3, 4, 4), np.float32), 0, "own", torch.device("cpu"))
    m.load({"model": model.state_dict(), "optim": opt.state_dict(), "history": [{"iter": 2}],
            "running": [1.0, 3.0, 2.0]})
    assert m.loss_n == 3 and m.history == [{"iter": 2}] and m.take_loss() == pytest.approx(2.0)
    m.add_loss(torch.tensor(5.0))
    restored = _Member("baseB", model, opt, np.zeros((3, 4, 4), np.float32), 0, "own", torch.device("cpu"))
    restored.load(m.state())
    assert restored.loss_n == 1 and restored.take_loss() == 5.0


def test_a_frozen_net_alone_runs_its_own_forward():
    """Issue 17, case 6: a frozen net trained alone (the train rule) must go through its own forward, the
    one resources.compile compiles, not the shared frozen pass, which only nets of one source share."""
    from types import SimpleNamespace as NS

    from transferable.train.loop import _shared_passes

    alone = [NS(frozen=3, source_key="baseA")]
    assert _shared_passes(alone) == {}
    group = [NS(frozen=3, source_key="baseA"), NS(frozen=5, source_key="baseA"), NS(frozen=2, source_key="baseB"),
             NS(frozen=0, source_key="baseA"), NS(frozen=0, source_key="own")]
    shared = _shared_passes(group)
    assert set(shared) == {"baseA"} and shared["baseA"].frozen == 5


def test_deterministic_on_cuda_sets_cublas_and_says_what_is_not(monkeypatch):
    """Issue 17, case 8: train.deterministic on CUDA sets CUBLAS_WORKSPACE_CONFIG and says that LRN's
    backward stays nondeterministic (checked without a GPU: only the settings are made)."""
    import os

    import torch

    from transferable.train.loop import deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    lines = []
    try:
        deterministic(torch.device("cuda", 0), lines.append)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and "LRN" in lines[0]
        assert torch.are_deterministic_algorithms_enabled()
        lines.clear()
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
        deterministic(torch.device("cpu"), lines.append)
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and not lines
    finally:
        torch.use_deterministic_algorithms(False)


def test_kernel_settings_are_explicit():
    """Issue 17, case 5: train.tf32 and train.cudnn_benchmark set both TF32 flags and the autotuner
    explicitly (torch's defaults differ by op); deterministic runs never autotune."""
    import torch

    from transferable.train.loop import kernel_settings

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
    try:
        _check_kernel_settings(kernel_settings, torch)
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32) = saved


def _check_kernel_settings(kernel_settings, torch):
    k = kernel_settings(dict(MICRO["train"], tf32=False, cudnn_benchmark=True, amp=False), torch.device("cuda", 0))
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.benchmark and k == {"tf32": False, "cudnn_benchmark": True, "bf16_autocast": False,
                                                    "device_type": "cuda"}
    k = kernel_settings(dict(MICRO["train"], tf32=True, cudnn_benchmark=True, deterministic=True, amp=True),
                        torch.device("cuda", 0))
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.benchmark and k["bf16_autocast"]


@pytest.mark.parametrize("policy", ["recompute", "initial"])
def test_random_resnet_units_are_normalised_on_the_target_half_unless_asked_not_to(prepared, tmp_path, policy):
    """Issue 24: net.random_units_norm. recompute (the default): a random-filter ResNet net's frozen units
    get BatchNorm statistics from the target half's training images before training; initial: they keep
    mean 0 / variance 1, as before. Either way they do not move while the net trains."""
    cfg = _cfg(optimizer="sgd", lr=0.05)
    cfg["net"] = {"arch": "resnet-small", "crop": 16, "outputs": "all", "random_units_norm": policy}
    logs = []
    out = tmp_path / "R2B"
    train_net(split="rand0", net="R2B", manifest=str(prepared / "rand0.json"),
              shards_index=str(prepared / "shards/index.json"), out_dir=str(out), ckpt=str(tmp_path / "R2B.ckpt"),
              cfg=cfg, device="cpu", log=logs.append)
    sd = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    mean, var = sd["model.bn1.running_mean"], sd["model.bn1.running_var"]
    said = [m for m in logs if "random frozen unit(s) re-estimated" in m]
    if policy == "recompute":
        assert len(said) == 1 and "3 BatchNorm layers of its 2 random frozen unit(s)" in said[0], logs
        assert not torch.allclose(var, torch.ones_like(var)) and mean.abs().max() > 0
    else:
        assert not said and torch.equal(mean, torch.zeros_like(mean)) and torch.equal(var, torch.ones_like(var))
    # the net says which it was (runs.csv's random_norm; the random-filter claims' texts name it)
    assert json.loads((out / "metrics.json").read_text())["random_norm"] == policy
    # unit 3 (layer2.0) trains: its statistics moved from the initial ones in both cases
    assert not torch.equal(sd["model.layer2.0.bn1.running_var"], torch.ones_like(sd["model.layer2.0.bn1.running_var"]))
