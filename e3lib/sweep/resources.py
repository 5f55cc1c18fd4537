"""Resources of one workflow job (accelerator, memory, runtime) from its run config."""

from __future__ import annotations

import math
from typing import Any, Mapping

# Per model size: accelerator for fine-tuning and for pretraining (Cloud TPU type, Slurm
# GPUs), host memory in MB, and minutes per 1000 fine-tuning steps at the paper's setting
# (batch 512, 384 px). Estimates to start from; sites override them with set-resources.
SIZE_RESOURCES: dict[str, dict[str, Any]] = {
    "tiny": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=2000, min_per_kstep=1),
    "mini": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=3000, min_per_kstep=2),
    "demo": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=4000, min_per_kstep=3),
    "S/32": dict(tpu=("v3-8", "v3-32"), gpus=(1, 8), mem_mb=32000, min_per_kstep=4),
    "B/32": dict(tpu=("v3-8", "v3-64"), gpus=(1, 8), mem_mb=48000, min_per_kstep=8),
    "L/32": dict(tpu=("v3-32", "v3-128"), gpus=(4, 16), mem_mb=64000, min_per_kstep=20),
    "B/16": dict(tpu=("v3-32", "v3-128"), gpus=(4, 16), mem_mb=64000, min_per_kstep=25),
    "L/16": dict(tpu=("v3-64", "v3-256"), gpus=(8, 32), mem_mb=96000, min_per_kstep=60),
    "H/14": dict(tpu=("v3-128", "v3-512"), gpus=(16, 64), mem_mb=128000, min_per_kstep=150),
}
STAGES = ("finetune", "upstream")   # order of the (fine-tune, pretraining) pairs above


def job_resources(cfg: Mapping[str, Any], stage: str, attempt: int = 1) -> dict[str, Any]:
    """Resources of one job from its run config; runtime and memory grow with ``attempt``.

    Returns tpu_type, gpus, mem_mb, runtime (minutes). Runtime scales with the stage's
    steps relative to 1000 (at least 10 minutes per attempt).
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; allowed: {list(STAGES)}")
    table = SIZE_RESOURCES[cfg["model"]["size"]]
    i = STAGES.index(stage)
    steps = cfg["upstream"]["steps"] if stage == "upstream" else cfg["finetune"]["steps"]
    # M members of one model are computed side by side (tiled tokens): cost grows with M.
    members = max(1, cfg["model"]["ensemble_size"])
    minutes = max(10, math.ceil(table["min_per_kstep"] * steps / 1000 * (1 + 0.5 * (members - 1))))
    return {"tpu_type": table["tpu"][i], "gpus": table["gpus"][i],
            "mem_mb": table["mem_mb"] * attempt, "runtime": minutes * attempt}
