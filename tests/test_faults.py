"""Faults: killed training resumes to the same result; interrupted writes leave nothing accepted; bad
raw data and unwritable outputs get clear errors naming the file; outputs are deterministic."""

import hashlib
import io
import json
import os
import re
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

from transferable import advice, attempts
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


@pytest.mark.subprocess
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
    # killed without a word (what the out-of-memory killer does): the retry asks for more memory
    assert json.loads(attempts.record_path(ckpt).read_text())["state"] == "running"
    assert attempts.retry_mem_mb(1000, 2, ckpt) == 2000
    rerun = subprocess.run(_train_cmd(prepared, out, ckpt, cfg), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed from {ckpt} at iteration" in rerun.stdout
    assert not attempts.record_path(ckpt).exists()  # a good end removes the attempt's record
    a = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    ha, hb = (pd.read_csv(p / "history.csv").drop(columns="elapsed_s") for p in (ref, out))
    pd.testing.assert_frame_equal(ha, hb)
    assert not ckpt.exists()  # a finished run removes its checkpoint


@pytest.mark.subprocess
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
    # a signal before a time limit or a preemption: the retry resumes, with the same memory
    assert json.loads(attempts.record_path(ckpt).read_text())["state"] == "stopped"
    assert attempts.retry_mem_mb(1000, 2, ckpt) == 1000


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
    assert any("set aside" in line and "older version" in line for line in logs)


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

    from transferable import atomic

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, *a, **k):
        open(path, "w").close()  # the temporary file exists, as on a real disk
        return Full()

    monkeypatch.setattr("transferable.atomic.open", full_open, raising=False)
    with pytest.raises(OSError, match=r"cannot write .*out.json: No space left on device"):
        atomic.write_text(tmp_path / "out.json", "{}")
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
    # the arrays of the classes that lost images hold exactly the images kept (their headers rewritten)
    from transferable.data.reader import Shards

    sh = Shards(tmp_path / "index.json")
    assert [len(sh.array("train", c)) for c in range(4)] == [c[0] for c in idx["counts"].values()]
    assert all(sh.array("train", c)[-1].max() > 0 for c in range(4))  # no empty row left at the end


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


# ------------------------------------------------------------------ checkpoints that cannot lie (issue 16)
class _Stop(Exception):
    pass


def _kw(prepared, tmp_path, index="shards/index.json"):
    return dict(split="rand0", net="baseB", manifest=str(prepared / "rand0.json"),
                shards_index=str(prepared / index), out_dir=str(tmp_path / "o"), ckpt=str(tmp_path / "ckpt/last.pt"),
                device="cpu")


def _interrupted(prepared, tmp_path, cfg, **over):
    """Train until the evaluation at iteration 8 (the checkpoint of iteration 4 is on disk), then stop."""
    def log(line):
        if "iter 8/" in line:
            raise _Stop
    with pytest.raises(_Stop):
        train_net(cfg=cfg, log=log, **{**_kw(prepared, tmp_path), **over})
    ckpt = tmp_path / "ckpt/last.pt"
    assert torch.load(ckpt, weights_only=True)["iter"] == 4
    return ckpt


def _resume(prepared, tmp_path, cfg, **over):
    logs = []
    train_net(cfg=cfg, log=logs.append, **{**_kw(prepared, tmp_path), **over})
    return "\n".join(logs)


@pytest.fixture(scope="module")
def other_shards(prepared, tmp_path_factory):
    """The same images warped to another size: what `preprocess.size: 22` would rebuild."""
    d = tmp_path_factory.mktemp("shards22")
    write_part(str(prepared / "images.csv"), 0, 1, 22, str(d / "part0"), log=lambda *a: None)
    write_index([str(d / "part0")], 22, str(d / "index.json"), str(d / "rejects.csv"))
    return d


def test_same_run_resumes(prepared, tmp_path):
    cfg = _cfg(max_iter=12)
    _interrupted(prepared, tmp_path, cfg)
    assert f"resumed from {tmp_path / 'ckpt/last.pt'} at iteration 4" in _resume(prepared, tmp_path, cfg)


