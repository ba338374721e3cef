import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Under pytest-xdist (make test: 2 workers on 2 cores) each worker has one core: one thread per pool (torch's
# OpenMP one, numpy's BLAS), set before anything imports them, and inherited by the Snakemake runs the tests
# start (Snakemake sets each job's own), so that two workers do not start four spinning pools on two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def run_snakemake(args, cwd, timeout=900, check=True, env=None, python=None):
    """Run snakemake from the project's environment (its bin/ first on PATH), or ``python -m snakemake``
    with another ``python``."""
    env = dict(os.environ, **(env or {}), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    exe = [str(python), "-m", "snakemake"] if python else [shutil.which("snakemake", path=env["PATH"])]
    proc = subprocess.run([*exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_workflow(dest: Path) -> Path:
    """A copy of the checkout (not of results/) to run snakemake in: its jobs run the copy's src/."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("Snakefile", "config.yaml", "workflow", "configs", "profiles", "envs", "src"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy(src, dest / name)
    return dest


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory):
    """A Python with the project's third-party packages (torch, snakemake, ...) but WITHOUT transferable: a
    venv whose one link to them is a .pth line naming this environment's site-packages, whose own .pth
    files (the editable install's among them) are then never read."""
    import sysconfig

    d = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True)
    site = Path(subprocess.run([str(d / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = d / "bin/python"
    clean = dict(os.environ, PYTHONPATH="")
    assert subprocess.run([py, "-c", "import transferable"], cwd=d, env=clean, capture_output=True).returncode != 0
    subprocess.run([py, "-c", "import torch, snakemake, pandas"], cwd=d, env=clean, check=True)
    return py


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(dir)`` run once per test session, also when pytest-xdist runs the session in several workers
    (each has its own session fixtures): the first worker to ask builds under a file lock in the directory
    the workers share, the others wait and reuse the result, or fail with the first one's error."""
    import fcntl
    import traceback

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-<n>/, above each worker's popen-gw<k>/
    d, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():
            pytest.fail(f"{name} could not be built (in another worker):\n{failed.read_text()}")
        if not done.exists():
            d.mkdir(exist_ok=True)
            try:
                build(d)
            except BaseException:
                failed.write_text(traceback.format_exc()[-6000:])
                raise
            done.touch()
    return d


@pytest.fixture(scope="session")
def micro_done(tmp_path_factory, bare_python):
    """configs/micro.yaml (CaffeNet) run to the end ONCE per test session, in a copy of the checkout, by a
    Snakemake whose environment does not have the package: the workflow finds its own code (issue 15). Tests
    that need a finished run share it; they must not change its results/."""

    def build(wd):
        copy_workflow(wd)
        run_snakemake(["--cores", "2", "--configfile", "configs/micro.yaml"], wd, python=bare_python,
                      env={"PYTHONPATH": ""})

    return built_once(tmp_path_factory, "micro", build)


def family_config(arch: str, similarity: bool = False) -> dict:
    """configs/micro.yaml's design on a unit network: n = 1 and its top unit 5 in every experiment (the
    similarity analysis only when asked)."""
    cfg = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())
    cfg["net"] = {"arch": arch, "crop": 16, "outputs": "all", "input_scale": 0.017}
    optimizer = "adamw" if arch.startswith("vit") else "sgd"
    cfg["train"].update(optimizer=optimizer, lr=0.01 if optimizer == "sgd" else 0.001)
    if not similarity:
        cfg["experiment"].pop("similarity")
    for key in ("random_splits", "natman", "random_filters"):
        cfg["experiment"][key]["layers"] = [1, 5]
    return cfg


def resnet_config(checkpoint: Path) -> dict:
    """The ResNet family's shared micro run: the micro design at n = 1 and 5, on JPEG shards (full-decode
    resize), and a cross experiment (issue 25): two sources (this config's all-class baseA, and a checkpoint
    file as torchvision writes one) into a generated dataset of another kind (negatives), n = 1 and 3. Its
    nets train on shared streams (38 nets in 17 jobs): micro_done trains one net per job, and
    test_train.py checks that both give the same nets, ResNet's included."""
    cfg = family_config("resnet-small", similarity=True)  # the cross pairs' similarity profiles use its settings
    cfg["net"]["units"] = "blocks"
    cfg["resources"]["shared_stream"] = True
    cfg["preprocess"].update(format="jpeg", jpeg_quality=90, resize="imagemagick")
    cfg["datasets"] = {"neg": {"data": {"source": "demo"},
                               "demo": {**cfg["demo"], "seed": 3, "style": "negative", "classes_per_family": 2}}}
    cfg["experiment"]["cross"] = {"sources": {"here": {"dataset": "main", "split": "all", "half": "A"},
                                              "file": {"checkpoint": str(checkpoint)}},
                                  "targets": {"neg": {}}, "layers": [1, 3], "finetune_layers": [3], "replicates": 2}
    return cfg


def _family_run(wd: Path, name: str, cfg: dict) -> None:
    copy_workflow(wd)
    (wd / f"configs/{name}.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(["--cores", "2", "--configfile", f"configs/{name}.yaml"], wd)
    (wd / "snakemake.out").write_text(proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def resnet_done(tmp_path_factory):
    """The ResNet family's micro run (resnet_config), once per session: configs/resnet.yaml in its folder,
    the checkpoint source rs.pth beside it, Snakemake's output in snakemake.out."""

    def build(wd):
        import torch

        from transferable.models import units

        # a checkpoint as torchvision writes one: the bare model's state_dict (no "model." prefix, no wrapper)
        torch.save(units.build("resnet-small", 7, seed=5, image_size=16).model.state_dict(), wd / "rs.pth")
        _family_run(wd, "resnet", resnet_config(wd / "rs.pth"))

    return built_once(tmp_path_factory, "resnet", build)


@pytest.fixture(scope="session")
def vit_done(tmp_path_factory):
    """The ViT family's micro run, once per session: the micro design at n = 1 and 5 with AdamW, its nets
    trained on shared streams (resources.shared_stream: one job per split and half); configs/vit.yaml."""

    def build(wd):
        cfg = family_config("vit-small")
        cfg["resources"]["shared_stream"] = True
        _family_run(wd, "vit", cfg)

    return built_once(tmp_path_factory, "vit", build)


@pytest.fixture
def workdir(tmp_path):
    return copy_workflow(tmp_path)


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """A small generated dataset in the official ILSVRC2012 layout (6 classes)."""
    from transferable.data import demo

    out = tmp_path_factory.mktemp("demo")
    demo.generate(out, seed=1, classes_per_family=3, train_per_class=6, val_per_class=3, min_side=16, max_side=40)
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Ingested, sharded demo data (4 classes) and a random split, as the pipeline makes them."""
    import json

    from transferable.data import demo
    from transferable.data.ilsvrc import ingest
    from transferable.data.shards import write_index, write_part
    from transferable.data.splits import make_manifest

    d = tmp_path_factory.mktemp("prepared")
    demo.generate(d / "raw", seed=0, classes_per_family=2, train_per_class=40, val_per_class=10,
                  min_side=20, max_side=30)
    cat, images = ingest(d / "raw")
    images.to_csv(d / "images.csv", index=False)
    cat.to_csv(d / "catalog.csv", index=False)
    write_part(str(d / "images.csv"), 0, 1, 20, str(d / "shards/part0"), log=lambda *a: None)
    write_index([str(d / "shards/part0")], 20, str(d / "shards/index.json"), str(d / "shards/rejects.csv"))
    (d / "rand0.json").write_text(json.dumps(make_manifest("rand0", {"kind": "random", "seed": 0}, cat)))
    return d


@pytest.fixture(scope="session", autouse=True)
def early_runs(request, tmp_path_factory):
    """Long background runs, started when the session starts: each test file selected in this session that
    defines ``start_early(dir)`` has it called once (built_once: in one worker under pytest-xdist), and its own
    fixtures wait for what it started. test_slurm.py starts the live cluster's micro run this way: about
    5 minutes, mostly Snakemake waiting for SLURM's status checks, while the workers run other files."""
    modules = dict.fromkeys(item.module for item in request.session.items if getattr(item, "module", None))
    for module in modules:
        if hasattr(module, "start_early"):
            built_once(tmp_path_factory, early_name(module.__file__), module.start_early)


def early_name(test_file: str) -> str:
    """The built_once name of a test file's early run: its fixtures ask built_once for it, and get it."""
    return f"early-{Path(test_file).stem}"


# The long files first, so that `make test`'s workers (pytest-xdist, one file at a time each, in this order:
# --no-loadscope-reorder) do not end on them: the family runs on one worker, while the other runs the files
# on micro_done; test_slurm.py, whose micro run started with the session (early_runs), once that run is
# about done; then the rest in their usual order.
LONG_FILES = ("test_units.py", "test_reruns.py", "test_workflow.py", "test_smoke.py", "test_faults.py",
              "test_slurm.py", "test_cross_workflow.py", "test_report.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
