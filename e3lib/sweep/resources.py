"""Resources of one workflow job (accelerator, memory, runtime) from its run config, and
the fit check of paper jobs at parse time (``check_fits``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from e3lib.config import as_dict
from e3lib.run_config import RunConfig
from e3lib.sweep.schema import SweepError

# Per model size: accelerator for fine-tuning and for pretraining (Cloud TPU type, Slurm
# GPUs of 80 GiB), host memory in MB, and minutes per 1000 fine-tuning steps at the paper's
# setting (batch 512, 384 px). One fine-tuning job = one slice / one allocation, the
# smallest whose devices hold the step of every shipped paper job of that size with 10%
# headroom by the parse-time check (docs/scale.md, "Slice size of a job": the TPU
# compiler's figures of the compile table, scaled to heavier jobs by the analytic estimate,
# where it has the size; the analytic estimate elsewhere; the heaviest grid points, K=8 or
# M=4, set the GPU counts). B/32 on a v3-8: 3× S/32's FLOPs per image, so 3× its minutes.
# Pretraining slices are analytic. Sites override them with set-resources; ``check_fits``
# refuses a paper job whose request is too small.
SIZE_RESOURCES: dict[str, dict[str, Any]] = {
    "tiny": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=2000, min_per_kstep=1),
    "mini": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=3000, min_per_kstep=2),
    "midi": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=3000, min_per_kstep=3),
    "demo": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=4000, min_per_kstep=3),
    "S/32": dict(tpu=("v3-8", "v3-32"), gpus=(2, 8), mem_mb=32000, min_per_kstep=4),
    "B/32": dict(tpu=("v3-8", "v3-64"), gpus=(4, 8), mem_mb=48000, min_per_kstep=12),
    "L/32": dict(tpu=("v4-64", "v3-128"), gpus=(8, 16), mem_mb=64000, min_per_kstep=20),
    "B/16": dict(tpu=("v3-64", "v3-128"), gpus=(16, 16), mem_mb=64000, min_per_kstep=25),
    "L/16": dict(tpu=("v5p-64", "v3-256"), gpus=(32, 32), mem_mb=96000, min_per_kstep=60),
    "H/14": dict(tpu=("v5p-128", "v3-512"), gpus=(128, 64), mem_mb=128000, min_per_kstep=150),
}
STAGES = ("finetune", "upstream")  # order of the (fine-tune, pretraining) pairs above
FAMILY_ORDER = ("v3", "v4", "v5p", "v5litepod")  # the paper's chips first
# The paper grid of the compile table (e3lib.train.plan_grid): entries at this setting,
# without overrides, set the fine-tuning slices of SIZE_RESOURCES.
PAPER_GRID = {"image_size": 384, "batch_size": 512, "num_experts": 32, "num_classes": 1000}


def table_slices(table: Mapping[Any, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Per model size and TPU family, the smallest compiled slice whose TPU-compiler peak
    holds, with ``fitcheck.HEADROOM``, the step of every method compiled for that size in
    that family (the compile table's paper-grid entries; a family where some method fits
    no compiled slice is left out)."""
    from e3lib.parallel.fitcheck import tpu_devices

    best: dict[tuple[str, str, str], tuple[int, str] | None] = {}
    for e in table.values():
        k = e["key"]
        grid = {
            "image_size": k["image_size"],
            "batch_size": k["finetune"]["batch_size"],
            "num_experts": k["model"]["num_experts"],
            "num_classes": k["num_classes"],
        }
        if grid != PAPER_GRID or e.get("set"):
            continue
        cell = (k["model"]["size"], e["target"].split("-")[0], k["method"])
        here = (tpu_devices(e["target"])[1], e["target"])
        if e["fits"] and (best.get(cell) is None or here < best[cell]):
            best[cell] = here
        best.setdefault(cell, None)
    out: dict[str, dict[str, str]] = {}
    for size, family in sorted({c[:2] for c in best}):
        smallest = [v for c, v in best.items() if c[:2] == (size, family)]
        if None not in smallest:  # every method fits some slice: the largest of those
            out.setdefault(size, {})[family] = max(smallest)[1]
    return out


def preferred_slice(by_family: Mapping[str, str]) -> str | None:
    """The slice of the first family of ``FAMILY_ORDER`` that holds the step."""
    return next((by_family[f] for f in FAMILY_ORDER if f in by_family), None)