def test_checkpoint_settings_change_no_result_and_a_checkpoint_stays_resumable(prepared, tmp_path):
    """Issue 17 case 9: checkpoints by wall time (train.checkpoint_minutes; here ~every iteration) or not at
    all give the metrics of checkpoints every 4 iterations; the log states their count and share of the
    run; and a checkpoint written under other checkpoint settings is resumed, not set aside."""
    ref_cfg = _cfg(max_iter=12)
    _resume(prepared, tmp_path / "ref", ref_cfg)
    ref = json.loads((tmp_path / "ref/o/metrics.json").read_text())
    timed = _cfg(max_iter=12)
    timed["train"].update(checkpoint_every=0, checkpoint_minutes=1e-6)
    log = _resume(prepared, tmp_path / "timed", timed)
    assert "11 checkpoints written in" in log and "% of the run)" in log  # iterations 1..11; none at the end
    none = _cfg(max_iter=12)
    none["train"].update(checkpoint_every=0, checkpoint_minutes=0)
    assert "0 checkpoints written" in _resume(prepared, tmp_path / "none", none)
    for d in ("timed", "none"):
        got = json.loads((tmp_path / d / "o/metrics.json").read_text())
        assert got["top1"] == ref["top1"] and got["top1_final"] == ref["top1_final"]
        h, h_ref = (pd.read_csv(tmp_path / x / "o/history.csv").drop(columns="elapsed_s") for x in (d, "ref"))
        pd.testing.assert_frame_equal(h, h_ref)  # every evaluation, loss and lr; only the clock differs
    _interrupted(prepared, tmp_path, _cfg(max_iter=12))
    assert "resumed from" in _resume(prepared, tmp_path, timed)


def test_checkpoint_after_the_data_changed_is_set_aside(prepared, tmp_path, other_shards):
    cfg = _cfg(max_iter=12)
    ckpt = _interrupted(prepared, tmp_path, cfg)
    log = _resume(prepared, tmp_path, cfg, shards_index=str(other_shards / "index.json"))
    assert "resumed" not in log and "set aside" in log and "data (shards)" in log
    aside = ckpt.with_name("last.pt.set-aside")
    assert aside.is_file() and "data (shards)" in aside.with_name("last.pt.set-aside.txt").read_text()
    assert not ckpt.exists() and (tmp_path / "o/metrics.json").is_file()


def test_checkpoint_of_other_training_code_is_set_aside(prepared, tmp_path, monkeypatch):
    cfg = _cfg(max_iter=12)
    _interrupted(prepared, tmp_path, cfg)
    monkeypatch.setattr("transferable.train.loop.code_digest", lambda stage: "edited")
    log = _resume(prepared, tmp_path, cfg)
    assert "resumed" not in log and "training code" in log


def test_checkpoint_of_other_classes_is_set_aside(prepared, tmp_path):
    cfg = _cfg(max_iter=12)
    _interrupted(prepared, tmp_path, cfg)
    man = json.loads((prepared / "rand0.json").read_text())
    man["seed"] = 99  # another manifest with the same name
    (tmp_path / "other.json").write_text(json.dumps(man))
    log = _resume(prepared, tmp_path, cfg, manifest=str(tmp_path / "other.json"))
    assert "resumed" not in log and "classes (split manifest)" in log


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "zero bytes"])
def test_damaged_checkpoint_is_set_aside_and_training_restarts(prepared, tmp_path, damage):
    cfg = _cfg(max_iter=12)
    ckpt = _interrupted(prepared, tmp_path, cfg)
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 2], "random bytes": os.urandom(4096), "zero bytes": b""}[damage])
    log = _resume(prepared, tmp_path, cfg)
    assert "does not load" in log and "set aside" in log and str(ckpt) in log
    assert (tmp_path / "o/metrics.json").is_file() and ckpt.with_name("last.pt.set-aside").is_file()
    hist = pd.read_csv(tmp_path / "o/history.csv")
    assert hist["iter"].tolist() == [4, 8, 12]  # trained from iteration 0


