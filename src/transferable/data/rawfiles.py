"""A content fingerprint of an image-folder or extracted-tree dataset, so that a rerun sees its changes.

The official tars are three files the workflow declares as inputs. An extracted tree or an image folder
is thousands to millions of files that no rule could declare one by one, so the workflow declares one
small file instead, whose NAME is the digest of every file ingest reads (its path, size and SHA-256 of its
content): ``results/ingest/raw/<digest>.sha256``. Planning the workflow only computes the digest and asks
for that file; a job (rule ``raw_identity``) writes it, after checking that the data still give the same
digest. Adding, removing or replacing an image changes the name, so ingest and exactly what follows rerun;
touching a file without changing it does not. Nothing a job consumes is written while planning (a dry run,
``--report``, a run turned away by the lock), so a plan made while ingest reads cannot hide a change from
the next run. Each folder's content digest is cached with a digest of its files' names, sizes and mtimes
(``.raw_files.cache.json``, which no job reads), so a later plan only stats the files, and reads again only
the folders where one of those changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import atomic
from .ilsvrc import DEVKIT_DIR, IMAGE_EXTS, detect_format, walk_subset

CACHE_NAME = ".raw_files.cache.json"
_IMAGE_SUFFIXES = {e.lstrip(".") for e in IMAGE_EXTS}


def folders(root: str | os.PathLike, fmt: str = "auto") -> list[tuple[str, bool]] | None:
    """(folder relative to root, images only?) of every folder whose files ingest reads in a ``tree`` or
    ``folder`` layout; None for the official tars (declared as inputs themselves) or an unreadable root."""
    root = Path(root)
    try:
        fmt = detect_format(root) if fmt == "auto" else fmt
    except Exception:  # noqa: BLE001 - ingest itself reports a root it cannot read, naming it
        return None
    if fmt not in ("tree", "folder"):
        return None
    out = []
    for sub in ("train", "val"):  # exactly the folders ingest reads (ilsvrc.walk_subset: links followed)
        if (root / sub).is_dir():
            walk = walk_subset(root / sub, flat_ok=sub == "val" and fmt == "tree")
            out += [(os.path.relpath(d, root), True) for d in walk.classes]
            if walk.flat:
                out.append((sub, True))
    for dirpath, _, _ in os.walk(root / DEVKIT_DIR):
        out.append((os.path.relpath(dirpath, root), False))
    return sorted(out)


def _stat_listing(folder: Path, images_only: bool) -> tuple[list[str], str]:
    """(file names, digest of their names, sizes and mtimes) of the files of one folder."""
    lines, names = [], []
    with os.scandir(folder) as it:
        for e in it:
            if not e.is_file() or (images_only and e.name.rpartition(".")[2].lower() not in _IMAGE_SUFFIXES):
                continue
            st = e.stat()
            names.append(e.name)
            lines.append(f"{e.name}\t{st.st_size}\t{st.st_mtime_ns}")
    lines.sort()
    return sorted(names), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _content_digest(folder: Path, names: list[str]) -> tuple[str, int, int]:
    """(digest of the names and contents, files, bytes) of one folder's files."""
    h, total = hashlib.sha256(), 0
    for name in names:
        data = (folder / name).read_bytes()
        total += len(data)
        h.update(f"{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest(), len(names), total


def digest(root: str | os.PathLike, cache_path: str | os.PathLike, fmt: str = "auto", log=None,
           workers: int | None = None) -> tuple[str, str] | None:
    """(hex digest, text) of the dataset at ``root``; None for the official tars (declared as inputs
    themselves). Per folder, the files' names, sizes and mtimes are compared with the cache at
    ``cache_path``; only a folder where one of them changed is read and hashed again (so a touched file
    costs one folder's reading, and changes nothing). ``log`` gets progress."""
    root, cache_path = Path(root), Path(cache_path)
    todo = folders(root, fmt)
    if todo is None:
        return None
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}  # a damaged cache: hash again
    t0, shown, hashed = time.time(), time.time(), 0

    def one(item):
        rel, images_only = item
        names, stat_digest = _stat_listing(root / rel, images_only)
        old = cache.get(rel)
        if old and old[0] == stat_digest:
            return rel, old, False
        return rel, [stat_digest, *_content_digest(root / rel, names)], True

    entries = {}
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for i, (rel, entry, fresh) in enumerate(pool.map(one, todo)):
            entries[rel] = entry
            hashed += fresh
            if log and fresh and time.time() - shown > 10:
                shown = time.time()
                log(f"fingerprinting {root}: {i + 1}/{len(todo)} folders ({hashed} read), "
                    f"{(i + 1) / (shown - t0):.0f} folders/s, ETA {(len(todo) - i - 1) * (shown - t0) / (i + 1):.0f} s")
    if entries != cache:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache_path, json.dumps(entries))
    total = hashlib.sha256()
    counts: dict[str, list[int]] = {}
    for rel, (_, folder_digest, n, size) in sorted(entries.items()):
        total.update(f"{rel}\t{folder_digest}\n".encode())
        c = counts.setdefault(rel.split(os.sep, 1)[0], [0, 0])
        c[0] += n
        c[1] += size
    text = f"sha256 {total.hexdigest()}  {root}\n" + "".join(
        f"{sub}: {n} files, {b} bytes\n" for sub, (n, b) in sorted(counts.items()))
    return total.hexdigest(), text


def fingerprint(root: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", log=None,
                workers: int | None = None) -> bool | None:
    """Write the dataset's fingerprint (``digest``'s text) to ``out`` if it differs from what is there,
    with the stat cache beside it; return whether it changed (None: the official tars)."""
    out = Path(out)
    got = digest(root, out.with_name(CACHE_NAME), fmt, log, workers)
    if got is None:
        return None
    if out.is_file() and out.read_text() == got[1]:
        return False
    atomic.write_text(out, got[1])
    return True


def write_identity(root: str | os.PathLike, out: str | os.PathLike, expected: str, cache_path: str | os.PathLike,
                   fmt: str = "auto", log=None) -> None:
    """Rule ``raw_identity``: write ``out`` (named by the digest the plan computed) if the data still give
    ``expected``, and remove the other identity files beside it (one data root, one identity)."""
    got = digest(root, cache_path, fmt, log)
    if got is None:
        raise ValueError(f"{root}: not an extracted tree or an image folder: nothing to fingerprint")
    if got[0] != expected:
        raise RuntimeError(f"{root}: its files changed after this run was planned (digest {got[0][:16]}..., "
                           f"planned {expected[:16]}...). Nothing was ingested; run the same command again")
    out = Path(out)
    atomic.write_text(out, got[1])
    for other in out.parent.glob("*.sha256"):
        if other != out:
            other.unlink(missing_ok=True)
