import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def micro_done(tmp_path_factory, bare_python):
    """configs/micro.yaml run to the end ONCE per test session, in a copy of the checkout, by a Snakemake
    whose environment does not have the package: the workflow finds its own code (issue 15). Tests that
    need a finished run share it; they must not change its results/."""
    wd = copy_workflow(tmp_path_factory.mktemp("micro"))
    run_snakemake(["--cores", "2", "--configfile", "configs/micro.yaml"], wd, python=bare_python,
                  env={"PYTHONPATH": ""})
    return wd


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