@pytest.mark.parametrize("damage", ["garbage", "zero bytes", "not a model"])
def test_damaged_source_model_names_the_file_and_the_rebuild(prepared, tmp_path, damage, capsys, monkeypatch):
    src = tmp_path / "nets/rand0/baseA/model.pt"
    src.parent.mkdir(parents=True)
    if damage == "not a model":
        torch.save({"something": torch.zeros(3)}, src)
    else:
        src.write_bytes(os.urandom(2048) if damage == "garbage" else b"")
    from transferable.cli import main

    cmd = _train_cmd(prepared, tmp_path / "o", tmp_path / "ckpt.pt", _cfg(max_iter=4), net="A1B")
    rc = main([*cmd[3:], "--source-model", str(src)])  # the CLI in-process: its error handling, no traceback
    err = capsys.readouterr().err
    # run by hand, outside the pipeline: the advised command has a placeholder for the run's configuration
    assert rc == 1 and str(src) in err and f"{advice.PLACEHOLDER} --force {src}" in err
    monkeypatch.setenv(advice.ENV, "snakemake --cores all --configfile configs/mine.yaml")  # as a job has it
    assert main([*cmd[3:], "--source-model", str(src)]) == 1
    assert f"snakemake --cores all --configfile configs/mine.yaml --force {src}" in capsys.readouterr().err


def test_model_file_carries_its_spec_and_config(prepared, tmp_path):
    cfg = _cfg(max_iter=4)
    _resume(prepared, tmp_path, cfg)
    m = torch.load(tmp_path / "o/model.pt", weights_only=True)
    # the typed settings it trained with, the schema's defaults filled (issue 23)
    from transferable.settings import RunSettings

    kept = json.loads(m["config"])
    assert m["net"] == "baseB" and kept == RunSettings.from_dict(cfg).as_dict()
    assert kept["train"]["eval_batch_size"] == 256 and "eval_batch_size" not in cfg["train"]
    assert json.loads(m["spec"])["crop"] == cfg["net"]["crop"]
    prov = json.loads((tmp_path / "o/metrics.json").read_text())["provenance"]
    assert len(prov["code"]["train_code"]) == 64 and "git" in prov["code"]


# ---------------------------------------------------------------------------- pixels by the book (issue 16)
def _encoded(arr, mode, fmt):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)  # uint16 -> I;16, float32 -> F
    return buf.getvalue()


def test_16bit_png_is_scaled_not_clipped():
    from transferable.data.pixels import decode

    data = _encoded(np.full((8, 8), 30000, dtype=np.uint16), "I;16", "PNG")
    out = decode(data, 8, "grey16.png")
    assert (out == round(30000 * 255 / 65535)).all()  # 117, not 255


def test_32bit_and_signed_integer_images_are_refused_not_made_black():
    """Issue 27, case 7: a 32-bit integer TIFF scaled by 2^32 - 1 came out black; signedness was ignored."""
    from PIL import Image

    from transferable.data.pixels import decode

    with pytest.raises(IngestError, match=r"deep.tif: signed 32-bit integer image: .*convert it to 8 bits yourself"):
        decode(_encoded(np.full((8, 8), 30000, dtype=np.int32), "I", "TIFF"), 8, "deep.tif")
    big = Image.fromarray(np.full((8, 8), 70000, dtype=np.uint32).astype(np.int32)).convert("I")
    buf = io.BytesIO()
    big.save(buf, "TIFF")  # Pillow writes mode I as signed 32-bit: refused, not divided by 2^32 - 1
    with pytest.raises(IngestError, match=r"big.tif: signed 32-bit integer image"):
        decode(buf.getvalue(), 8, "big.tif")
    # a 16-bit image stays scaled from 16 bits (test_16bit_png_is_scaled_not_clipped)


def test_float_tiff_is_scaled_and_out_of_range_refused():
    from transferable.data.pixels import decode

    out = decode(_encoded(np.full((8, 8), 0.5, dtype=np.float32), "F", "TIFF"), 8, "half.tif")
    assert (out == 128).all()  # not 0
    with pytest.raises(IngestError, match=r"bright.tif: float image with values outside \[0, 1\]"):
        decode(_encoded(np.full((8, 8), 300.0, dtype=np.float32), "F", "TIFF"), 8, "bright.tif")


