"""Fit check before launch, analytic part: per-device memory of a run's training step on D
devices, the memory of each accelerator, and the smallest slice that holds the step.

Notation: D devices, N devices on the expert axis, B global batch, E experts, T tokens per
image, L blocks, H hidden size, Q MLP width, A attention heads, K selected experts,
C_f capacity factor, M rows per image after tiling.

``e3 plan`` (``e3lib.train.plan``) compiles the real train step ahead of time on virtual
devices; the compiled figures of docs/scale.md calibrate ``analytic_bytes`` here, a closed
form fast enough to check every job of a sweep when the workflow parses (no JAX import).

Accelerators (``CHIP_GIB``: memory of one JAX device): a TPU v3 device is one core (16
GiB); v4, v5p and v5e devices are chips (32, 95, 16 GiB). Cloud TPU type names count
TensorCores for v3/v4/v5p (v4-8 = 4 chips) and chips for v5e (v5litepod-16 = 16 chips).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

GIB = 2**30
# Memory per device (per TPU core for v3, per chip otherwise), GiB.
CHIP_GIB: dict[str, float] = {
    "v3": 16,
    "v4": 32,
    "v5e": 16,
    "v5p": 95,
    "a100-40": 40,
    "a100-80": 80,
    "h100": 80,
}
GPU_CHIP = "h100"  # what a Slurm GPU request is checked against (80 GiB)
HEADROOM = 1.10  # a step fits when 1.1 × its estimated peak fits the device
# Cloud TPU slice types (name prefix -> chip, TensorCores per JAX device in the name).
TPU_FAMILIES = {"v3": ("v3", 1), "v4": ("v4", 2), "v5p": ("v5p", 2), "v5litepod": ("v5e", 1)}
TPU_SIZES = {
    "v3": (8, 32, 64, 128, 256, 512, 1024, 2048),
    "v4": (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    "v5p": (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 6144, 12288),
    "v5litepod": (1, 4, 8, 16, 32, 64, 128, 256),
}


def tpu_devices(tpu_type: str) -> tuple[str, int]:
    """(chip, JAX devices) of a Cloud TPU type: v4-32 -> ("v4", 16), v3-8 -> ("v3", 8)."""
    match = re.fullmatch(r"(v3|v4|v5p|v5litepod)-(\d+)", tpu_type)
    if not match:
        raise ValueError(
            f"TPU type {tpu_type!r}: expected one of {[f'{k}-N' for k in TPU_FAMILIES]}"
        )
    chip, cores_per_device = TPU_FAMILIES[match.group(1)]
    return chip, max(1, int(match.group(2)) // cores_per_device)


def activation_units(cfg: RunConfig, devices: int) -> tuple[float, float]:
    """(token-feature, attention-score) element counts per device of one step's saved
    activations, up to constants: Σ_blocks B/D·M_b·T·(H + Q·f) and Σ B/D·M_b·A·T², with
    f = K·C_f in MoE blocks and 1 in dense ones, M_b the rows per image entering block b
    (the method's ``Backbone``: tiling copies)."""
    from e3lib.cost.analytic import rows_per_block
    from e3lib.models.registry import moe_layout
    from e3lib.models.sizes import size_spec

    spec = size_spec(cfg)
    m = cfg.model
    T = (cfg.data.image_size // spec["patch"]) ** 2 + 1
    H, Q, heads = spec["hidden"], spec["mlp"], spec["heads"]
    images = cfg.finetune.batch_size / devices
    moe = set(spec["moe_layers"]) if moe_layout(cfg, spec) is not None else set()
    per_block, _ = rows_per_block(cfg)
    tok = att = 0.0
    for b, rows in enumerate(per_block):
        r = images * rows
        f = m.num_selected * m.capacity_factor if b in moe else 1.0
        tok += r * T * (H + Q * f)
        att += r * heads * T * T
    return tok, att


# Least-squares fit on the 9 compiled plans of docs/scale.md (S/32 and B/32 on 8 devices,
# L/16 on 32 and 64, H/14 on 32; V-MoE K=2 and E³ K=1 M=2; 384 px, batch 512; float32):
# peak ≈ state·(bytes of params + momentum) + token·(token features) + attention·(scores),
# within ±11% of every compiled figure.
CALIBRATION = {"state": 5.85, "token": 17.7, "attention": 8.25}


def expert_params(cfg: RunConfig) -> int:
    """Parameters of the stacked expert MLPs (E·(2HQ + Q + H) per MoE block): the ones the
    expert axis splits."""
    from e3lib.models.registry import moe_layout
    from e3lib.models.sizes import size_spec

    spec = size_spec(cfg)
    if moe_layout(cfg, spec) is None:
        return 0
    H, Q = spec["hidden"], spec["mlp"]
    return len(spec["moe_layers"]) * cfg.model.num_experts * (2 * H * Q + Q + H)


def analytic_bytes(
    cfg: RunConfig, devices: int, num_classes: int = 1000, expert_axis: int | None = None
) -> float:
    """Closed-form per-device peak memory (bytes) of the train step on ``devices``,
    calibrated on compiled plans; the expert axis defaults to the mesh "auto" picks."""
    from e3lib.cost.analytic import analytic_params

    experts = expert_params(cfg)
    n = expert_axis or _largest_divisor(devices, cfg.model.num_experts)
    per_device = (analytic_params(cfg, num_classes) - experts) + experts / n
    tok, att = activation_units(cfg, devices)
    c = CALIBRATION
    state_bytes = 2 * 4 * per_device  # float32 params + SGD momentum
    return state_bytes * c["state"] + tok * c["token"] + att * c["attention"]


def _largest_divisor(devices: int, experts: int) -> int:
    return max(d for d in range(1, devices + 1) if devices % d == 0 and experts % d == 0)


def fits(peak_bytes: float, chip: str, headroom: float = 1.0) -> bool:
    return peak_bytes * headroom <= CHIP_GIB[chip] * GIB


def smallest_tpu(cfg: RunConfig, family: str, num_classes: int = 1000) -> str | None:
    """The smallest slice of a TPU family ("v3", "v4", "v5p", "v5litepod") whose devices
    hold the step with ``HEADROOM`` (None if none does)."""
    for n in TPU_SIZES[family]:
        name = f"{family}-{n}"
        chip, devices = tpu_devices(name)
        if cfg.finetune.batch_size % devices:
            continue
        if fits(analytic_bytes(cfg, devices, num_classes), chip, HEADROOM):
            return name
    return None


def smallest_gpus(cfg: RunConfig, num_classes: int = 1000, most: int = 1024) -> int | None:
    """The fewest 80 GiB GPUs (a power of two) that hold the step with ``HEADROOM``."""
    n = 1
    while n <= most:
        if cfg.finetune.batch_size % n == 0 and fits(
            analytic_bytes(cfg, n, num_classes), GPU_CHIP, HEADROOM
        ):
            return n
        n *= 2
    return None


def request_problems(
    cfg: RunConfig,
    tpu_type: str | None,
    gpus: int | None,
    num_classes: int = 1000,
    expert_axis: int | None = None,
) -> list[str]:
    """Why a job's requested TPU type / GPU count cannot hold its step (empty: both fit),
    each with the smallest request of that kind that would."""
    out = []
    if tpu_type:
        chip, devices = tpu_devices(tpu_type)
        need = analytic_bytes(cfg, devices, num_classes, expert_axis)
        if not fits(need, chip, HEADROOM):
            family = tpu_type.split("-")[0]
            better = smallest_tpu(cfg, family, num_classes)
            out.append(
                f"tpu_type {tpu_type} ({devices} devices of {CHIP_GIB[chip]:g} GiB): "
                f"about {need / GIB:.1f} GiB per device needed (+10% headroom); "
                + (
                    f"smallest {family} slice that fits: {better}"
                    if better
                    else f"no {family} slice fits"
                )
            )
    if gpus:
        need = analytic_bytes(cfg, gpus, num_classes, expert_axis)
        if not fits(need, GPU_CHIP, HEADROOM):
            better = smallest_gpus(cfg, num_classes)
            out.append(
                f"gpus {gpus} (80 GiB each): about {need / GIB:.1f} GiB per GPU "
                f"needed (+10% headroom); fewest that fit: {better}"
            )
    return out


def per_device_table(
    cfg: RunConfig, device_counts=(8, 16, 32, 64, 128, 256, 512), num_classes: int = 1000
) -> dict[int, float]:
    """GiB per device of ``cfg`` at each device count (docs/scale.md's analytic table)."""
    return {
        d: round(analytic_bytes(cfg, d, num_classes) / GIB, 1)
        for d in device_counts
        if math.gcd(d, cfg.finetune.batch_size) == d
    }
