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
from typing import TYPE_CHECKING, Any

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


# Published peak numbers per chip: dense bfloat16 FLOP/s and HBM bytes/s, and inter-chip
# bandwidth (bytes/s, all links of one chip; ICI for TPUs, NVLink for GPUs). Sources: Cloud
# TPU system-architecture pages (v4: 275 TFLOP/s, 1200 GB/s, ICI 2400 Gbit/s; v5e: 197,
# 819, 1600 Gbit/s; v5p: 459, 2765, 4800 Gbit/s), the TPU v3 pod paper (Norrie et al.,
# IEEE Micro 2021: 123 TFLOP/s and 900 GB/s per chip of 2 cores, 4 ICI links of 656
# Gbit/s) and NVIDIA's data sheets (H100 SXM: 989 dense bf16 TFLOP/s, 3350 GB/s, NVLink
# 900 GB/s; A100: 312, 2039 GB/s (80 GB) / 1555 GB/s (40 GB), NVLink 600 GB/s).
# chip -> (FLOP/s, HBM bytes/s, interconnect bytes/s, JAX devices per chip).
CHIP_PEAKS: dict[str, tuple[float, float, float, int]] = {
    "v3": (123e12, 900e9, 4 * 656e9 / 8, 2),
    "v4": (275e12, 1200e9, 2400e9 / 8, 1),
    "v5e": (197e12, 819e9, 1600e9 / 8, 1),
    "v5p": (459e12, 2765e9, 4800e9 / 8, 1),
    "a100-40": (312e12, 1555e9, 600e9, 1),
    "a100-80": (312e12, 2039e9, 600e9, 1),
    "h100": (989e12, 3350e9, 900e9, 1),
}


def device_peaks(chip: str) -> dict[str, float]:
    """Peak numbers of one JAX device of ``chip`` (a v3 device is half a chip)."""
    flops, hbm, link, per_chip = CHIP_PEAKS[chip]
    return {"flops": flops / per_chip, "hbm": hbm / per_chip, "link": link / per_chip}


def tpu_topology(tpu_type: str) -> str:
    """libtpu's topology name of a Cloud TPU type: v3-32 -> "v3:4x4" (16 chips, 2-D torus),
    v4-8 -> "v4:2x2x1" (4 chips, 3-D), v5litepod-16 -> "v5e:4x4"."""
    chip, devices = tpu_devices(tpu_type)
    chips = devices // CHIP_PEAKS[chip][3]
    e = chips.bit_length() - 1
    if chips != 1 << e:
        raise ValueError(f"TPU type {tpu_type!r}: {chips} chips is not a power of two")
    if chip in ("v4", "v5p"):  # 3-D torus, balanced, a unit axis last (v4-8: 2x2x1)
        dims = sorted(1 << (e // 3 + (i < e % 3)) for i in range(3))
        dims = [d for d in dims if d > 1] + [d for d in dims if d == 1]
    else:  # 2-D torus
        dims = [1 << (e // 2), 1 << (e - e // 2)]
    return f"{chip}:" + "x".join(map(str, dims))


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


def tpu_need(
    cfg: RunConfig,
    tpu_type: str,
    num_classes: int = 1000,
    expert_axis: int | None = None,
    use_table: bool = True,
) -> dict[str, Any]:
    """Per-device memory of the step on a TPU slice and whether it fits with ``HEADROOM``,
    {"bytes", "fits", "source"}, from the compile table (``fittable``) when it can:

    - the table has this step on this slice: the TPU compiler's peak, or its out-of-memory
      verdict;
    - it has another step of the same size, image size and batch that fits this slice (an
      anchor): the anchor's compiled peak × analytic(this) / analytic(anchor);
    - neither: the analytic estimate."""
    from e3lib.parallel import fittable

    chip, devices = tpu_devices(tpu_type)
    d = cfg.to_dict()
    entry = fittable.lookup(d, tpu_type, num_classes) if use_table else None
    if entry is not None and entry.get("compiler_fits"):
        need = entry["peak_bytes"]
        return {"bytes": need, "fits": fits(need, chip, HEADROOM), "source": "TPU compiler"}
    if entry is not None:
        oom = entry.get("oom") or {}
        return {
            "bytes": oom.get("required_bytes", math.inf),
            "fits": False,
            "source": "TPU compiler: out of memory, " + oom.get("required_for", "total"),
        }
    need = analytic_bytes(cfg, devices, num_classes, expert_axis)
    anchor = fittable.anchor(d, tpu_type, num_classes) if use_table else None
    if anchor is None:
        return {"bytes": need, "fits": fits(need, chip, HEADROOM), "source": "analytic estimate"}
    k = anchor["key"]
    ref = analytic_bytes(fittable.key_config(k), devices, k["num_classes"])
    need = anchor["peak_bytes"] * need / ref
    return {
        "bytes": need,
        "fits": fits(need, chip, HEADROOM),
        "source": f"TPU compiler's {k['model']['size']} {k['method']} figure scaled by the "
        "analytic estimate",
    }


def smallest_tpu(cfg: RunConfig, family: str, num_classes: int = 1000) -> str | None:
    """The smallest slice of a TPU family ("v3", "v4", "v5p", "v5litepod") whose devices
    hold the step with ``HEADROOM`` (``tpu_need``; None if none does)."""
    for n in TPU_SIZES[family]:
        name = f"{family}-{n}"
        chip, devices = tpu_devices(name)
        if cfg.finetune.batch_size % devices:
            continue
        if tpu_need(cfg, name, num_classes)["fits"]:
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
    each with the smallest request of that kind that would (TPU slices: ``tpu_need``;
    GPUs: the analytic estimate)."""
    out = []
    if tpu_type:
        chip, devices = tpu_devices(tpu_type)
        need = tpu_need(cfg, tpu_type, num_classes, expert_axis)
        if not need["fits"]:
            family = tpu_type.split("-")[0]
            better = smallest_tpu(cfg, family, num_classes)
            out.append(
                f"tpu_type {tpu_type} ({devices} devices of {CHIP_GIB[chip]:g} GiB): "
                f"about {need['bytes'] / GIB:.1f} GiB per device needed ({need['source']}; "
                "+10% headroom); "
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