def test_exif_orientation_is_a_choice():
    from PIL import Image

    from transferable.data.pixels import decode

    im = Image.new("RGB", (16, 8), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 8, 8))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)
    kept = decode(buf.getvalue(), 16, "x.png", exif="ignore")
    turned = decode(buf.getvalue(), 16, "x.png", exif="apply")
    assert kept[:, :, :4].mean() > 200 and turned[:, :, :4].mean() < 50


def test_huge_devkit_meta_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """Issue 16, case 7: a devkit whose meta.mat is 300 MB (a few hundred KB compressed) is refused from its
    tar header, never read into memory."""
    from transferable.data import ilsvrc

    demo.generate(tmp_path, seed=0, classes_per_family=2, train_per_class=3, val_per_class=2, min_side=16, max_side=20)
    src = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    members = []
    with tarfile.open(src) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf]
    zeros = 300_000_000
    with tarfile.open(src, "w:gz", compresslevel=1) as tf:
        for m, data in members:
            if m.name.endswith("meta.mat"):
                m.size = zeros

                class Zeros:
                    left = zeros

                    def read(self, n):
                        n = min(n, self.left)
                        self.left -= n
                        return bytes(n)

                tf.addfile(m, Zeros())
            else:
                tf.addfile(m, io.BytesIO(data) if data is not None else None)
    assert src.stat().st_size < 20_000_000
    reads = []
    monkeypatch.setattr(ilsvrc, "read_meta", lambda *a: reads.append(a) or {})
    with pytest.raises(IngestError, match=r"ILSVRC2012_devkit_t12.tar.gz: data/meta.mat is 300000000 bytes"):
        ingest(tmp_path)
    assert not reads


def test_checkpoint_carries_the_job_devices_cuda_rng(monkeypatch):
    """Issue 26: on a GPU the job's own device's CUDA generator is saved with the CPU one (a CPU run stores
    none) and restored onto whatever device the resumed job has: another index or another device count
    continues the same dropout stream instead of restarting it or raising IndexError. Checked here with
    torch.cuda's state functions replaced, as no GPU is present."""
    from transferable.train import loop

    states = {1: torch.tensor([1, 2, 3], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s, torch.device(device))))
    cpu = loop.rng_state(torch.device("cpu"))
    assert cpu["cuda_rng"] is None and torch.equal(cpu["torch_rng"], torch.get_rng_state())
    gpu = loop.rng_state(torch.device("cuda", 1))  # written by a job on cuda:1 of a 4-GPU node
    assert gpu["cuda_rng"] is states[1]
    loop.set_rng_state(gpu, torch.device("cuda", 0))  # resumed on a 1-GPU job: its device 0
    assert restored == [(states[1], torch.device("cuda", 0))]
    loop.set_rng_state(cpu, torch.device("cuda", 0))  # a checkpoint written on the CPU: nothing to restore
    assert len(restored) == 1
    # a checkpoint of the earlier format: every device's state; a device count it did not have is no error
    said = []
    old = dict(gpu, cuda_rng=[torch.zeros(3, dtype=torch.uint8), states[1]])
    loop.set_rng_state(old, torch.device("cuda", 1), said.append)
    loop.set_rng_state(old, torch.device("cuda", 5), said.append)
    assert restored[1:] == [(states[1], torch.device("cuda", 1)), (old["cuda_rng"][0], torch.device("cuda", 5))]
    assert said[0].startswith("checkpoint of an earlier version")


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
@pytest.mark.parametrize("damage", ["deleted", "truncated", "zero-filled", "one byte flipped"])
def test_a_damaged_shard_file_stops_the_job_naming_the_part_and_its_rebuild(prepared, tmp_path, fmt, damage):
    """Issue 27, case 6: a shard file deleted, truncated, zero-filled or with one byte flipped is found before
    training (sizes and SHA-256 recorded by its shard job), named with its part and the command that rebuilds
    that part; nothing is trained."""
    from transferable.data.errors import ShardError

    d = tmp_path / "shards"
    write_part(str(prepared / "images.csv"), 0, 1, 20, str(d / "part0"), log=lambda *a: None, fmt=fmt)
    write_index([str(d / "part0")], 20, str(d / "index.json"), str(d / "rejects.csv"))
    assert (d / "part0/files.sha256").is_file()
    victim = d / "part0" / ("train_00001.npy" if fmt == "raw" else "train_00001.jpeg.npy")
    data = victim.read_bytes()
    if damage == "deleted":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "zero-filled":
        victim.write_bytes(bytes(len(data)))
    else:
        victim.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    with pytest.raises(ShardError) as e:
        train_net(cfg=_cfg(max_iter=4), log=lambda *a: None,
                  **{**_kw(prepared, tmp_path), "shards_index": str(d / "index.json")})
    msg = str(e.value)
    assert str(victim) in msg and "part0" in msg and f"--force {d / 'part0'}" in msg, msg
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_intact_shards_are_verified_and_the_cost_is_logged(prepared, tmp_path):
    logs = "\n".join(_resume(prepared, tmp_path, _cfg(max_iter=4)).splitlines())
    assert re.search(r"shards: 6 files \(0\.\d+ GB\) verified against their digests in [\d.]+ s", logs), logs


