"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

Every result, index, dataset and report page is written through ``atomic_path``: the
content goes to a temporary file in the same directory, is flushed to disk, and is renamed
over the destination. A crash or kill mid-write leaves the destination untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` unless ``path`` already holds exactly that (its mtime is then kept)."""
    try:
        if Path(path).read_text() == text:
            return False
    except FileNotFoundError:
        pass
    write_text(path, text)
    return True
