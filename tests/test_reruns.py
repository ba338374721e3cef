"""Reruns redo exactly what a change invalidated (read from dry-run job lists after a full micro run)."""

import os
import shlex
import shutil

import pytest
import yaml
from conftest import VENV_BIN, copy_workflow, run_snakemake
from test_workflow import planned

AGGREGATES = {"runs_table": 1, "fig2": 1, "fig3": 1, "table1": 1, "paper_comparison": 1, "effects": 1,
              "claims_figure": 1, "training_curves": 3, "table_html": 5, "similarity": 1,
              "similarity_figure": 1,
              "all": 1}


@pytest.fixture
def done(micro_done):
    """configs/micro.yaml run to the end once per session (conftest.micro_done); these tests only plan."""
    return micro_done


def _plan(wd, edit=None, text_edit=None):
    cfg_path = wd / "configs/edited.yaml"
    text = (wd / "configs/micro.yaml").read_text()
    if edit:
        cfg = yaml.safe_load(text)
        edit(cfg)
        text = yaml.safe_dump(cfg)
    if text_edit:
        text = text_edit(text)
    cfg_path.write_text(text)
    return planned(run_snakemake(["-n", "--cores", "2", "--configfile", str(cfg_path)], wd))


@pytest.mark.slow
def test_nothing_changed_nothing_to_do(done):
    assert _plan(done) == {}


@pytest.mark.slow
def test_comment_only_edit_reruns_nothing(done):
    assert _plan(done, text_edit=lambda t: "# a comment\n" + t.replace("lr: 0.01", "lr: 0.01   # tuned")) == {}


@pytest.mark.slow
def test_training_hyperparameter_reruns_nets_and_aggregates_only(done):
    jobs = _plan(done, edit=lambda c: c["train"].update(lr=0.02))
    assert jobs == {"train": 13, **AGGREGATES}


@pytest.mark.slow
def test_split_seed_reruns_that_split_only_never_shards(done):
    jobs = _plan(done, edit=lambda c: c["splits"]["rand0"].update(seed=5))
    # rand0: baseA, baseB, B1B, B1B_ft, A1B, A1B_ft and the control baseB_ft
    assert jobs == {"split_manifest": 1, "train": 7, **AGGREGATES, "training_curves": 1}


@pytest.mark.slow
@pytest.mark.parametrize("change", [dict(size=22), dict(resize="imagemagick"), dict(resize="bicubic"),
                                    dict(format="jpeg"), dict(format="jpeg", jpeg_quality=75)])
def test_preprocessing_reruns_shards_and_everything_after(done, change):
    jobs = _plan(done, edit=lambda c: c["preprocess"].update(change))
    assert jobs == {"shard_part": 2, "shard_index": 1, "train": 13, **AGGREGATES}


@pytest.mark.slow
def test_jpeg_quality_of_raw_shards_reruns_nothing(done):
    """jpeg_quality only matters to JPEG shards: it is not in the raw shards' path."""
    assert _plan(done, edit=lambda c: c["preprocess"].update(jpeg_quality=75)) == {}


@pytest.mark.slow
@pytest.mark.parametrize("module, expected", [
    ("figures/plots.py", {k: v for k, v in AGGREGATES.items() if k != "similarity"}),
    ("train/loop.py", {"train": 13, **AGGREGATES}),
    ("data/splits.py", {"split_manifest": 3, "train": 13, **AGGREGATES}),
    ("data/shards.py", {"shard_part": 2, "shard_index": 1, "train": 13, **AGGREGATES}),
    # issue 23: modules training imports were missing from the hand-kept list (the net-name grammar, the
    # shard readers): now read from the imports
    ("paths.py", {"train": 13, **AGGREGATES}),
    # result-neutral: messages, atomic writes, staging
    ("advice.py", {}),
    ("data/staging.py", {}),
])
def test_stage_code_change_reruns_that_stage_and_downstream(done, module, expected):
    path = done / "src/transferable" / module
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        assert _plan(done) == expected
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_finished_run_stays_finished_when_moved_or_cloned_again(done, tmp_path):
    """The code inputs are named relative to the checkout: a finished run moved elsewhere (mtimes kept, as
    mv does) plans nothing, nor does a new copy of the same code (newer mtimes, as a new clone) given
    the old results/ and .snakemake/."""
    moved = tmp_path / "moved"
    shutil.copytree(done, moved, symlinks=True)
    assert _plan(moved) == {}
    (tmp_path / "clone").mkdir()
    clone = copy_workflow(tmp_path / "clone")
    for f in clone.rglob("*.py"):
        os.utime(f)  # newer than every result
    for name in ("results", ".snakemake"):
        shutil.copytree(done / name, clone / name, symlinks=True)
    assert _plan(clone) == {}


