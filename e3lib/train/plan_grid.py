"""The compile grid behind the shipped compile table (``e3lib/parallel/fit_table.json``):
paper sizes × methods at the paper's fine-tuning setting (384 px, global batch 512, E = 32;
V-MoE K=2, E³ K=1 M=2), compiled by the TPU compiler for Cloud TPU slices, one compile at a
time, with any run-config overrides (``--set``: precision, remat, micro-steps, ...).

    e3 plan --grid [--sizes S/32,B/32] [--methods vmoe,e3] [--targets v3-8,v3-32]
            [--set FIELD=VALUE ...] [--write-table]

Where a slice has more devices than the step has routing groups (B / ``group_images``),
``model.group_images`` is halved until it divides (recorded in the entry's key).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from e3lib.parallel.fitcheck import GIB

SIZES = ("S/32", "B/32", "L/16", "H/14")
METHODS = {
    "vmoe": {"method": "vmoe", "model.num_selected": 2},
    "e3": {"method": "e3", "model.num_selected": 1, "model.ensemble_size": 2},
}
PAPER = {
    "model.num_experts": 32,
    "data.image_size": 384,
    "finetune.batch_size": 512,
}
V3_TARGETS = ("v3-8", "v3-32", "v3-64", "v3-128", "v3-256")
MORE_TARGETS = ("v4-16", "v4-64", "v5litepod-16", "v5litepod-64", "v5p-8", "v5p-32")


def cell_config(size: str, method: str, overrides: dict[str, Any]):
    """The resolved run config of one grid cell."""
    from e3lib import tree
    from e3lib.config import resolve

    flat = {**PAPER, **METHODS[method], "model.size": size, **overrides}
    return resolve(tree.parse_assignments([f"{k}={v}" for k, v in flat.items()]))


def fit_groups(cfg, devices: int):
    """``cfg`` with ``model.group_images`` halved until the routing groups divide over the
    devices (unchanged when they already do)."""
    import dataclasses

    from e3lib.errors import ConfigError
    from e3lib.parallel.mesh import check_divisibility, mesh_shape, num_experts

    while True:
        try:
            check_divisibility(cfg, mesh_shape(cfg.mesh or "auto", devices, num_experts(cfg)))
            return cfg
        except ConfigError:
            g = cfg.model.group_images
            if g <= 1:
                raise
            model = dataclasses.replace(cfg.model, group_images=g // 2)
            cfg = dataclasses.replace(cfg, model=model)


def row_text(r: dict[str, Any]) -> str:
    cell = f"{r['size']:>5} {r['method']:>5} {r['target']:>13}"
    src = "cache" if r.get("cached") else f"{r.get('compile_seconds', 0):6.1f} s"
    if r.get("oom"):
        o = r["oom"]
        need, avail = o.get("required_bytes"), o.get("available_bytes")
        amounts = (
            f"{need / GIB:.2f} GiB {o.get('required_for', 'needed')} > {avail / GIB:.2f} GiB"
            if need and avail
            else o["message"][:120]
        )
        return f"{cell}  does not fit (compiler OOM: {amounts})  [{src}]"
    verdict = "fits" if r["fits"] else "over headroom"
    return (
        f"{cell}  {r['peak_bytes'] / GIB:6.2f} GiB/device ({verdict}; state "
        f"{r['state_bytes'] / GIB:.2f}, temp {r['temp_bytes'] / GIB:.2f}) "
        f"{r['step_tflops_per_device']:.2f} TFLOP  [{src}]"
    )


def run_grid(
    sizes,
    methods,
    targets,
    overrides: dict[str, Any],
    num_classes: int = 1000,
    use_cache: bool = True,
    write: bool = False,
    cache_only: bool = False,
    references: bool = False,
) -> list[dict]:
    """Compile every cell (targets outermost, then sizes, then methods; then, with
    ``references``, the reference configs), printing one line each; with ``write`` merge
    the entries into the shipped compile table after each; with ``cache_only`` skip (and
    list) the cells the cache lacks."""
    from e3lib.parallel.fitcheck import tpu_devices
    from e3lib.train.plan_target import compile_target

    cells = []
    for target in targets:
        _, devices = tpu_devices(target)
        for size in sizes:
            for method in methods:
                cfg = fit_groups(cell_config(size, method, overrides), devices)
                cells.append((f"{size} {method} {target}", cfg, target, num_classes))
    if references:
        from e3lib.sweep.cost import REFERENCES, reference_config

        for name, (over, classes, target, _) in REFERENCES.items():
            cells.append((name, reference_config({**over, **overrides}), target, classes))
    rows = []
    for label, cfg, target, classes in cells:
        t0 = time.perf_counter()
        r = compile_target(cfg, target, classes, use_cache, cache_only)
        if r is None:
            print(f"{label}: not compiled (not in the cache)", flush=True)
            continue
        r.setdefault("compile_seconds", round(time.perf_counter() - t0, 1))
        r["set"] = dict(overrides)
        rows.append(r)
        print(row_text(r), flush=True)
        if write:
            merge_into_table([r])
    return rows


_TABLE_FIELDS = (
    "target",
    "chip",
    "devices",
    "key",
    "set",
    "mesh",
    "fits",
    "compiler_fits",
    "oom",
    "peak_bytes",
    "temp_bytes",
    "argument_bytes",
    "output_bytes",
    "alias_bytes",
    "state_bytes",
    "step_tflops_per_device",
    "bytes_accessed_per_device",
    "collective_bytes_per_device",
    "collectives",
    "compile_seconds",
    "versions",
)


def merge_into_table(rows: list[dict]) -> None:
    """Replace or add these compiled rows in the shipped table (by key and target)."""
    from e3lib.parallel.fittable import key_text, load_table, write_table

    entries = dict(load_table())
    for r in rows:
        e = {k: r[k] for k in _TABLE_FIELDS if k in r}
        if "oom" in e:
            e["oom"] = {k: v for k, v in e["oom"].items() if k != "message"}
        entries[(key_text(e["key"]), e["target"])] = e
    write_table(list(entries.values()))
    print(f"e3 plan: compile table has {len(entries)} entries", file=sys.stderr)
