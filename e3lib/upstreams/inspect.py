"""``e3 checkpoint inspect PATH [--for CONFIG]``: what a published checkpoint holds.

Prints the format, index version and shard count, the content checksum (to pin as
``upstream.checkpoint_sha256``), every stored leaf with shape and dtype, and the model it
implies (hidden size, patch, blocks, heads, MLP width, E, MoE blocks, router members M, the
matching ``model.size``). With ``--for CONFIG`` (a run config, JSON or YAML overrides) it
prints the full mapping onto that run's parameter tree, from shapes only: a dry run that
fails, naming the leaves, exactly where ``e3 run`` would.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from e3lib.errors import ConfigError

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def infer_model(shapes: Mapping[str, tuple]) -> dict[str, Any]:
    """Architecture facts read off e3lib-named shapes (values None when absent)."""

    def shape(name):
        return tuple(shapes[name]) if name in shapes else None

    emb = shape("embedding/kernel")
    blocks = sorted(
        {int(m.group(1)) for n in shapes if (m := re.match(r"Encoder/encoderblock_(\d+)/", n))}
    )
    moe = sorted(
        {int(m.group(1)) for n in shapes if (m := re.match(r"Encoder/encoderblock_(\d+)/Moe/", n))}
    )
    info: dict[str, Any] = {
        "patch": emb[0] if emb else None,
        "hidden": emb[-1] if emb else None,
        "layers": len(blocks),
        "moe_layers": moe,
        "num_experts": None,
        "members": None,
        "heads": None,
        "mlp": None,
        "representation": "pre_logits/kernel" in shapes,
        "tokens": (shape("Encoder/posembed_input") or (None, None))[1],
    }
    q = shape("Encoder/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    info["heads"] = q[1] if q else None
    for n in shapes:
        if n.endswith("/Dense_0/kernel") and "encoderblock_" in n:
            info["mlp"] = shape(n)[-1]
        if "/Moe/Mlp/Dense_0/kernel" in n:
            info["num_experts"] = shape(n)[0]
        if n.endswith("/Moe/Router/kernel"):
            router = shape(n)
            info["members"] = router[1] if len(router) == 3 else 1
    info["size"] = _size_name(info)
    info["placement"] = _placement(info)
    return info


def _size_name(info: Mapping[str, Any]):
    from e3lib.models.sizes import MODEL_SIZES

    for name, spec in MODEL_SIZES.items():
        if (spec["patch"], spec["hidden"], spec["layers"], spec["heads"], spec["mlp"]) == (
            info["patch"],
            info["hidden"],
            info["layers"],
            info["heads"],
            info["mlp"],
        ):
            return name
    return None


def _placement(info: Mapping[str, Any]):
    """(model.moe_placement, model.moe_n) reproducing the MoE blocks, or None."""
    from e3lib.models.sizes import moe_layers

    if not info["moe_layers"]:
        return None
    for placement in ("last", "every"):
        for n in range(1, info["layers"] + 1):
            if list(moe_layers(info["layers"], placement, n)) == info["moe_layers"]:
                return placement, n
    return None


def _read_run_config(path: str) -> RunConfig:
    import json

    import yaml

    from e3lib.config import resolve

    with open(path) as f:
        raw = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    return resolve(raw or {}, source=path)


def inspect_lines(
    path: str, for_config: str | None = None, num_classes: int = 10, leaves: bool = True
) -> list[str]:
    from e3lib.upstreams.adapt import plan_adaptation, target_shapes
    from e3lib.upstreams.catalog import checkpoint_path
    from e3lib.upstreams.source import open_published

    path = checkpoint_path(path)  # a catalogue name is its published URL
    ckpt = open_published(path)
    out = [f"checkpoint   {path}", f"format       {ckpt.format}"]
    if ckpt.format == "vmoe_sharded":
        out.append(
            f"index        version {ckpt.version or 'unversioned'}, {ckpt.shard_count} data shards"
        )
    out.append(f"sha256       {ckpt.sha256}  (pin with upstream.checkpoint_sha256)")
    info = infer_model(ckpt.shapes)
    out.append("model        " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if ckpt.set_aside:
        out.append(
            f"set aside    {len(ckpt.set_aside)} non-parameter leaves (e.g. {ckpt.set_aside[0]})"
        )
    if leaves:
        out.append(f"leaves       {len(ckpt.stored)}")
        out += [f"  {n} {tuple(s)} {d}" for n, (s, d) in sorted(ckpt.stored.items())]
    if for_config:
        cfg = _read_run_config(for_config)
        plan = plan_adaptation(
            ckpt.shapes,
            target_shapes(cfg, num_classes),
            cfg,
            ckpt.params,
            where=f"checkpoint {path}",
        )
        out.append(
            f"mapping onto {for_config} (method {cfg.method}, size "
            f"{cfg.model.size}, {num_classes} classes):"
        )
        out += ["  " + line for line in plan.lines(ckpt.params)]
    return out


def cli_checkpoint(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="e3 checkpoint",
        description="Published upstream checkpoints (ViT .npz, V-MoE sharded).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="format, tree, inferred model; --for: dry-run mapping")
    ins.add_argument(
        "path",
        help=".npz file or sharded prefix (local or gs://), or a "
        "published checkpoint's name (docs/checkpoints.md)",
    )
    ins.add_argument(
        "--for",
        dest="for_config",
        default=None,
        help="run config (JSON or YAML): print the mapping onto its model",
    )
    ins.add_argument(
        "--num-classes",
        type=int,
        default=10,
        help="classes of the run's dataset (head shape) for --for",
    )
    ins.add_argument("--no-leaves", action="store_true", help="omit the leaf listing")
    a = p.parse_args(argv)
    try:
        lines = inspect_lines(a.path, a.for_config, a.num_classes, not a.no_leaves)
    except (ConfigError, OSError, ValueError) as err:
        print(f"e3 checkpoint inspect: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
