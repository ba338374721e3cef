"""Bad configuration fails before any job starts, naming the key and what is allowed."""

import copy

import pytest
import yaml
from conftest import ROOT, run_snakemake

MICRO = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())


def _dry_run(workdir, cfg, *extra):
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(["-n", "--cores", "1", "--configfile", str(path), *extra], workdir, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _edit(fn):
    cfg = copy.deepcopy(MICRO)
    fn(cfg)
    return cfg


CASES = [
    ("unknown top-level key", lambda c: c.update(trian={"lr": 1}), "trian"),
    ("unknown nested key", lambda c: c["train"].update(learning_rate=0.1), "learning_rate"),
    ("wrong type", lambda c: c["train"].update(batch_size="big"), "batch_size"),
    ("n outside 1..7", lambda c: c["experiment"]["random_splits"].update(layers=[1, 8]), "8"),
    ("unknown treatment", lambda c: c["experiment"]["random_splits"].update(treatments=["CnD"]), "CnD"),
    ("missing split", lambda c: c["experiment"]["random_splits"].update(splits=["rand9"]), "rand9"),
    ("random filters on a half split", lambda c: c["experiment"]["random_filters"].update(split="rand0"), "random_filters"),
    ("natman target that is no half", lambda c: c["experiment"]["natman"].update(targets=["C"]), "experiment.natman.targets"),
    ("path source without root", lambda c: c["data"].update(source="path"), "data.root"),
    ("missing data root", lambda c: c["data"].update(source="path", root="/nonexistent/imagenet"), "/nonexistent/imagenet"),
    ("class range beyond the dataset", lambda c: c["splits"].update(
        nm={"kind": "ranges", "halves": {"A": {"ranges": "0-1"}, "B": {"ranges": "2-9"}}}), "splits.nm.halves.B.ranges"),
    ("unknown architecture", lambda c: c["net"].update(arch="resnet"), "arch"),
]


@pytest.mark.parametrize("what, edit, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_config_fails_before_any_job(workdir, what, edit, needle):
    rc, out = _dry_run(workdir, _edit(edit))
    assert rc != 0, what
    assert needle in out, f"{what}: message does not name {needle!r}:\n{out[-2000:]}"
    assert not (workdir / "results").exists()


def test_micro_config_is_valid(workdir):
    rc, out = _dry_run(workdir, MICRO)
    assert rc == 0, out[-2000:]


def test_class_range_beyond_a_data_roots_classes_fails_before_any_job(workdir, tmp_path):
    from PIL import Image

    root = tmp_path / "mydata"
    for subset in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            (root / subset / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / subset / cls / "0.png")
    cfg = _edit(lambda c: c["splits"].update(nm={"kind": "ranges", "halves": {"A": {"ranges": "0"}, "B": {"ranges": "1-3"}}}))
    cfg["data"] = {"source": "path", "root": str(root)}
    rc, out = _dry_run(workdir, cfg)
    assert rc != 0 and "splits.nm.halves.B.ranges" in out and "3 classes" in out
    cfg["splits"]["nm"]["halves"]["B"]["ranges"] = "1-2"
    rc, out = _dry_run(workdir, cfg)
    assert rc == 0, out[-2000:]
