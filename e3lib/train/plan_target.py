"""Compile targets of ``e3 plan``: a Cloud TPU type compiled by the TPU compiler (libtpu)
for its abstract topology, or D virtual CPU devices; the compiler's out-of-memory verdict;
a JSON cache of compiled results.

Targets: ``v3-8`` … ``v3-2048``, ``v4-8`` …, ``v5p-8`` …, ``v5litepod-N`` (alias
``v5e-N``): libtpu's ``get_topology_desc`` gives the slice's devices (v3: cores; v4, v5p:
megacore chips; v5e: chips) without a TPU, and ``compile_step`` compiles the real train step
for them ahead of time. ``cpu:D``: XLA:CPU on D virtual host devices (fusion and buffer
assignment differ from the TPU's, so its figures are only estimates).

A step that cannot fit makes the TPU compiler raise RESOURCE_EXHAUSTED (``CompileTimeHbmOom``)
naming the memory it needs: that is the verdict "does not fit", with the amounts parsed.

Cache: ``.cache/e3plan/<fingerprint>.json``, keyed by the program key (``fittable``), the
target and the jax / jaxlib / libtpu versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e3lib.config import as_dict
from e3lib.parallel.fitcheck import CHIP_GIB, GIB, HEADROOM, tpu_devices, tpu_topology
from e3lib.parallel.fittable import fingerprint, program_key

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

CACHE_DIR = Path(os.environ.get("E3_PLAN_CACHE", ".cache/e3plan"))
_TOPOLOGY_OPTIONS = {  # libtpu's abstract topologies: one JAX device per chip on v4 / v5p
    "v4": {"chip_config_name": "megacore"},
    "v5p": {"chip_config_name": "megacore"},
}


def parse_target(target: str) -> tuple[str, str, int]:
    """("tpu", Cloud TPU type, devices) or ("cpu", "cpu", D); ValueError if unknown."""
    if target.startswith("cpu:") and target[4:].isdigit() and int(target[4:]) > 0:
        return "cpu", "cpu", int(target[4:])
    tpu_type = re.sub(r"^v5e-", "v5litepod-", target)
    _, devices = tpu_devices(tpu_type)
    return "tpu", tpu_type, devices


def libtpu_version() -> str | None:
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "libtpu": libtpu_version()}


def tpu_devices_of(tpu_type: str) -> list:
    """The abstract devices of a Cloud TPU slice (libtpu; no TPU needed)."""
    # A compile-only client: no lock on a local TPU is needed, so several may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    chip, devices = tpu_devices(tpu_type)
    options = dict(_TOPOLOGY_OPTIONS.get(chip, {}))
    if devices < 4:  # a v5litepod-1 is one host of one chip
        options["chips_per_host_bounds"] = (devices, 1, 1)
    topo = topologies.get_topology_desc(
        topology_name=tpu_topology(tpu_type), platform="tpu", **options
    )
    if len(topo.devices) != devices:
        raise RuntimeError(f"{tpu_type}: libtpu gave {len(topo.devices)} devices, not {devices}")
    return list(topo.devices)


_AMOUNT = r"([0-9.]+)\s*([KMGT]i?B?|bytes?|B)?"
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(number: str, unit: str | None) -> int:
    return int(float(number) * _UNITS.get((unit or "B")[0].upper(), 1))


def oom_verdict(message: str) -> dict[str, Any] | None:
    """The amounts of a TPU compile-time out-of-memory error, or None if it is not one:
    {"required_bytes", "available_bytes", "kind", "message"}."""
    if "RESOURCE_EXHAUSTED" not in message and "HbmOom" not in message:
        return None
    out: dict[str, Any] = {"kind": "CompileTimeHbmOom", "message": message[:600]}
    m = re.search(r"required for ([\w ]+?)\s*\(" + _AMOUNT + r"\)", message)
    if m:
        out["required_for"] = m.group(1)
        out["required_bytes"] = _bytes(m.group(2), m.group(3))
    m = re.search(r"available HBM\s*\(" + _AMOUNT + r"\)", message)
    if m:
        out["available_bytes"] = _bytes(m.group(1), m.group(2))
    m = re.search(r"[Uu]sed\s+" + _AMOUNT + r"\s+of\s+" + _AMOUNT + r"\s+hbm", message)
    if m:
        out.setdefault("required_bytes", _bytes(m.group(1), m.group(2)))
        out.setdefault("available_bytes", _bytes(m.group(3), m.group(4)))
    return out


def cache_path(cfg: RunConfig, target: str, num_classes: int, vers: dict) -> Path:
    key = program_key(as_dict(cfg), num_classes)
    return CACHE_DIR / f"{fingerprint(key, target, vers)}.json"


def compile_target(
    cfg: RunConfig,
    target: str,
    num_classes: int = 1000,
    use_cache: bool = True,
    cache_only: bool = False,
) -> dict[str, Any] | None:
    """Compile the run's train step for ``target`` (a Cloud TPU type, through libtpu); the
    plan's numbers with ``fits`` (the compiler's verdict and the chip memory with
    ``HEADROOM``) and, when it does not fit, ``oom``. Cached by config, target, versions;
    ``cache_only``: None instead of compiling what the cache lacks."""
    from e3lib.atomic import write_json
    from e3lib.train.plan import compile_step

    kind, tpu_type, devices = parse_target(target)
    if kind != "tpu":
        raise ValueError(f"compile_target: {target!r} is not a TPU type")
    vers = versions()
    path = cache_path(cfg, tpu_type, num_classes, vers)
    if use_cache and path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    if cache_only:
        return None
    chip, _ = tpu_devices(tpu_type)
    head = {"target": tpu_type, "chip": chip, "devices": devices, "versions": vers}
    import jax

    try:
        out = compile_step(cfg, num_classes, devices=tpu_devices_of(tpu_type))
    except jax.errors.JaxRuntimeError as err:
        verdict = oom_verdict(str(err))
        if verdict is None:
            raise
        out = {
            "size": cfg.model.size,
            "method": cfg.method,
            "batch": cfg.finetune.batch_size,
            "image_size": cfg.data.image_size,
            "oom": verdict,
            "fits": False,
            "compiler_fits": False,
        }
    else:
        out["compiler_fits"] = True
        out["fits"] = out["peak_bytes"] * HEADROOM <= CHIP_GIB[chip] * GIB
    out = {**head, **out, "key": program_key(as_dict(cfg), num_classes)}
    write_json(path, out)
    return {**out, "cached": False}
