"""Faults: killed training resumes to the same result; interrupted writes leave nothing accepted; bad
raw data and unwritable outputs get clear errors naming the file; outputs are deterministic."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT

from transferable.data import demo
from transferable.data.ilsvrc import IngestError, ingest
from transferable.data.shards import write_index, write_part
from transferable.data.splits import make_manifest
from transferable.train.loop import train_net

MICRO = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _cfg(max_iter=24, deterministic=True):
    cfg = {"net": dict(MICRO["net"], widths=[8, 8, 8, 8, 8, 16, 16]), "train": dict(MICRO["train"]),
           "metric": {"best_k": 2}, "split_kind": "random"}
    cfg["train"].update(max_iter=max_iter, eval_every=4, checkpoint_every=4, deterministic=deterministic,
                        lr_step=10, amp=False)
    return cfg


def _train_cmd(prepared, out, ckpt, cfg, net="baseB"):
    return [sys.executable, "-m", "transferable", "train", "--split", "rand0", "--net", net,
            "--manifest", str(prepared / "rand0.json"), "--shards", str(prepared / "shards/index.json"),
            "--out-dir", str(out), "--ckpt", str(ckpt), "--device", "cpu", "--params", json.dumps(cfg)]


def test_sigkill_then_rerun_resumes_bit_identical(prepared, tmp_path):
    cfg = _cfg(max_iter=600)
    ref = tmp_path / "ref"
    train_net(split="rand0", net="baseB", manifest=str(prepared / "rand0.json"),
              shards_index=str(prepared / "shards/index.json"), out_dir=str(ref), ckpt=str(tmp_path / "ref.pt"),
              cfg=cfg, device="cpu", log=lambda *a: None)
    out, ckpt = tmp_path / "run", tmp_path / "ckpt/last.pt"
    proc = subprocess.Popen(_train_cmd(prepared, out, ckpt, cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and ckpt.exists() and not (out / "metrics.json").exists()
    it_killed = torch.load(ckpt, weights_only=True)["iter"]
    assert 0 < it_killed < 600
    rerun = subprocess.run(_train_cmd(prepared, out, ckpt, cfg), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed from {ckpt} at iteration" in rerun.stdout
    a = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    ha, hb = (pd.read_csv(p / "history.csv").drop(columns="elapsed_s") for p in (ref, out))
    pd.testing.assert_frame_equal(ha, hb)
    assert not ckpt.exists()  # a finished run removes its checkpoint


def test_sigterm_checkpoints_and_exits(prepared, tmp_path):
    cfg = _cfg(max_iter=100000)
    out, ckpt = tmp_path / "run", tmp_path / "ckpt/last.pt"
    proc = subprocess.Popen(_train_cmd(prepared, out, ckpt, cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "checkpointed iteration" in stdout and ckpt.exists()


def test_checkpoint_of_another_config_is_not_resumed(prepared, tmp_path):
    ckpt = tmp_path / "last.pt"
    kw = dict(split="rand0", net="baseB", manifest=str(prepared / "rand0.json"),
              shards_index=str(prepared / "shards/index.json"), ckpt=str(ckpt), device="cpu")
    logs = []
    cfg = _cfg(max_iter=8)
    cfg["train"]["checkpoint_every"] = 4
    # leave a checkpoint behind: train with a huge max_iter, stopped by SIGTERM is slow; write one by hand
    torch.save({"cfg_hash": 12345, "iter": 4}, ckpt)
    train_net(out_dir=str(tmp_path / "o"), cfg=cfg, log=logs.append, **kw)
    assert any("different configuration" in line for line in logs)


def test_interrupted_shard_write_leaves_nothing(prepared, tmp_path, monkeypatch):
    import transferable.data.shards as shards

    calls = {"n": 0}
    real = shards.decode

    def dying(*a):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt  # as a kill would, mid-part
        return real(*a)

    monkeypatch.setattr(shards, "decode", dying)
    out = tmp_path / "part0"
    with pytest.raises(KeyboardInterrupt):
        write_part(str(prepared / "images.csv"), 0, 1, 20, str(out), log=lambda *a: None)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unwritable_output_is_a_clear_error(prepared, tmp_path, capsys):
    from transferable.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc = main(["split", "manifest", "--name", "r", "--params", '{"kind": "random", "seed": 0}',
               "--catalog", str(prepared / "catalog.csv"),
               "--out", str(blocker / "r.json")])
    err = capsys.readouterr().err
    assert rc == 1 and str(blocker) in err


def test_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    from transferable.data.shards import atomic_write_text

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_text", full)
    with pytest.raises(OSError, match=r"cannot write .*out.json: No space left on device"):
        atomic_write_text(tmp_path / "out.json", "{}")
    assert not list(tmp_path.iterdir())


def test_manifests_and_shards_are_byte_identical(prepared, tmp_path):
    cat, images = ingest(prepared / "raw")
    images.to_csv(tmp_path / "images.csv", index=False)
    write_part(str(tmp_path / "images.csv"), 0, 1, 20, str(tmp_path / "part0"), log=lambda *a: None)
    for f in sorted((prepared / "shards/part0").iterdir()):
        assert sha(f) == sha(tmp_path / "part0" / f.name), f.name
    again = json.dumps(make_manifest("rand0", {"kind": "random", "seed": 0}, cat))
    assert again == (prepared / "rand0.json").read_text()


# ------------------------------------------------------------------------------------------- bad raw data
@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    d = tmp_path_factory.mktemp("injected")
    summary = demo.generate(d, seed=0, classes_per_family=2, train_per_class=8, val_per_class=2, min_side=16,
                            max_side=24, inject=["cmyk", "grayscale", "png_as_jpeg", "truncated_jpeg", "zero_byte"])
    return d, summary["injected"]


def _shard_all(d, tmp, on_corrupt):
    _, images = ingest(d)
    images.to_csv(tmp / "images.csv", index=False)
    return write_part(str(tmp / "images.csv"), 0, 1, 12, str(tmp / "part0"), on_corrupt, log=lambda *a: None)


def test_corrupt_image_stops_naming_archive_and_member(injected, tmp_path):
    d, members = injected
    with pytest.raises(IngestError) as e:
        _shard_all(d, tmp_path, "error")
    msg = str(e.value)
    assert "ILSVRC2012_img_train.tar" in msg
    assert members["truncated_jpeg"] in msg or members["zero_byte"] in msg
    assert "on_corrupt: skip" in msg
    assert not (tmp_path / "part0").exists()


def test_corrupt_images_skipped_and_recorded_oddities_converted(injected, tmp_path):
    d, members = injected
    r = _shard_all(d, tmp_path, "skip")
    rejects = pd.read_csv(tmp_path / "part0/rejects.csv")
    assert r["rejects"] == 2 == len(rejects)
    names = " ".join(rejects.member)
    assert members["truncated_jpeg"] in names and members["zero_byte"] in names
    # the CMYK, grayscale and PNG-named-JPEG images were converted to RGB and kept
    assert r["images"] == 4 * 10 - 2
    idx = write_index([str(tmp_path / "part0")], 12, str(tmp_path / "index.json"), str(tmp_path / "rejects.csv"))
    assert sum(c[0] for c in idx["counts"].values()) == 4 * 8 - 2
    assert len(pd.read_csv(tmp_path / "rejects.csv")) == 2


def test_truncated_tar_names_the_archive(tmp_path):
    demo.generate(tmp_path, seed=0, classes_per_family=2, train_per_class=4, val_per_class=2, min_side=16,
                  max_side=20, inject=["truncated_tar"])
    with pytest.raises(IngestError, match="ILSVRC2012_img_train.tar"):
        ingest(tmp_path)


def _rewrite_gt(d, lines):
    """Replace the devkit's validation ground truth with ``lines``."""
    src = d / "ILSVRC2012_devkit_t12.tar.gz"
    members = []
    with tarfile.open(src) as tf:
        for m in tf:
            data = tf.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("ILSVRC2012_validation_ground_truth.txt"):
                data = ("\n".join(lines) + "\n").encode()
                m.size = len(data)
            members.append((m, data))
    with tarfile.open(src, "w:gz") as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data) if data is not None else None)


@pytest.fixture
def small_raw(tmp_path):
    demo.generate(tmp_path, seed=0, classes_per_family=2, train_per_class=3, val_per_class=2, min_side=16, max_side=20)
    return tmp_path


def test_val_image_without_label(small_raw):
    _rewrite_gt(small_raw, ["1"] * 7)  # 8 val images, 7 labels
    with pytest.raises(IngestError, match=r"ILSVRC2012_val_00000008.JPEG.*has no label"):
        ingest(small_raw)


def test_label_outside_class_range(small_raw):
    _rewrite_gt(small_raw, ["1"] * 7 + ["999"])
    with pytest.raises(IngestError, match=r"ground_truth.*label 999.*outside the class range"):
        ingest(small_raw)


def test_class_with_no_images(tmp_path):
    for subset in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / subset / cls).mkdir(parents=True)
    from PIL import Image

    for subset in ("train", "val"):
        Image.new("RGB", (8, 8)).save(tmp_path / subset / "a" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "b" / "x.png")
    with pytest.raises(IngestError, match=r"no train images: \['b'\]"):
        ingest(tmp_path)
