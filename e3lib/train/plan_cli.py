"""The ``e3 plan`` command: will a run's train step fit its devices, and what will a sweep
cost, before anything is launched (docs/scale.md, "Fit check before launch").

    e3 plan [--config FILE] [--set FIELD=VALUE ...] --target v3-32     TPU compiler (libtpu)
    e3 plan ... --target cpu:8                                         XLA:CPU, 8 virtual devices
    e3 plan ... --analytic                                             closed-form estimate
    e3 plan --grid [--sizes ...] [--methods ...] [--targets ...] [--set ...] [--write-table]
            [--references] [--cache-only]   the compile table (e3lib/parallel/fit_table.json)
    e3 plan --sweep sweeps/FILE.yaml [--variant paper]                 device-hours per sweep
    e3 plan --references                                               estimates vs reported times

A TPU target is compiled by the TPU compiler for the slice's abstract topology when libtpu
is installed (``pip install -e '.[tpu-plan]'``); without it the command says so and prints
the analytic estimate, labelled. Compiled results are cached (``plan_target.CACHE_DIR``;
``--no-cache`` recompiles).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from e3lib.parallel.fitcheck import CHIP_GIB, GIB, HEADROOM, analytic_bytes, fits, tpu_devices


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="e3 plan",
        description="Compile a run's train step for a TPU slice (libtpu) or D virtual CPU "
        "devices (never executed): per-device memory beside the chip's, the compiler's "
        "verdict, step FLOPs and a roofline step time; or the device-hours of a sweep.",
    )
    p.add_argument("--config", help="run config (JSON or YAML); --set fields override it")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    p.add_argument("--target", help="Cloud TPU type (v3-32, v4-8, v5litepod-16, v5p-8) or cpu:D")
    p.add_argument("--devices", type=int, default=8, help="cpu:D without --target")
    p.add_argument("--chip", choices=sorted(CHIP_GIB), default="v4", help="chip for cpu:D")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--analytic", action="store_true", help="closed-form estimate only")
    p.add_argument("--no-cache", action="store_true", help="recompile cached results")
    p.add_argument("--json", action="store_true")
    p.add_argument("--grid", action="store_true", help="compile the paper grid (plan_grid)")
    p.add_argument("--sizes", help="grid sizes, comma-separated")
    p.add_argument("--methods", help="grid methods: vmoe,e3")
    p.add_argument("--targets", help="grid TPU types, comma-separated")
    p.add_argument("--write-table", action="store_true", help="merge the grid into fit_table.json")
    p.add_argument("--cache-only", action="store_true", help="grid: skip cells not yet compiled")
    p.add_argument("--sweep", nargs="*", metavar="FILE", help="estimate device-hours of sweeps")
    p.add_argument("--variant", default="paper")
    p.add_argument(
        "--references",
        action="store_true",
        help="reference wall times vs estimates (with --grid: compile the reference configs)",
    )
    return p


def _config(a) -> Any:
    from e3lib import tree
    from e3lib.config import resolve
    from e3lib.safeyaml import load_config_file

    raw = load_config_file(a.config) if a.config else {}
    return resolve(tree.merge(raw, tree.parse_assignments(a.set)))


def _show(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, default=str))
        return
    for k, v in out.items():
        print(f"{k:>28}: {v}")


def _plan_tpu(cfg, a) -> dict:
    from e3lib.parallel.roofline import roofline
    from e3lib.train.plan_target import compile_target, libtpu_version, parse_target

    _, tpu_type, devices = parse_target(a.target)
    chip, _ = tpu_devices(tpu_type)
    if a.analytic or libtpu_version() is None:
        if not a.analytic:
            print(
                "e3 plan: libtpu is not installed (pip install -e '.[tpu-plan]'), so the TPU "
                "compiler cannot run: analytic estimate instead",
                file=sys.stderr,
            )
        peak = analytic_bytes(cfg, devices, a.num_classes)
        return {
            "source": "analytic estimate",
            "target": tpu_type,
            "chip": chip,
            "devices": devices,
            "peak_gib": round(peak / GIB, 2),
            "chip_gib": CHIP_GIB[chip],
            "fits": fits(peak, chip, HEADROOM),
        }
    out = compile_target(cfg, tpu_type, a.num_classes, use_cache=not a.no_cache)
    out = {"source": "TPU compiler (libtpu)", **out, "chip_gib": CHIP_GIB[chip]}
    out.pop("key", None)
    if out.get("compiler_fits"):
        out["peak_gib"] = round(out["peak_bytes"] / GIB, 2)
        out["roofline"] = roofline(
            out["step_tflops_per_device"] * 1e12,
            out["bytes_accessed_per_device"],
            out["collective_bytes_per_device"],
            chip,
        )
    return out


def _plan_cpu(cfg, a, devices: int) -> dict | int:
    from e3lib.train.plan import compile_step

    # Read when the backend starts: the first device query below, unless something in
    # this process already started it (then the device count tells).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    import jax

    if jax.device_count() != devices:
        print(
            f"e3 plan: JAX already started with {jax.device_count()} devices; run in a "
            "fresh process",
            file=sys.stderr,
        )
        return 2
    out = {"source": "XLA:CPU compile (estimate)", **compile_step(cfg, a.num_classes)}
    out["chip"], out["chip_gib"] = a.chip, CHIP_GIB[a.chip]
    out["fits"] = fits(out["peak_bytes"], a.chip)
    out["peak_gib"] = round(out["peak_bytes"] / GIB, 2)
    return out


def _sweep(a) -> int:
    from e3lib.sweep import expand_sweeps
    from e3lib.sweep.cost import sweep_costs

    costs = sweep_costs(expand_sweeps(a.sweep, a.variant))
    if a.json:
        print(json.dumps({k: {**v, "runs": len(v["runs"])} for k, v in costs.items()}))
        return 0
    grand = 0.0
    for c in costs.values():
        print(f"{c['file']} ({a.variant}): {len(c['runs'])} jobs, {c['total']:,.0f} device-hours")
        for g in sorted(c["groups"], key=lambda g: -g["device_hours"]):
            print(
                f"  {g['stage']:>8} {g['size']:>5} {g['method']:>10} {g['tpu_type']:>13} "
                f"{g['jobs']:6d} jobs  step {g['step_s']:.3f} s ({g['source']})  "
                f"{g['device_hours']:14,.0f} device-hours"
            )
        grand += c["total"]
    print(f"total: {grand:,.0f} device-hours (a job in several sweep files counted in each)")
    return 0


def _references(a) -> int:
    from e3lib.sweep.cost import reference_estimates

    rows = reference_estimates()
    if a.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(
            f"{r['reference']} on {r['target']}, {r['steps']} steps: reported about "
            f"{r['reported_minutes']} min; estimate {r['estimated_minutes']:.1f} min "
            f"(roofline bound {r['bound_minutes']:.1f} min, {r['source']})"
        )
    return 0


def cli_plan(argv: list[str]) -> int:
    from e3lib.errors import ConfigError
    from e3lib.safeyaml import YamlInputError
    from e3lib.sweep.schema import SweepError

    a = _parser().parse_args(argv)
    try:
        if a.sweep:
            return _sweep(a)
        if a.grid:
            return _grid(a)
        if a.references:
            return _references(a)
        cfg = _config(a)
        target = a.target or f"cpu:{a.devices}"
        from e3lib.train.plan_target import parse_target

        kind, _, devices = parse_target(target)
        if kind == "tpu":
            out = _plan_tpu(cfg, a)
        elif a.analytic:
            peak = analytic_bytes(cfg, devices, a.num_classes)
            out = {"source": "analytic estimate", "devices": devices, "chip": a.chip}
            out.update(peak_gib=round(peak / GIB, 2), fits=fits(peak, a.chip))
        else:
            out = _plan_cpu(cfg, a, devices)
            if isinstance(out, int):
                return out
    except (ConfigError, YamlInputError, SweepError, OSError, ValueError) as err:
        print(f"e3 plan: {err}", file=sys.stderr)
        return 2
    _show(out, a.json)
    return 0


def _grid(a) -> int:
    from e3lib import tree
    from e3lib.train.plan_grid import METHODS, SIZES, V3_TARGETS, run_grid

    split = lambda s, default: tuple(s.split(",")) if s else default
    targets = split(a.targets, V3_TARGETS)
    for t in targets:
        tpu_devices(t)  # unknown types are refused before any compile
    overrides = _flat(tree.parse_assignments(a.set))
    run_grid(
        split(a.sizes, SIZES),
        split(a.methods, tuple(METHODS)),
        targets,
        overrides,
        a.num_classes,
        use_cache=not a.no_cache,
        write=a.write_table,
        cache_only=a.cache_only,
        references=a.references,
    )
    return 0


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "mesh":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