def job_resources(
    cfg: RunConfig | Mapping[str, Any], stage: str, attempt: int = 1
) -> dict[str, Any]:
    """Resources of one job from its run config (resolved, or the plain dict of a sweep's
    plan); runtime and memory grow with ``attempt``.

    Returns tpu_type, gpus, mem_mb, runtime (minutes). Runtime scales with the stage's
    steps relative to 1000 (at least 10 minutes per attempt).
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; allowed: {list(STAGES)}")
    cfg = as_dict(cfg)
    table = SIZE_RESOURCES[cfg["model"]["size"]]
    i = STAGES.index(stage)
    steps = cfg["upstream"]["steps"] if stage == "upstream" else cfg["finetune"]["steps"]
    # M members of one model are computed side by side (tiled tokens): cost grows with M.
    members = max(1, cfg["model"]["ensemble_size"])
    minutes = max(10, math.ceil(table["min_per_kstep"] * steps / 1000 * (1 + 0.5 * (members - 1))))
    return {
        "tpu_type": table["tpu"][i],
        "gpus": table["gpus"][i],
        "mem_mb": table["mem_mb"] * attempt,
        "runtime": minutes * attempt,
    }


def fit_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Why a fine-tuning job's requested TPU slice / GPUs cannot hold its train step
    (``e3lib.parallel.fitcheck``: the TPU compiler's figure from the compile table where it
    has the job's step, else the analytic estimate; each message names its source)."""
    from e3lib.parallel.fitcheck import request_problems

    res = job_resources(cfg, "finetune")
    mesh = cfg.get("mesh")
    expert = mesh.get("expert") if isinstance(mesh, Mapping) else None
    return request_problems(
        RunConfig.from_dict(cfg),  # a sweep's job config: resolved at expansion
        res["tpu_type"],
        res["gpus"],
        expert_axis=expert if expert and expert > 0 else None,
    )


def check_fits(plan: Any, variant: str) -> None:
    """Refuse a ``paper`` plan with a fine-tuning job whose estimated per-device memory
    exceeds the devices it requests: SweepError naming the sweep file, the run and the
    smallest TPU type / GPU count that fits. Other variants run on one small device."""
    if variant != "paper":
        return
    from e3lib.parallel.fittable import program_key

    seen: dict[str, list[str]] = {}
    for sweep in plan.sweeps.values():
        for rid, cfg in sweep.runs.items():
            key = repr(program_key(cfg))
            if key not in seen:
                seen[key] = fit_problems(cfg)
            if seen[key]:
                raise SweepError(
                    sweep.file,
                    f"run {rid}",
                    f"{cfg['model']['size']} {cfg['method']}",
                    "does not fit the requested devices: "
                    + "; ".join(seen[key])
                    + " (e3lib/sweep/resources.py SIZE_RESOURCES, docs/scale.md)",
                )


# ----------------------------------------------------------------------------- Slurm tasks
# A Slurm job of G GPUs runs one task (one JAX process) per GPU: ``jax.distributed``'s
# Slurm detection reads ranks from SLURM_PROCID / SLURM_NTASKS, the coordinator from the
# step's first node, and gives each process the GPU numbered SLURM_LOCALID on its node, so
# every task sees the node's GPUs and uses one. G ≤ the node's GPUs: one node; more: whole
# nodes. The keys are the Slurm executor plugin's (``mpi`` marks a job whose command starts
# its own tasks); jobs of 0 or 1 GPU keep one task and none of them.


def slurm_resources(gpus: int, gpus_per_node: int) -> dict[str, Any]:
    """``nodes``, ``tasks_per_node`` and ``mpi`` of a Slurm job of ``gpus`` GPUs on nodes of
    ``gpus_per_node`` (0: the workflow does not split jobs into Slurm tasks; {})."""
    if gpus_per_node == 0 or gpus <= 1:
        return {}
    nodes = max(1, gpus // gpus_per_node)
    if nodes * min(gpus, gpus_per_node) != gpus:
        raise ValueError(
            f"gpus {gpus} on nodes of slurm_gpus_per_node={gpus_per_node}: a job of more "
            "GPUs than one node has must fill whole nodes (set-resources gpu, or the "
            "workflow config slurm_gpus_per_node)"
        )
    if gpus // nodes < 2:
        raise ValueError(
            f"slurm_gpus_per_node={gpus_per_node}: the Slurm plugin starts several tasks "
            "per node only (tasks_per_node > 1); use nodes of 2 or more GPUs"
        )
    return {"nodes": nodes, "tasks_per_node": gpus // nodes, "mpi": "srun"}


def srun_prefix(resources: Mapping[str, Any]) -> str:
    """The launcher of a job's command from its final resources (site overrides included):
    ``srun`` with the job's task geometry, one GPU per task visible as SLURM_LOCALID, and
    every task killed when one fails (no rank waits alone in a collective); '' for a job
    without ``mpi`` (one task, the command as it is)."""
    mpi = resources.get("mpi")
    if not mpi:
        return ""
    nodes, per_node = int(resources["nodes"]), int(resources["tasks_per_node"])
    flags = [f"--nodes={nodes}", f"--ntasks-per-node={per_node}"]
    gpus = int(resources.get("gpu") or 0)
    if gpus:
        flags.append(f"--gpus-per-node={gpus // nodes}")
    if resources.get("cpus_per_task"):
        flags.append(f"--cpus-per-task={int(resources['cpus_per_task'])}")
    return " ".join([str(mpi), *flags, "--kill-on-bad-exit=1"]) + " "
