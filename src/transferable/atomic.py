"""Atomic writes, the one way every output of the pipeline is written: to a temporary name beside the
target, then renamed over it, so that a killed job never leaves a file a later run accepts as finished."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write; on success it replaces ``path``, on any failure it
    is removed. An OSError names the target (``cannot write results/x.csv: No space left on device``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)
    return Path(path)


def write_csv(df, path: str | os.PathLike) -> Path:
    """A pandas frame as CSV (no index, ``\\n`` line ends)."""
    return write_text(path, df.to_csv(index=False, lineterminator="\n"))


def torch_save(obj, path: str | os.PathLike) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


# Columns that hold names (splits, nets, halves, families, classes, files, claims): text whatever they look
# like. pandas would read a split called 007 back as the number 7, a family called 1e5 as 100000.0, a class
# folder called true as True.
TEXT_COLUMNS = frozenset({
    "split", "run", "net", "net_a", "net_b", "kind", "treatment", "split_kind", "source_half", "target_half",
    "target_family", "family", "half", "wnid", "words", "ancestors", "subset", "source", "path", "member",
    "claim", "layers", "unit", "verdict", "reason", "device", "history", "test", "text", "scope", "layer",
})


def read_csv(path: str | os.PathLike, **kw):
    """A table this pipeline wrote, read back with every name column as text (``TEXT_COLUMNS``)."""
    import pandas as pd

    columns = pd.read_csv(path, nrows=0).columns
    dtype = {c: str for c in columns if c in TEXT_COLUMNS}
    dtype.update(kw.pop("dtype", None) or {})
    return pd.read_csv(path, dtype=dtype, **kw)
