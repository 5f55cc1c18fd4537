"""Published upstream checkpoints: readers, name mapping, adaptation, inspection.

Formats (docs/checkpoints.md):

* ViT ``.npz`` (google-research/vision_transformer, original and AugReg releases): one
  flat archive, names such as ``Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel``
  (pre-Linen numbering) or ``.../MlpBlock_0/...`` (Linen-era numbering) — ``npz``.
* V-MoE / E³ sharded checkpoints (google-research/vmoe): ``<prefix>.index`` (msgpack:
  version, shard count, a tree of per-array index entries) plus
  ``<prefix>.data-nnnnn-of-NNNNN`` shards holding array chunks — ``vmoe_sharded``.

Modules: ``names`` maps either naming onto e3lib's parameter tree; ``source`` detects the
format, identifies and reads a checkpoint; ``adapt`` plans (shapes only) and applies the
conversion of ``e3lib.models.convert`` with complete leaf accounting; ``catalog`` names the
published checkpoints (overridable paths); ``identity`` pins a run config's checkpoint
(path and checksum); ``load`` is the fine-tune stage's hook; ``inspect`` is
``e3 checkpoint inspect``. Paths may be local or any fsspec URL (``gs://`` needs gcsfs).
Importing ``catalog``, ``identity`` or ``source`` does not import JAX (sweep expansion uses
them when Snakemake parses the workflow).
"""