@pytest.mark.subprocess
def test_a_terminated_or_killed_shard_job_leaves_no_temporary_part(tmp_path):
    """Issue 27, case 7: a SIGTERM'd shard job (time limit, scancel) removes its temporary part folder; one
    left by a SIGKILLed job on this host is removed by the next shard job, a live job's is not."""
    import socket

    raw = tmp_path / "raw"
    # images large enough that the job lasts about a second: at 60-80 px its 1,220 images took 0.28 s (4,346
    # img/s) and a fast run could finish before the signal arrived
    demo.generate(raw, seed=0, classes_per_family=2, train_per_class=300, val_per_class=5, min_side=200, max_side=260)
    cat, images = ingest(raw)
    images.to_csv(tmp_path / "images.csv", index=False)
    out = tmp_path / "shards/part0"
    proc = subprocess.Popen([sys.executable, "-m", "transferable", "shard", "--images", str(tmp_path / "images.csv"),
                             "--part", "0", "--parts", "1", "--size", "64", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not list(out.parent.glob("part0.tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert proc.poll() is None, "the shard job ended before it could be signalled: give it more work"
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, log[-2000:]
    assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())
    dead = out.with_name(f"part0.tmp-{socket.gethostname()}-{proc.pid}")  # as a SIGKILLed job leaves it
    dead.mkdir()
    live = out.with_name(f"part0.tmp-{socket.gethostname()}-{os.getppid()}")  # a live process's
    live.mkdir()
    write_part(str(tmp_path / "images.csv"), 0, 1, 8, str(out), log=lambda *a: None)
    assert out.is_dir() and not dead.exists() and live.exists()


def test_advised_commands_keep_where_the_run_runs():
    """Review of issue 27, case 3: a command printed by a job of a SLURM run must submit to SLURM (keep
    --profile), not run on the login node; targets, --force and -n are not kept; a null --config value is
    written as key= (Snakemake's null), not key=None."""
    argv = ["--profile", "profiles/slurm", "results/x.pdf", "--force", "-n", "--configfile", "c.yaml",
            "--use-conda", "--jobs=50", "--config", "a=1"]
    assert advice.kept_flags(argv) == ["--profile", "profiles/slurm", "--use-conda", "--jobs=50"]
    got = advice.run_invocation(["c.yaml"], {"data_root": None, "train": {"lr": 0.1}}, advice.kept_flags(argv))
    assert got == ("snakemake --profile profiles/slurm --use-conda --jobs=50 --configfile c.yaml --config "
                   "data_root= 'train={\"lr\": 0.1}'")
    assert advice.run_invocation([], None, ["--use-conda"]) == "snakemake --cores all --use-conda"
