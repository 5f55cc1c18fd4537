"""One published checkpoint: format detection, identity, listing and reading.

``path`` is a local path or an fsspec URL (``gs://bucket/...`` needs gcsfs). A path ending in
``.npz`` is a ViT archive; otherwise it is a sharded prefix when ``<path>.index`` exists.
Identity (``checkpoint_identity``): the path plus a content checksum — sha256 of the
``.index`` file, or of the ``.npz`` zip directory (which records every member's CRC-32).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from e3lib.upstreams import npz, vmoe_sharded
from e3lib.upstreams.names import parameter_names, to_e3

FORMATS = ("npz", "vmoe_sharded")


def _exists(path: str) -> bool:
    fs, target = fsspec.core.url_to_fs(path)
    return fs.exists(target)


def detect_format(path: str) -> str | None:
    """ "npz", "vmoe_sharded", or None (not a published layout: e.g. an Orbax directory)."""
    path = str(path)
    if path.endswith(".npz"):
        return "npz"
    if path.endswith(".index"):
        return "vmoe_sharded"
    try:
        if _exists(path + ".index"):
            return "vmoe_sharded"
    except (ImportError, ValueError):
        return None
    return None


def is_published(path: str | None) -> bool:
    return bool(path) and detect_format(str(path)) is not None


def _prefix(path: str) -> str:
    return path[: -len(".index")] if path.endswith(".index") else path


@functools.lru_cache(maxsize=64)
def _digest(path: str, fmt: str, stamp: Any) -> str:
    if fmt == "npz":
        return npz.digest(path)
    return vmoe_sharded.read_index(_prefix(path)).sha256


def _stamp(path: str) -> Any:
    """Cache key part that changes when a local file changes (mtime, size)."""
    if "://" in path:
        return None
    target = path if path.endswith(".npz") else _prefix(path) + ".index"
    st = os.stat(target)
    return (st.st_mtime_ns, st.st_size)


def checkpoint_identity(path: str) -> dict:
    """{"path", "format", "sha256"} of a published checkpoint (raises if unreadable)."""
    fmt = detect_format(path)
    if fmt is None:
        raise FileNotFoundError(
            f"{path}: neither an .npz file nor a sharded prefix with {path}.index"
        )
    return {"path": str(path), "format": fmt, "sha256": _digest(str(path), fmt, _stamp(path))}


@dataclass
class PublishedCheckpoint:
    """A published checkpoint's parameters: stored names, e3lib names, shapes, dtypes."""

    path: str
    format: str
    version: str | None  # sharded index version (None: unversioned)
    shard_count: int | None
    sha256: str
    stored: dict[str, tuple[tuple[int, ...], str]]  # every stored name -> (shape, dtype)
    params: dict[str, str]  # e3lib name -> stored name
    set_aside: list[str]  # non-parameter state (optimizer, step)
    _index: Any = None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """e3lib name -> shape."""
        return {e3: tuple(self.stored[s][0]) for e3, s in self.params.items()}

    def read(
        self,
        names: Iterable[str] | None = None,
        place: Callable[[str, np.ndarray], Any] | None = None,
    ) -> dict[str, Any]:
        """e3lib name -> array for ``names`` (e3lib names; default all parameters).

        ``place(e3lib_name, host_array)`` is called once per completed array (e.g. to put
        it on devices with that leaf's sharding); its return value is what is kept.
        """
        wanted = list(self.params) if names is None else list(names)
        stored = [self.params[n] for n in wanted]
        back = {self.params[n]: n for n in wanted}
        cb = None if place is None else (lambda s, a: place(back[s], a))
        if self.format == "npz":
            raw = npz.read(self.path, stored, cb)
        else:
            raw = vmoe_sharded.read(_prefix(self.path), stored, cb, index=self._index)
        return {back[s]: v for s, v in raw.items()}


def open_published(path: str) -> PublishedCheckpoint:
    """Read the directory of a published checkpoint (no array data)."""
    path = str(path)
    fmt = detect_format(path)
    if fmt is None:
        raise FileNotFoundError(
            f"{path}: neither an .npz file nor a sharded prefix with {path}.index"
        )
    version = shard_count = index = None
    if fmt == "npz":
        stored = npz.listing(path)
        sha = _digest(path, fmt, _stamp(path))
    else:
        index = vmoe_sharded.read_index(_prefix(path))
        stored = {n: (e.shape, e.dtype) for n, e in index.entries.items()}
        version, shard_count, sha = index.version, index.shard_count, index.sha256
    params, set_aside = parameter_names(stored)
    e3 = to_e3(params, fmt)
    return PublishedCheckpoint(
        path,
        fmt,
        version,
        shard_count,
        sha,
        stored,
        {e3[p]: s for p, s in params.items()},
        set_aside,
        index,
    )