@pytest.mark.slow
def test_touch_without_change_reruns_nothing(done):
    os.utime(done / "src/transferable/train/loop.py")
    assert _plan(done) == {}


def _folder_dataset(root, classes=("cat", "dog", "eel", "fox"), per_class=3):
    from PIL import Image

    for subset in ("train", "val"):
        for i, cls in enumerate(classes):
            (root / subset / cls).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.new("RGB", (24, 24), (40 * i, 20 * j, 90)).save(root / subset / cls / f"{j}.png")


def _folder_workflow(tmp_path, root_name: str, one_split: bool = False):
    """A copy of the workflow whose configs/folder.yaml is micro.yaml on a small image folder (batch 4: a
    half of it holds 6 training images); ``one_split``: the random split rand0 with target B only."""
    (tmp_path / "wf").mkdir()
    wd = copy_workflow(tmp_path / "wf")
    root = tmp_path / root_name
    _folder_dataset(root)
    cfg = yaml.safe_load((wd / "configs/micro.yaml").read_text())
    cfg["data"] = {"source": "path", "root": str(root)}
    if one_split:
        cfg["splits"] = {"rand0": {"kind": "random", "seed": 0}}
        cfg["experiment"] = {"random_splits": {**cfg["experiment"]["random_splits"], "targets": ["B"]}}
    cfg["train"]["batch_size"] = 4
    (wd / "configs/folder.yaml").write_text(yaml.safe_dump(cfg))
    return wd, root


@pytest.mark.slow
def test_image_folder_changes_rerun_ingest_and_what_follows(tmp_path):
    """Issue 16, case 3: adding, replacing or deleting an image of a folder dataset reruns ingest and the
    shards; touching one without changing it, or nothing at all, reruns nothing."""
    from PIL import Image

    wd, root = _folder_workflow(tmp_path, "my data", one_split=True)
    target = ["results/shards/warp20/index.json", "--cores", "1", "--configfile", "configs/folder.yaml"]

    def plan():
        return planned(run_snakemake(["-n", *target], wd))

    run_snakemake(target, wd)
    assert plan() == {}
    os.utime(root / "train/cat/0.png")  # touched, same content
    assert plan() == {}
    downstream = {"raw_identity": 1, "ingest": 1, "shard_part": 2, "shard_index": 1}
    for j in range(3, 7):  # 4 images added
        Image.new("RGB", (24, 24), (9, 9, j)).save(root / "train/cat" / f"{j}.png")
    assert plan() == downstream
    run_snakemake(target, wd)
    assert plan() == {}
    Image.new("RGB", (24, 24), (200, 0, 0)).save(root / "train/dog/1.png")  # replaced
    assert plan() == downstream
    run_snakemake(target, wd)
    (root / "val/eel/2.png").write_bytes(b"not an image")  # a bad file stops the shard job...
    proc = run_snakemake(target, wd, check=False)
    assert proc.returncode != 0 and "val/eel/2.png" in (wd / "logs/shards/warp20/part1.log").read_text()
    (root / "val/eel/2.png").unlink()  # ...deleting it is seen, and the rerun succeeds
    assert plan() == downstream
    run_snakemake(target, wd)
    images = (wd / "results/ingest/images.csv").read_text()
    assert "val/eel/2.png" not in images and images.count("/train/cat/") == 7


@pytest.mark.slow
def test_a_plan_made_while_ingest_runs_changes_nothing_it_consumed(tmp_path):
    """Issue 27, case 1: a dry run while ingest is running (and after an image was added) must not write what
    ingest consumes; the next run must see the change and ingest again. Ingest is held by a test hook after
    it read the data and before it writes, so the interleaving is deterministic. (On bcefc00 with the same
    hook: the image is not in images.csv and every later run says "Nothing to be done".)"""
    import subprocess
    import time

    from PIL import Image

    wd, root = _folder_workflow(tmp_path, "data")
    target = ["results/ingest/catalog.csv", "--cores", "1", "--configfile", "configs/folder.yaml"]
    hold = tmp_path / "hold"
    hold.touch()
    env = dict(os.environ, TRANSFERABLE_TEST_HOLD_INGEST=str(hold), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.Popen([str(VENV_BIN / "snakemake"), *target], cwd=wd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "hold.waiting").exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "hold.waiting").exists(), run.communicate()[0][-3000:]
    identity = sorted((wd / "results/ingest/raw").glob("*.sha256"))
    assert len(identity) == 1
    before = {p: p.stat().st_mtime_ns for p in (wd / "results").rglob("*") if p.is_file()}
    Image.new("RGB", (24, 24), (1, 2, 3)).save(root / "train/cat/added.png")
    proc = run_snakemake(["-n", *target], wd)  # a plan while ingest runs, the data changed
    assert "raw_identity" in proc.stdout and "ingest" in proc.stdout
    after = {p: p.stat().st_mtime_ns for p in (wd / "results").rglob("*") if p.is_file()}
    cache = wd / "results/ingest/raw/.raw_files.cache.json"  # read and written by plans only
    assert {p: t for p, t in after.items() if p != cache} == {p: t for p, t in before.items() if p != cache}
    hold.unlink()
    out = run.communicate(timeout=240)[0]
    assert run.returncode == 0, out[-3000:]
    # ingest read the data before the image was added; the identity it consumed is the planned one, so
    # the next run sees the change and ingests again
    assert planned(run_snakemake(["-n", *target], wd)) == {"raw_identity": 1, "ingest": 1}
    run_snakemake(target, wd)
    assert planned(run_snakemake(["-n", *target], wd)) == {}
    assert "added.png" in (wd / "results/ingest/images.csv").read_text()
    assert [p.name for p in (wd / "results/ingest/raw").glob("*.sha256")] != [p.name for p in identity]


