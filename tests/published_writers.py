"""Writers of small checkpoints in the published layouts, for the upstream-reader tests.

They write what the reference releases contain, from first principles of each format:

* ViT ``.npz``: ``np.savez`` of flat '/'-joined names, pre-Linen numbering
  (``LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3``) or Linen-era
  numbering (``LayerNorm_0, LayerNorm_1, MultiHeadDotProductAttention_0, MlpBlock_0``).
* V-MoE sharded: ``<prefix>.index`` = msgpack {version?, shard_count, index: tree of ext-8
  entries (ext-4 global shape, [ext-6 chunk slices of ext-5 (start, stop, step)], [shard])},
  ``<prefix>.data-nnnnn-of-NNNNN`` = msgpack {magic: True, "<array position>": [[[flat
  pieces (ext-1 ndarrays)], ext-6 slice], ...]}; arrays split along axis 0 into chunks that
  are spread round-robin over the shards.
"""

from __future__ import annotations

import re

import msgpack
import numpy as np

MAGIC = "__msgpack_array_chunk_a87ca2__"


# ---------------------------------------------------------------------------- e3lib -> names


def e3_to_vit(name: str, era: str = "pre_linen") -> str:
    """e3lib ViT leaf name -> the name a vision_transformer .npz stores."""
    if name == "Encoder/posembed_input":
        return "Transformer/posembed_input/pos_embedding"
    ln1, mha, mlp = (
        ("LayerNorm_2", "MultiHeadDotProductAttention_1", "MlpBlock_3")
        if era == "pre_linen"
        else ("LayerNorm_1", "MultiHeadDotProductAttention_0", "MlpBlock_0")
    )
    name = re.sub(r"/Mlp/MlpBlock/", f"/{mlp}/", name)
    name = name.replace("/MultiHeadDotProductAttention_0/", f"/{mha}/")
    name = name.replace("/LayerNorm_1/", f"/{ln1}/")
    return re.sub(r"^Encoder/", "Transformer/", name)


def e3_to_vmoe(name: str) -> str:
    """e3lib V-MoE leaf name -> the name a vmoe checkpoint stores (router kept 2-D)."""
    if name == "Encoder/posembed_input":
        return "Encoder/posembed_input/pos_embedding"
    name = name.replace("/MultiHeadDotProductAttention_0/", "/SelfAttention/")
    name = name.replace("/Mlp/MlpBlock/", "/Mlp/")
    return name.replace("/Moe/Router/kernel", "/Moe/Router/dense/kernel")


def write_vit_npz(path, flat_e3: dict, era: str = "pre_linen") -> dict:
    arrays = {e3_to_vit(k, era): np.asarray(v) for k, v in flat_e3.items()}
    np.savez(path, **arrays)
    return arrays


# ---------------------------------------------------------------------------- sharded


def _nd_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    return msgpack.packb([list(a.shape), a.dtype.name, a.tobytes()], use_bin_type=True)


def _default(obj):
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(1, _nd_bytes(obj))
    raise TypeError(type(obj))


def _slice(start, stop) -> bytes:
    return msgpack.packb([start, stop, None], use_bin_type=True)


def _slice_nd(box) -> msgpack.ExtType:
    return msgpack.ExtType(6, msgpack.packb([_slice(a, b) for a, b in box], use_bin_type=True))


def _index_info(shape, dtype, boxes, shards) -> msgpack.ExtType:
    shaped = msgpack.packb([list(shape), dtype, False, {}], use_bin_type=True)
    slices = [_slice_nd(b).data for b in boxes]
    return msgpack.ExtType(8, msgpack.packb([shaped, slices, list(shards)], use_bin_type=True))


def _nest(flat: dict) -> dict:
    out: dict = {}
    for name, v in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def write_vmoe_sharded(
    prefix,
    flat: dict,
    shard_count: int = 3,
    rows_per_chunk: int = 2,
    version: str | None = "20220622",
    piece_size: int | None = None,
) -> dict:
    """Write ``flat`` (stored names -> arrays) as a sharded checkpoint; returns the layout
    {name: [(box, shard), ...]}. Arrays of rank ≥ 1 with more than ``rows_per_chunk`` rows
    are split along axis 0; ``piece_size`` splits each chunk's flat data into pieces."""
    names = sorted(flat)  # array position = sorted-key (tree-flatten) order
    layout, entries = {}, {}
    shard_docs = [{MAGIC: True} for _ in range(shard_count)]
    turn = 0
    for position, name in enumerate(names):
        a = np.asarray(flat[name])
        rows = a.shape[0] if a.ndim else 1
        step = rows_per_chunk if a.ndim else 1
        boxes = []
        for start in range(0, rows, step):
            box = [(start, min(start + step, rows))] + [(0, d) for d in a.shape[1:]]
            boxes.append(tuple(box) if a.ndim else ())
        chunks = []
        for box in boxes:
            shard = turn % shard_count
            turn += 1
            data = a[tuple(slice(s, e) for s, e in box)].reshape(-1)
            size = piece_size or max(1, data.size)
            pieces = [data[i : i + size] for i in range(0, max(data.size, 1), size)]
            shard_docs[shard].setdefault(str(position), []).append([pieces, _slice_nd(box)])
            chunks.append((box, shard))
        layout[name] = chunks
        entries[name] = _index_info(
            a.shape, a.dtype.name, [b for b, _ in chunks], [s for _, s in chunks]
        )
    index = {"shard_count": shard_count, "index": _nest(entries)}
    if version is not None:
        index["version"] = version
    with open(f"{prefix}.index", "wb") as f:
        f.write(msgpack.packb(index, use_bin_type=True))
    for shard, doc in enumerate(shard_docs):
        with open(f"{prefix}.data-{shard:05d}-of-{shard_count:05d}", "wb") as f:
            f.write(msgpack.packb(doc, default=_default, use_bin_type=True))
    return layout
