"""Cost before launch: estimated device-hours of every job of a sweep plan (fine-tuning and
pretraining), summed per run group and per sweep, and the budget check at parse time
(``check_budget``, called from ``workflow/rules/common.smk``).

A job's device count and chip are those it requests (``job_resources``: its Cloud TPU type);
its step time is the roofline of the compile table's entry for it when there is one
(``e3lib.parallel.fittable``), else the analytic FLOPs (``e3lib.cost.analytic``) at the
chip's peak, both over ``roofline.EFFICIENCY`` (``e3lib.parallel.roofline``). Pretraining
jobs (one per upstream id, absent when ``upstream.checkpoint`` is set) are priced from
analytic FLOPs. Evaluation is not counted. JAX is never imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e3lib.sweep.resources import job_resources
from e3lib.sweep.schema import SweepError

DEFAULT_BUDGET_DEVICE_HOURS = 50_000.0  # per sweep file
DEFAULT_BUDGET_RUN_DEVICE_HOURS = 20_000.0  # per job


def _step(cfg: Mapping[str, Any], stage: str, memo: dict) -> tuple[dict, str, int]:
    """(step estimate, tpu type, devices) of one job; memoised on what shapes the step."""
    from e3lib.config import upstream_config, upstream_model_config
    from e3lib.cost.analytic import analytic_gflops
    from e3lib.parallel.fitcheck import tpu_devices
    from e3lib.parallel.fittable import lookup, program_key
    from e3lib.parallel.roofline import step_estimate
    from e3lib.run_config import RunConfig

    if stage == "upstream":
        ucfg = upstream_config(cfg)
        memo_key = repr((stage, {k: v for k, v in ucfg.items() if k not in _UP_SCALARS}))
    else:
        memo_key = repr((stage, program_key(cfg)))
    if memo_key not in memo:
        tpu_type = job_resources(cfg, stage)["tpu_type"]
        chip, devices = tpu_devices(tpu_type)
        if stage == "upstream":
            run, batch, entry = upstream_model_config(ucfg), ucfg["batch_size"], None
        else:
            run, batch = RunConfig.from_dict(cfg), cfg["finetune"]["batch_size"]
            entry = lookup(cfg, tpu_type)
        flops = analytic_gflops(run) * 1e9 * batch / devices
        memo[memo_key] = (step_estimate(entry, flops, chip), tpu_type, devices)
    return memo[memo_key]


_UP_SCALARS = ("seed", "steps", "lr", "warmup", "weight_decay", "checkpoint_sha256")


def sweep_costs(plan: Any) -> dict[str, dict[str, Any]]:
    """Per sweep name: {"file", "total" device-hours, "groups": [...], "runs": {id: row}},
    a group being one (stage, size, method, TPU type, source) with its job count."""
    from e3lib.parallel.roofline import device_hours

    memo: dict = {}
    out = {}
    for name, sweep in plan.sweeps.items():
        groups: dict[tuple, dict[str, Any]] = {}
        rows: dict[str, dict[str, Any]] = {}
        seen_up: set[str] = set()
        for rid, cfg in sweep.runs.items():
            jobs = [("finetune", rid, cfg["finetune"]["steps"])]
            uid = sweep.run_upstream[rid]
            if not cfg["upstream"]["checkpoint"] and uid not in seen_up:
                seen_up.add(uid)
                jobs.append(("upstream", uid, cfg["upstream"]["steps"]))
            for stage, job_id, steps in jobs:
                est, tpu_type, devices = _step(cfg, stage, memo)
                hours = device_hours(steps, est["step_s"], devices)
                rows[f"{stage} {job_id}"] = {"device_hours": hours, "steps": steps, **est}
                key = (stage, cfg["model"]["size"], cfg["method"], tpu_type, est["source"])
                g = groups.setdefault(
                    key, {"jobs": 0, "device_hours": 0.0, "step_s": est["step_s"]}
                )
                g["jobs"] += 1
                g["device_hours"] += hours
        out[name] = {
            "file": sweep.file,
            "total": sum(r["device_hours"] for r in rows.values()),
            "groups": [
                dict(zip(("stage", "size", "method", "tpu_type", "source"), k), **v)
                for k, v in groups.items()
            ],
            "runs": rows,
        }
    return out


def check_budget(
    plan: Any,
    budget_device_hours: float = DEFAULT_BUDGET_DEVICE_HOURS,
    budget_run_device_hours: float = DEFAULT_BUDGET_RUN_DEVICE_HOURS,
) -> None:
    """Refuse a plan whose estimated device-hours exceed the budget: SweepError naming the
    sweep file and, for a job over the per-job cap, the job and its estimate."""
    for name, cost in sweep_costs(plan).items():
        job, worst = max(cost["runs"].items(), key=lambda kv: kv[1]["device_hours"])
        hours = worst["device_hours"]
        if hours > budget_run_device_hours:
            stage, job_id = job.split()
            raise SweepError(
                cost["file"],
                f"{stage}.steps",
                worst["steps"],
                f"{'run' if stage == 'finetune' else 'pretraining'} {job_id}: "
                f"estimated {hours:,.0f} device-hours ({worst['source']} step time "
                f"{worst['step_s']:.3g} s) exceed the per-job budget of "
                f"{budget_run_device_hours:,.0f}; raise it with --config "
                "budget_run_device_hours=... (docs/scale.md, 'Cost before launch')",
            )
        if cost["total"] > budget_device_hours:
            raise SweepError(
                cost["file"],
                "sweep",
                name,
                f"estimated {cost['total']:,.0f} device-hours over {len(cost['runs'])} jobs "
                f"exceed the budget of {budget_device_hours:,.0f} per sweep (largest job: "
                f"{job}, {hours:,.0f}); raise it with --config budget_device_hours=... "
                "(docs/scale.md, 'Cost before launch')",
            )


# Reference configs with a reported wall time (their docstrings; docs/scale.md): run-config
# overrides, classes, steps, slice, minutes reported.
REFERENCES = {
    "E³ S/32 CIFAR-100 fine-tune": (
        {
            "method": "e3",
            "model.size": "S/32",
            "model.num_experts": 8,
            "model.num_selected": 1,
            "model.ensemble_size": 2,
            "model.group_images": 128,
            "model.head_bias_init": -10,
            "data.image_size": 128,
            "finetune.batch_size": 1024,
            "finetune.steps": 2000,
        },
        100,
        "v3-8",
        10,
    ),
    "V-MoE S/32 ILSVRC2012 fine-tune, 384 px, batch 1024": (
        {
            "method": "vmoe",
            "model.size": "S/32",
            "model.num_experts": 8,
            "model.num_selected": 2,
            "data.image_size": 384,
            "finetune.batch_size": 1024,
            "finetune.steps": 10000,
        },
        1000,
        "v3-8",
        48,
    ),
}


def reference_config(overrides: dict[str, Any]):
    from e3lib import tree
    from e3lib.config import resolve

    return resolve(tree.parse_assignments([f"{k}={v}" for k, v in overrides.items()]))


def reference_estimates() -> list[dict[str, Any]]:
    """Estimated wall minutes of each reference config beside the reported ones (from the
    compile table where it has the config, else analytic FLOPs; no JAX)."""
    from e3lib.config import as_dict
    from e3lib.cost.analytic import analytic_gflops
    from e3lib.parallel.fitcheck import tpu_devices
    from e3lib.parallel.fittable import lookup
    from e3lib.parallel.roofline import step_estimate

    out = []
    for name, (overrides, classes, target, minutes) in REFERENCES.items():
        cfg = reference_config(overrides)
        chip, devices = tpu_devices(target)
        flops = analytic_gflops(cfg, classes) * 1e9 * cfg.finetune.batch_size / devices
        est = step_estimate(lookup(as_dict(cfg), target, classes), flops, chip)
        steps = cfg.finetune.steps
        out.append(
            {
                "reference": name,
                "target": target,
                "steps": steps,
                "reported_minutes": minutes,
                "bound_minutes": steps * est["bound_s"] / 60,
                "estimated_minutes": steps * est["step_s"] / 60,
                **est,
            }
        )
    return out
