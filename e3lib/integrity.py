"""Checksums of result files, recorded when they are written and checked before they are used.

A finished entry's ``done.json`` lists its output files with their size and SHA-256
(``record``). ``check`` compares them with the files on disk: a fast check (existence and
size, done for every entry when the workflow starts) or a deep one (SHA-256, done by the
aggregate step before it reads a file). A damaged entry is set aside (``set_aside``: its
``done.json`` is renamed), so a plain rerun of the workflow recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(root: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file under ``root``, keyed by its path relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): sha256(p)
        for p in sorted(q for q in root.rglob("*") if q.is_file())
    }


def compare_digests(expected: dict[str, str], actual: dict[str, str]) -> str | None:
    """None if equal, else a short description of the first differences."""
    problems = [f"{f}: missing" for f in sorted(set(expected) - set(actual))]
    problems += [
        f"{f}: checksum differs"
        for f in sorted(expected)
        if f in actual and actual[f] != expected[f]
    ]
    problems += [f"{f}: unexpected file" for f in sorted(set(actual) - set(expected))]
    if not problems:
        return None
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def record(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of ``paths`` (relative to ``root``)."""
    root = Path(root)
    return {
        Path(p).resolve().relative_to(root.resolve()).as_posix(): {
            "size": os.path.getsize(p),
            "sha256": sha256(p),
        }
        for p in paths
    }


def check(done_path: str | os.PathLike, deep: bool = False) -> str | None:
    """None if ``done_path`` is readable and every file it records is intact, else why not.

    Files are relative to the directory of ``done_path``. ``deep`` also compares SHA-256.
    """
    done_path = Path(done_path)
    try:
        done = json.loads(done_path.read_text())
    except FileNotFoundError:
        return f"{done_path}: missing"
    except (OSError, ValueError) as e:
        return f"{done_path}: unreadable ({e})"
    if not isinstance(done, dict) or "status" not in done:
        return f"{done_path}: no status"
    for name, want in (done.get("files") or {}).items():
        path = done_path.parent / name
        try:
            size = os.path.getsize(path)
        except OSError:
            return f"{path}: missing (recorded in {done_path.name})"
        if size != want.get("size"):
            return f"{path}: {size} bytes, {want.get('size')} recorded"
        if deep and sha256(path) != want.get("sha256"):
            return f"{path}: checksum differs from the one recorded at write time"
    return None


def set_aside(done_path: str | os.PathLike, reason: str) -> Path:
    """Rename a damaged entry's ``done.json`` so that the workflow recomputes the entry."""
    done_path = Path(done_path)
    dest = done_path.with_name(f"{done_path.name}.damaged-{int(time.time())}")
    os.replace(done_path, dest)
    with open(dest, "a") as f:
        f.write(f"\n# set aside: {reason}\n")
    return dest


def screen(
    done_paths: Iterable[str | os.PathLike], dry_run: bool = False, deep: bool = False
) -> list[str]:
    """Check every existing done file (sizes; with ``deep`` also SHA-256); set the damaged
    ones aside so that a rerun recomputes them (with ``dry_run`` only say so). One message
    per damaged entry."""
    messages = []
    for done in done_paths:
        done = str(done)
        if not os.path.exists(done):
            continue
        problem = check(done, deep=deep)
        if problem is None:
            continue
        if dry_run:
            messages.append(f"e3: would recompute the entry of {done}: {problem}")
            continue
        set_aside(done, problem)
        messages.append(f"e3: recomputing the entry of {done}: {problem}")
    return messages


def screen_sweep(
    entry_done: Iterable[str | os.PathLike],
    dataset_done: str | os.PathLike,
    dependents: Iterable[str | os.PathLike] = (),
    dry_run: bool = False,
    deep: bool = False,
) -> list[str]:
    """``screen`` one sweep's entries and its dataset's done file. If the dataset is damaged,
    or an entry it was built from has no good done file any more (deleted, or set aside
    just now), the dataset's done file is set aside and its ``dependents`` (the dataset itself
    and the report pages built from it) are renamed aside as well: a workflow engine that accepts a
    missing intermediate while its consumers are up to date (Snakemake) would otherwise
    neither recompute the entry nor rebuild the dataset and the report."""
    entry_done = [str(d) for d in entry_done]
    damaged = os.path.exists(dataset_done) and check(dataset_done, deep=deep)
    messages = screen(entry_done, dry_run=dry_run, deep=deep)
    if not os.path.exists(dataset_done):
        return messages
    gone = [d for d in entry_done if not os.path.exists(d) or (dry_run and check(d, deep=deep))]
    if not gone and not damaged:
        return messages
    more = f" (+{len(gone) - 1} more)" if len(gone) > 1 else ""
    reason = damaged or f"built from {gone[0]}{more}, which is missing or damaged"
    where = Path(dataset_done).parent
    if dry_run:
        return [*messages, f"e3: would rebuild {where} and its report: {reason}"]
    set_aside(dataset_done, reason)
    stamp = int(time.time())
    for path in map(Path, dependents):
        if path.exists():
            os.replace(path, path.with_name(f"{path.name}.stale-{stamp}"))
    return [*messages, f"e3: rebuilding {where} and its report: {reason}"]
