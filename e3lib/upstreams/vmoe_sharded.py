"""Reader of the V-MoE / E³ sharded checkpoint format (google-research/vmoe releases).

Files: ``<prefix>.index`` and ``<prefix>.data-nnnnn-of-NNNNN`` (5-digit shard number and
count). Both are msgpack documents, decoded here with ``flax.serialization.msgpack_restore``
(which decodes numpy arrays) plus the format's own extension types:

* index: ``{"version": "20220622" (absent in older, unversioned checkpoints),
  "shard_count": n, "index": tree}``; each leaf of the tree is an index entry (ext 8)
  ``(global shape (ext 4: shape, dtype, weak_type), [chunk slices (ext 6)], [shard of
  each chunk])``; a chunk slice is one ``(start, stop, step)`` (ext 5) per axis.
* data shard: ``{"__msgpack_array_chunk_a87ca2__": True, "<a>": [[[flat pieces], slice],
  ...]}`` where ``a`` is the array's position in the index's leaves (sorted-key order,
  as ``jax.tree_util`` flattens a dict) and the pieces, concatenated, are the chunk.

Arrays may be split into several chunks spread over several shards. ``read`` streams
shard by shard (one shard's bytes in memory at a time), fills each array's chunks and,
when an array is complete, hands it to an optional ``place(name, array)`` callback (e.g.
a device put with that leaf's sharding) and drops the host copy. For unversioned indexes
the array order is the same sorted-key order; it is checked against every chunk's shape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import msgpack
import numpy as np

VERSION_V1 = "20220622"
CHUNKS_KEY = "__msgpack_array_chunk_a87ca2__"
EXT_SHAPED_ARRAY, EXT_SLICE, EXT_SLICE_ND, EXT_INDEX_INFO = 4, 5, 6, 8
Place = Callable[[str, np.ndarray], Any]
Box = tuple[tuple[int, int], ...]  # (start, stop) per axis


class ShardedFormatError(ValueError):
    """A file that does not follow the sharded checkpoint layout."""


@dataclass(frozen=True)
class Entry:
    """One array of the index: global shape/dtype, its chunks and their shards."""

    shape: tuple[int, ...]
    dtype: str
    boxes: tuple[Box, ...]
    shards: tuple[int, ...]


@dataclass(frozen=True)
class Index:
    prefix: str
    version: str | None  # "20220622" or None (unversioned)
    shard_count: int
    entries: dict[str, Entry]  # '/'-joined name -> entry, in array order
    sha256: str  # of the index file's bytes

    def shard_path(self, shard: int) -> str:
        return f"{self.prefix}.data-{shard:05d}-of-{self.shard_count:05d}"


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=True)


def _ext(value: Any, code: int, what: str) -> bytes:
    if not isinstance(value, msgpack.ExtType) or value.code != code:
        raise ShardedFormatError(f"expected {what} (msgpack ext {code}), got {value!r:.80}")
    return value.data


def _slice_nd(data: bytes) -> Box:
    box = []
    for part in _unpack(data):
        start, stop, step = _unpack(part)
        if step not in (None, 1):
            raise ShardedFormatError(f"chunk slice with step {step} is not supported")
        box.append((int(start), int(stop)))
    return tuple(box)


def _entry(value: Any, name: str) -> Entry:
    shaped, slices, shards = _unpack(_ext(value, EXT_INDEX_INFO, f"index entry of {name}"))
    shape, dtype, _weak, *_ = _unpack(shaped)
    dtype = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
    boxes = tuple(_slice_nd(s) for s in slices)
    if len(boxes) != len(shards):
        raise ShardedFormatError(f"{name}: {len(boxes)} chunks but {len(shards)} shard ids")
    return Entry(tuple(int(d) for d in shape), dtype, boxes, tuple(int(s) for s in shards))


def _flatten(tree: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaves in sorted-key order (the order ``jax.tree_util`` flattens nested dicts)."""
    out = []
    for key in sorted(tree):
        name = f"{prefix}{key}"
        value = tree[key]
        if isinstance(value, Mapping):
            out += _flatten(value, name + "/")
        else:
            out.append((name, value))
    return out


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"sharded checkpoint file {path} does not exist") from None


