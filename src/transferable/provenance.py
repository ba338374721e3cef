"""What a result was made from: the code of each pipeline stage and content digests of its inputs.

The Snakefile declares each stage's modules (``stage_code``) as inputs of its rules, so that editing one
reruns that stage and what follows; a training checkpoint records the digest of the same files, so that
a checkpoint written by other training code is never resumed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# What each stage runs, relative to the package: its entry modules (and data files), and through them every
# module of the package they import, at any depth and inside functions too (read from the sources, not kept
# by hand: a module a stage imports cannot be forgotten). cli.py only dispatches and is not listed.
STAGE_ENTRIES = {
    "demo": ["data/demo.py"],
    "ingest": ["data/ilsvrc.py"],
    "splits": ["data/splits.py"],
    "shards": ["data/shards.py"],
    "train": ["train/loop.py"],
    "similarity": ["similarity.py"],
    "sources": ["sources.py"],
    "cross": ["figures/cross.py", "figures/tables.py"],
    "figures": ["figures/tables.py", "figures/effects.py", "figures/plots.py", "figures/paper.py"],
}
# a packaged data file, named in a module's source: part of the code of every stage that runs that module
DATA_FILE = re.compile(r"[\"']([\w-]+\.(?:csv|json|yaml))[\"']")
# Imported by stages but unable to change a result: writing files, messages, digests, attempt records, the
# choice of where identical bytes are read from. Editing them reruns nothing.
RESULT_NEUTRAL_CODE = frozenset({"atomic.py", "advice.py", "provenance.py", "attempts.py", "data/staging.py"})


def _import_statements(body: list) -> list:
    """The import statements of a block of statements, at any depth (functions, classes, if/try/with/...),
    without visiting expressions: most of a module's nodes, and most of the time a full ast.walk takes."""
    import ast

    found = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, field, None)
            if block:
                found += _import_statements(block)
    return found


@functools.cache
def _imports(path: Path) -> frozenset[Path]:
    """The package's modules that ``path`` imports (relative or absolute, anywhere in the file), and the data
    files beside it that it names in a string (figures/paper.py: "paper_networks.csv")."""
    import ast

    here = list(path.relative_to(PACKAGE_DIR).parent.parts)
    text = path.read_text()
    found = {f for f in (path.parent / m[1] for m in DATA_FILE.finditer(text)) if f.is_file()}
    for node in _import_statements(ast.parse(text).body):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)] + ([node.module] if node.module else [])
            names = [".".join(base)] + [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transferable"):
            base = node.module.split(".")[1:]
            names = [".".join(base)] + [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("transferable.")]
        for name in filter(None, names):
            stem = PACKAGE_DIR / name.replace(".", "/")
            found.update(c for c in (stem.with_name(stem.name + ".py"), stem / "__init__.py") if c.is_file())
    return frozenset(found)


@functools.cache
def stage_code(stage: str) -> tuple[str, ...]:
    """The files of ``stage``, relative to the package: computed on first use (a training job reads only its
    own stage's sources; each module is parsed once per process)."""
    seen, todo = set(), [PACKAGE_DIR / e for e in STAGE_ENTRIES[stage]]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += _imports(p) if p.suffix == ".py" else []
    rel = {p.relative_to(PACKAGE_DIR).as_posix() for p in seen}
    return tuple(sorted(r for r in rel if r not in RESULT_NEUTRAL_CODE and not r.endswith("__init__.py")))


# train settings that decide when a run is saved, not what it computes: changing them reruns no net
# (the rule's params) and keeps an in-progress checkpoint resumable (its identity)
RESULT_NEUTRAL_TRAIN = ("checkpoint_every", "checkpoint_minutes")


def result_train(train: dict) -> dict:
    """The ``train`` section without the settings that cannot change a result."""
    return {k: v for k, v in train.items() if k not in RESULT_NEUTRAL_TRAIN}


def stage_files(stage: str, package_dir: str | os.PathLike | None = None) -> list[str]:
    base = Path(package_dir) if package_dir else PACKAGE_DIR
    return [str(base / f) for f in stage_code(stage)]


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
    for rel, path in zip(stage_code(stage), stage_files(stage)):
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
