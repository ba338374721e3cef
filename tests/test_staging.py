"""Where a training job reads a half too large for its memory from (issue 26): chosen by size, staged to a
node-local folder when one has room, and said with the bytes each choice moves per epoch."""

from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT
from transferable.data import staging
from transferable.data.reader import Shards
from transferable.train.loop import train_net

GB = 10**9


def test_the_policy_by_size():
    # the demo: everything in memory
    assert staging.choose(50 << 20, 2000 << 20, None)["policy"] == "memory"
    # a paper half (126 GB raw) in a 160 GB job: memory-mapped, kept by the page cache after epoch 1
    p = staging.choose(126 * GB, 160 << 30, None)
    assert p["policy"] == "page cache" and p["shared_bytes_per_epoch"] == 0
    # the 1,000-class all set (252 GB) in the same job: re-read every epoch, unless a local disk has room
    p = staging.choose(252 * GB, 160 << 30, None)
    assert p["policy"] == "shared storage" and p["shared_bytes_per_epoch"] == 252 * GB
    assert staging.choose(252 * GB, 160 << 30, 200 * GB)["policy"] == "shared storage"  # the disk is too small
    p = staging.choose(252 * GB, 160 << 30, 1800 * GB)
    assert p["policy"] == "stage" and p["shared_bytes_per_epoch"] == 0 and p["local_bytes_per_epoch"] == 252 * GB


def _cfg():
    micro = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())
    cfg = {"net": dict(micro["net"]), "train": dict(micro["train"]), "metric": {"best_k": 2}, "split_kind": "random"}
    cfg["train"].update(max_iter=12, eval_every=4, deterministic=True, amp=False)
    return cfg


def _train(prepared, out, stage_dir, mem_mb, lines):
    return train_net(split="rand0", net="baseB", manifest=str(prepared / "rand0.json"),
                     shards_index=str(prepared / "shards/index.json"), out_dir=str(out), ckpt=str(out / "ckpt.pt"),
                     cfg=_cfg(), device="cpu", mem_mb=mem_mb, stage_dir=stage_dir, log=lines.append)


def test_a_half_too_large_for_the_job_is_staged_and_trains_the_same(prepared, tmp_path, monkeypatch):
    """A job whose memory cannot hold its half (the memory budget is made tiny here) copies the half's files
    to the stage folder once, reads them from there, and trains exactly the net of an in-memory run."""
    ref_lines, lines, again = [], [], []
    ref = _train(prepared, tmp_path / "ref", None, None, ref_lines)
    assert any("-> memory" in x for x in ref_lines)
    monkeypatch.setattr(staging, "RESERVE_MAX", 0)
    monkeypatch.setattr("transferable.train.loop.job_memory", lambda mem_mb: (1 << 10, "a test's 1 KB"))
    stage = tmp_path / "local"
    got = _train(prepared, tmp_path / "run", str(stage), None, lines)
    said = next(x for x in lines if "-> stage" in x)
    assert "copied to" in said and "every epoch reads" in said
    staged = list(stage.glob("transferable-shards-*/**/*.npy"))
    assert staged and all(f.stat().st_size > 0 for f in staged)
    assert got["provenance"]["job"]["data_policy"] == "stage" and got["provenance"]["job"]["data_bytes"] > 0
    for key in ("top1", "top1_final", "top5"):
        assert got[key] == ref[key]
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a second job of the node reuses the staged copy; without a stage folder the job says what it costs
    stamps = {f: f.stat().st_mtime_ns for f in staged}
    _train(prepared, tmp_path / "again", str(stage), None, again)
    assert any("-> stage" in x for x in again) and {f: f.stat().st_mtime_ns for f in staged} == stamps
    lines.clear()
    _train(prepared, tmp_path / "shared", None, None, lines)
    said = next(x for x in lines if "-> shared storage" in x)
    assert "every epoch reads" in said and "resources.stage_dir" in said and "preprocess.format: jpeg" in said


