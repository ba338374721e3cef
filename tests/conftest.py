import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def run_snakemake(args, cwd, timeout=900, check=True, env=None):
    """Run snakemake from the project's environment, with its bin/ first on PATH (rules call `transferable`)."""
    env = dict(os.environ, **(env or {}), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    exe = shutil.which("snakemake", path=env["PATH"])
    proc = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow (not of results/) to run snakemake in; the package runs from this checkout."""
    for name in ("Snakefile", "config.yaml", "workflow", "configs", "profiles", "envs"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy(src, dest / name)
    return dest


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