def read_index(prefix: str) -> Index:
    """Parse ``<prefix>.index`` (both index versions)."""
    from flax import serialization

    raw = _read_bytes(prefix + ".index")
    doc = serialization.msgpack_restore(raw)
    if not isinstance(doc, Mapping) or "index" not in doc or "shard_count" not in doc:
        raise ShardedFormatError(
            f"{prefix}.index: expected keys 'index' and 'shard_count', "
            f"got {sorted(doc) if isinstance(doc, Mapping) else type(doc)}"
        )
    version = doc.get("version")
    if version not in (None, VERSION_V1):
        raise ShardedFormatError(
            f"{prefix}.index: version {version!r}; supported: {VERSION_V1!r} and unversioned"
        )
    entries = {name: _entry(v, name) for name, v in _flatten(doc["index"])}
    for name, e in entries.items():
        bad = [s for s in e.shards if not 0 <= s < doc["shard_count"]]
        if bad:
            raise ShardedFormatError(
                f"{prefix}.index: {name} names shards {bad}, but the "
                f"checkpoint has {doc['shard_count']}"
            )
    return Index(prefix, version, int(doc["shard_count"]), entries, hashlib.sha256(raw).hexdigest())


def listing(prefix: str) -> dict[str, tuple[tuple[int, ...], str]]:
    return {n: (e.shape, e.dtype) for n, e in read_index(prefix).entries.items()}


def read(
    prefix: str,
    names: Iterable[str] | None = None,
    place: Place | None = None,
    index: Index | None = None,
) -> dict[str, Any]:
    """name -> array (or ``place(name, array)``), streaming one shard at a time."""
    from flax import serialization

    index = index or read_index(prefix)
    order = list(index.entries)
    wanted = set(order if names is None else names)
    missing = sorted(wanted - set(order))
    if missing:
        raise KeyError(f"{prefix}.index: no arrays named {missing[:5]}")
    pending: dict[str, set[Box]] = {n: set(index.entries[n].boxes) for n in wanted}
    buffers: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {}
    shards = sorted({s for n in wanted for s in index.entries[n].shards})
    for shard in shards:
        doc = serialization.msgpack_restore(_read_bytes(index.shard_path(shard)))
        if not isinstance(doc, Mapping) or not doc.get(CHUNKS_KEY):
            raise ShardedFormatError(f"{index.shard_path(shard)}: not an array-chunks shard")
        for key, chunks in doc.items():
            if key == CHUNKS_KEY:
                continue
            position = int(key)
            if not 0 <= position < len(order):
                raise ShardedFormatError(
                    f"{index.shard_path(shard)}: array {position} is not "
                    f"in the index ({len(order)} arrays)"
                )
            name = order[position]
            if name not in wanted:
                continue
            entry = index.entries[name]
            for pieces, slice_value in chunks:
                box = _slice_nd(_ext(slice_value, EXT_SLICE_ND, f"chunk slice of {name}"))
                _fill(buffers, name, entry, box, pieces, index.shard_path(shard))
                pending[name].discard(box)
            if not pending[name] and name in buffers:
                array = buffers.pop(name)
                out[name] = place(name, array) if place is not None else array
        del doc
    incomplete = sorted(n for n in wanted if n not in out)
    if incomplete:
        raise ShardedFormatError(
            f"{prefix}: chunks missing from the data shards for {incomplete[:5]}"
        )
    return {n: out[n] for n in order if n in out}


def _fill(buffers: dict, name: str, entry: Entry, box: Box, pieces, where: str) -> None:
    if box not in entry.boxes:
        raise ShardedFormatError(
            f"{where}: chunk {box} of {name} is not in the index (chunks {entry.boxes[:4]})"
        )
    chunk_shape = tuple(stop - start for start, stop in box)
    flat = np.concatenate([np.asarray(p).reshape(-1) for p in pieces])
    if flat.size != int(np.prod(chunk_shape)) or np.dtype(flat.dtype).name != entry.dtype:
        raise ShardedFormatError(
            f"{where}: chunk {box} of {name} holds {flat.size} "
            f"{flat.dtype} values, index says {chunk_shape} {entry.dtype} "
            f"(an unversioned index whose array order differs?)"
        )
    if name not in buffers:
        buffers[name] = np.empty(entry.shape, dtype=flat.dtype)
    buffers[name][tuple(slice(a, b) for a, b in box)] = flat.reshape(chunk_shape)
