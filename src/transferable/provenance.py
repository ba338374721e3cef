"""What a result was made from: the code of each pipeline stage and content digests of its inputs.

The Snakefile declares each stage's modules (``STAGE_CODE``) as inputs of its rules, so that editing one
reruns that stage and what follows; a training checkpoint records the digest of the same files, so that
a checkpoint written by other training code is never resumed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# The modules each stage runs, relative to the package (cli.py only dispatches and is not listed).
STAGE_CODE = {
    "demo": ["data/demo.py"],
    "ingest": ["data/ilsvrc.py"],
    "splits": ["data/splits.py"],
    "shards": ["data/shards.py", "data/ilsvrc.py"],
    "train": ["train/loop.py", "train/devices.py", "transfer.py", "models/caffenet.py", "models/units.py",
              "data/loader.py"],
    "similarity": ["similarity.py", "models/caffenet.py", "data/loader.py", "data/shards.py"],
    "figures": [
        "figures/tables.py",
        "figures/effects.py",
        "figures/plots.py",
        "figures/paper.py",
        "figures/paper_networks.csv",
    ],
}


# train settings that decide when a run is saved, not what it computes: changing them reruns no net
# (the rule's params) and keeps an in-progress checkpoint resumable (its identity)
RESULT_NEUTRAL_TRAIN = ("checkpoint_every", "checkpoint_minutes")


def result_train(train: dict) -> dict:
    """The ``train`` section without the settings that cannot change a result."""
    return {k: v for k, v in train.items() if k not in RESULT_NEUTRAL_TRAIN}


def stage_files(stage: str, package_dir: str | os.PathLike | None = None) -> list[str]:
    base = Path(package_dir) if package_dir else PACKAGE_DIR
    return [str(base / f) for f in STAGE_CODE[stage]]


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_digest(stage: str) -> str:
    """One digest of the content of a stage's modules (the code version a checkpoint is tied to)."""
    h = hashlib.sha256()
    for rel, path in zip(STAGE_CODE[stage], stage_files(stage)):
        h.update(rel.encode() + b"\0" + bytes.fromhex(file_digest(path)))
    return h.hexdigest()


def code_version() -> dict:
    """The code that produced a result: the package version, the training stage's code digest, and the git
    commit of the checkout with a dirty flag when the package runs from one (None outside git)."""
    from . import __version__

    out = {"version": __version__, "train_code": code_digest("train"), "git": None, "dirty": None,
           "package_dir": str(PACKAGE_DIR)}
    try:
        import subprocess

        def git(*args):
            return subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        out["git"] = git("rev-parse", "HEAD")
        out["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return out
