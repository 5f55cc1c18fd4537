"""Reader of ViT checkpoints in the published ``.npz`` layout (vision_transformer releases).

An ``.npz`` is a zip archive with one ``<name>.npy`` member per parameter; names are the
flat '/'-joined paths of the Flax tree (``Transformer/encoderblock_0/MlpBlock_3/...``).
``listing`` reads only the zip directory and each member's ``.npy`` header (names, shapes,
dtypes: the dry run of ``e3 checkpoint inspect --for``); ``read`` loads arrays one at a
time and hands each to an optional ``place(name, array)`` callback (e.g. a device put with
the leaf's sharding), so only one host array is alive at a time when ``place`` keeps
none. ``digest`` hashes the zip directory, which records every member's CRC-32 and size:
a content checksum that reads no array data.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Iterable
from typing import Any

import fsspec
import numpy as np

Place = Callable[[str, np.ndarray], Any]
SUFFIX = ".npy"


def _members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [i for i in zf.infolist() if i.filename.endswith(SUFFIX)]


def listing(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype name) of every array, from the ``.npy`` headers only."""
    out = {}
    with fsspec.open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        for info in _members(zf):
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            out[info.filename[: -len(SUFFIX)]] = (tuple(shape), np.dtype(dtype).name)
    return out


def digest(path: str) -> str:
    """sha256 over (name, CRC-32, size) of every member: changes with any array's bytes."""
    h = hashlib.sha256()
    with fsspec.open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        for info in sorted(_members(zf), key=lambda i: i.filename):
            h.update(f"{info.filename}\0{info.CRC:08x}\0{info.file_size}\n".encode())
    return h.hexdigest()


def read(
    path: str, names: Iterable[str] | None = None, place: Place | None = None
) -> dict[str, Any]:
    """name -> array (or ``place(name, array)``) for ``names`` (default: all)."""
    out = {}
    with fsspec.open(path, "rb") as f:
        with np.load(f, allow_pickle=False) as npz:
            wanted = list(npz.files) if names is None else list(names)
            missing = sorted(set(wanted) - set(npz.files))
            if missing:
                raise KeyError(f"{path}: no arrays named {missing[:5]}")
            for name in wanted:
                array = npz[name]
                out[name] = place(name, array) if place is not None else array
    return out