def test_a_staged_copy_is_a_shard_set_of_its_own(prepared, tmp_path):
    shards = Shards(prepared / "shards" / "index.json")
    staged, plan = staging.prepare(shards, [0, 1], 1 << 10, str(tmp_path), log=lambda m: None)
    assert plan["policy"] == "stage" and staged.root != shards.root and staged.digest == shards.digest
    assert (staged.array("train", 0) == shards.array("train", 0)).all()
    assert (staged.mean_image([0, 1]) == shards.mean_image([0, 1])).all()


def test_the_stage_folder_comes_from_the_rule_or_the_site(monkeypatch):
    """The rule always passes --stage-dir (empty when resources.stage_dir is not set); then the node's
    $TRANSFERABLE_STAGE_DIR, which a site sets in its job environment, is used."""
    from transferable.cli import _stage_dir, build_parser

    base = ["train", "--split", "rand0", "--net", "baseB", "--manifest", "m", "--shards", "s", "--out-dir", "o",
            "--ckpt", "c", "--params", "{}"]
    monkeypatch.delenv("TRANSFERABLE_STAGE_DIR", raising=False)
    assert _stage_dir(build_parser().parse_args(base + ["--stage-dir="])) is None
    monkeypatch.setenv("TRANSFERABLE_STAGE_DIR", "/local/scratch")
    assert _stage_dir(build_parser().parse_args(base + ["--stage-dir="])) == "/local/scratch"
    assert _stage_dir(build_parser().parse_args(base + ["--stage-dir=/nvme"])) == "/nvme"


def test_a_damaged_staged_copy_is_dropped_not_trained_on(prepared, tmp_path, monkeypatch):
    """A staged file of the right size but other content (a bad local disk, a previous partial copy) is found
    by the check against the shard jobs' digests: the staged copy is removed and the job reads the shard
    folder, training the same net."""
    ref = _train(prepared, tmp_path / "ref", None, None, [])
    monkeypatch.setattr(staging, "RESERVE_MAX", 0)
    monkeypatch.setattr("transferable.train.loop.job_memory", lambda mem_mb: (1 << 10, "a test's 1 KB"))
    stage = tmp_path / "local"
    _train(prepared, tmp_path / "first", str(stage), None, [])
    victim = sorted(stage.glob("transferable-shards-*/**/train_*.npy"))[0]
    victim.write_bytes(bytes(victim.stat().st_size))  # same size, zeros
    lines = []
    got = _train(prepared, tmp_path / "again", str(stage), None, lines)
    assert any("the staged copy is damaged" in x and str(victim) in x for x in lines), lines
    assert not list(stage.glob("transferable-shards-*")) and got["provenance"]["job"]["data_policy"] == "shared storage"
    assert got["top1"] == ref["top1"]


def test_the_stage_folder_is_private_and_expanded(prepared, tmp_path, monkeypatch):
    """$VARS in resources.stage_dir are expanded (the rule passes it quoted), a relative path is refused, the
    folder is created 0700, and one this user does not own privately is refused."""
    import os

    shards = Shards(prepared / "shards" / "index.json")
    monkeypatch.setenv("MY_SCRATCH", str(tmp_path / "scratch"))
    staged, plan = staging.prepare(shards, [0, 1], 1 << 10, "$MY_SCRATCH/stage", log=lambda m: None)
    root = Path(plan["stage_dir"])
    assert root.parent == tmp_path / "scratch/stage" and (root.stat().st_mode & 0o777) == 0o700
    with pytest.raises(ValueError, match="not an absolute path"):
        staging.prepare(shards, [0, 1], 1 << 10, "relative/stage", log=lambda m: None)
    os.chmod(root, 0o777)  # as another user could have made it
    with pytest.raises(PermissionError, match="not this user's private folder"):
        staging.prepare(shards, [0, 1], 1 << 10, str(root.parent), log=lambda m: None)