@pytest.mark.slow
def test_the_advised_rebuild_command_cannot_switch_the_run_to_another_config(done, tmp_path):
    """Issue 27, case 3: a damaged source model's message says how to rebuild it; run as printed on a run made
    with another config (micro.yaml here, with a --config override), it must replan that net only, not the
    default config's demo data, catalog, shards and nets."""
    import re

    clone = tmp_path / "clone"
    shutil.copytree(done, clone, symlinks=True)
    over = ["--config", "resources={train_threads: 1}"]  # micro's own value: an override that changes nothing
    src = "results/nets/rand0/baseA/model.pt"
    (clone / src).write_bytes(b"damaged")
    dependent = "results/nets/rand0/A1B/metrics.json"
    proc = run_snakemake(["--cores", "1", "--configfile", "configs/micro.yaml", *over, "--force", dependent], clone,
                         check=False)
    assert proc.returncode != 0
    log = (clone / "logs/nets/rand0/A1B.log").read_text()
    advised = re.search(r"with: (snakemake .*)$", log, re.M).group(1)
    assert "micro.yaml" in advised and "train_threads" in advised, advised
    args = shlex.split(advised)
    assert args[:3] == ["snakemake", "--cores", "1"]  # the run's own placement (here --cores 1), not another
    assert planned(run_snakemake(["-n", *args[1:]], clone)) == {"train": 1}, advised


@pytest.mark.slow
def test_checkpoint_settings_rerun_nothing_and_reach_the_jobs(done):
    """When a run is saved does not change what it computes (issue 17 case 9): no rerun; yet the training
    jobs get the settings (as --checkpoint, outside the tracked --params)."""
    edit = lambda c: c["train"].update(checkpoint_every=0, checkpoint_minutes=10)  # noqa: E731
    assert _plan(done, edit=edit) == {}
    cfg = yaml.safe_load((done / "configs/micro.yaml").read_text())
    edit(cfg)
    (done / "configs/edited.yaml").write_text(yaml.safe_dump(cfg))
    out = run_snakemake(["-n", "-p", "--cores", "2", "--configfile", "configs/edited.yaml", "--forcerun", "train",
                         "results/nets/rand0/baseB/metrics.json"], done).stdout
    assert "--checkpoint 0:10.0 " in out and "checkpoint_minutes" not in out


def test_stage_code_is_read_from_the_imports():
    """Issue 23: each stage's code inputs follow its imports (at any depth, inside functions too), less the
    modules that cannot change a result; a module a stage imports cannot be left out by hand."""
    from transferable import provenance

    train = provenance.stage_code("train")
    assert {"train/loop.py", "transfer.py", "models/units.py", "paths.py", "data/reader.py", "data/errors.py"} <= set(train)
    # the writer and the ingest are not training code: a change to them reruns training through the shards
    assert not {"data/shards.py", "data/ilsvrc.py"} & set(train) and "data/shards.py" in provenance.stage_code("shards")
    assert not provenance.RESULT_NEUTRAL_CODE & {f for s in provenance.STAGE_ENTRIES for f in provenance.stage_code(s)}
    # the data files a module names are its code: the published numbers, wherever figures/paper.py runs
    paper = {"figures/paper_networks.csv", "figures/paper_lines.csv", "figures/paper_table1.csv"}
    assert paper <= set(provenance.stage_code("figures")) and paper <= set(provenance.stage_code("cross"))
    assert not [f for f in train if not f.endswith(".py")]
    for stage, code in ((s, provenance.stage_code(s)) for s in provenance.STAGE_ENTRIES):  # every listed file exists and is hashed
        assert code and all((provenance.PACKAGE_DIR / f).is_file() for f in code), stage
