"""The compile table: per-device memory and cost of train steps compiled by the TPU
compiler for Cloud TPU slices (``e3 plan --grid ... --write-table``), shipped as data
(``fit_table.json`` next to this module) and read at parse time without JAX.

An entry is keyed by the run config's *program key* (``program_key``: the fields that
shape the compiled step, e.g. size, method, experts, image size, global batch, mesh; not
seeds, schedules or loss weights) and a target (a Cloud TPU type such as ``v3-32``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("fit_table.json")
TABLE_FORMAT = 1

# Fields that never change the compiled step's buffers or FLOPs: dropped from the key.
_SCALAR_ONLY = {
    "model": (
        "noise_mult",
        "noise_scaling",
        "aux_weight",
        "eval_capacity_factor",
        "head_bias_init",
        "be_init",
        "be_lr_scale",
        "permute_experts",
    ),
    "finetune": (
        "steps",
        "lr",
        "warmup",
        "schedule",
        "end_lr",
        "momentum",
        "grad_clip",
        "checkpoint_every",
        "log_every",
        "eval_every",
    ),
}
# Rates whose value does not matter to the program, only whether they are zero.
_NONZERO_ONLY = {
    "model": ("dropout", "expert_dropout", "mimo_input_repetition"),
    "finetune": ("mixup",),
}


def program_key(cfg: Mapping[str, Any], num_classes: int = 1000) -> dict[str, Any]:
    """The fields of a resolved run config (as a dict) that shape its compiled train step;
    a missing mesh is "auto" (what ``e3 plan`` compiles)."""
    out: dict[str, Any] = {"method": cfg["method"], "num_classes": num_classes}
    for section in ("model", "finetune"):
        sec = {k: v for k, v in cfg[section].items() if k not in _SCALAR_ONLY[section]}
        for k in _NONZERO_ONLY[section]:
            if k in sec:
                sec[k] = bool(sec[k])
        out[section] = sec
    out["image_size"] = cfg["data"]["image_size"]
    mesh = cfg.get("mesh")
    out["mesh"] = dict(mesh) if isinstance(mesh, Mapping) else (mesh or "auto")
    return out


def key_text(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=list)


def fingerprint(*parts: Any) -> str:
    """Short hash of JSON-able parts (a program key, a target, versions)."""
    text = "\n".join(key_text(p) if isinstance(p, Mapping) else json.dumps(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def load_table(path: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """(key text, target) -> entry of the shipped compile table (empty if absent)."""
    p = Path(path) if path else TABLE_PATH
    if not p.exists():
        return {}
    doc = json.loads(p.read_text())
    if doc.get("format") != TABLE_FORMAT:
        raise ValueError(f"{p}: compile table format {doc.get('format')!r}, need {TABLE_FORMAT}")
    return {(key_text(e["key"]), e["target"]): e for e in doc["entries"]}


def lookup(cfg: Mapping[str, Any], target: str, num_classes: int = 1000) -> dict | None:
    """The compiled entry of ``cfg`` on ``target``, or None."""
    return load_table().get((key_text(program_key(cfg, num_classes)), target))


def anchor(cfg: Mapping[str, Any], target: str, num_classes: int = 1000) -> dict | None:
    """A compiled entry on ``target`` that fits, of the same model size, image size, global
    batch and classes as ``cfg`` and without overrides (the same method first), or None."""
    k = program_key(cfg, num_classes)
    best = None
    for (_, t), e in load_table().items():
        ek = e["key"]
        if t != target or not e.get("compiler_fits") or e.get("set"):
            continue
        same = (ek["model"]["size"], ek["image_size"], ek["finetune"]["batch_size"])
        if same != (k["model"]["size"], k["image_size"], k["finetune"]["batch_size"]):
            continue
        if ek["num_classes"] == num_classes and (best is None or ek["method"] == k["method"]):
            best = e
    return best


@functools.lru_cache(maxsize=256)
def _key_config(text: str):
    from e3lib.config import resolve

    k = json.loads(text)
    model = {f: v for f, v in k["model"].items() if f not in _NONZERO_ONLY["model"]}
    return resolve(
        {
            "method": k["method"],
            "model": model,
            "data": {"image_size": k["image_size"]},
            "finetune": {"batch_size": k["finetune"]["batch_size"]},
        }
    )


def key_config(key: Mapping[str, Any]):
    """A resolved run config with the fields of a program key (the rest default)."""
    return _key_config(key_text(key))


def write_table(entries: list[dict[str, Any]], path: Path | None = None) -> Path:
    """Write the table atomically, entries sorted by (size, method, target)."""
    from e3lib.atomic import write_text

    p = path or TABLE_PATH
    order = lambda e: (e["key"]["model"]["size"], e["key"]["method"], e["target"], key_text(e))
    doc = {"format": TABLE_FORMAT, "entries": sorted(entries, key=order)}
    write_text(p, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    load_table.cache_clear()
    return p
