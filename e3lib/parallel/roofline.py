"""Cost before launch: a roofline estimate of one training step's time on a device, and the
device-hours of a run.

Notation: F FLOPs of one step per device, Y bytes of HBM traffic per device (XLA's "bytes
accessed"), Z bytes each device sends through collectives (all-reduce, all-gather,
all-to-all, reduce-scatter, collective-permute result sizes in the compiled HLO), P, W, I the
device's peak FLOP/s, HBM bytes/s and interconnect bytes/s (``fitcheck.CHIP_PEAKS``).

    step time = max(F / P, Y / W) + Z / I

(the compute and memory phases overlap fully, communication not at all). It is a lower
bound: real steps reach a fraction of the peaks, so the estimate divides it by
``EFFICIENCY``. Without a compiled step, F comes from ``e3lib.cost.analytic`` (whole batch
/ D) and the bound is F / P (labelled "analytic").

    device-hours = steps · (bound / EFFICIENCY) · D / 3600
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e3lib.parallel.fitcheck import device_peaks

# Assumed fraction of the roofline bound a real step reaches: the compiled bound of the
# reference's V-MoE S/32 fine-tune on a TPUv3-8 over its reported wall time (docs/scale.md,
# "Cost before launch").
EFFICIENCY = 0.15


def roofline(
    flops: float, bytes_accessed: float, collective_bytes: float, chip: str
) -> dict[str, Any]:
    """Step-time terms (seconds) of a compiled step on one device of ``chip``."""
    p = device_peaks(chip)
    compute, memory = flops / p["flops"], bytes_accessed / p["hbm"]
    comm = collective_bytes / p["link"]
    bound = max(compute, memory) + comm
    return {
        "compute_s": compute,
        "memory_s": memory,
        "collective_s": comm,
        "bound_s": bound,
        "step_s": bound / EFFICIENCY,
        "bound": "compute" if compute >= memory else "memory",
        "source": "compiled",
    }


def analytic_step(flops_per_device: float, chip: str) -> dict[str, Any]:
    """Step time from analytic FLOPs: F / P, over ``EFFICIENCY``."""
    bound = flops_per_device / device_peaks(chip)["flops"]
    return {
        "compute_s": bound,
        "bound_s": bound,
        "step_s": bound / EFFICIENCY,
        "source": "analytic",
    }


def step_estimate(entry: Mapping[str, Any] | None, flops_per_device: float, chip: str) -> dict:
    """The roofline of a compiled table entry when there is one that fits, else the
    analytic estimate."""
    if entry and entry.get("compiler_fits") and entry.get("step_tflops_per_device"):
        return roofline(
            entry["step_tflops_per_device"] * 1e12,
            entry.get("bytes_accessed_per_device") or 0.0,
            entry.get("collective_bytes_per_device") or 0.0,
            chip,
        )
    return analytic_step(flops_per_device, chip)


def device_hours(steps: int, step_seconds: float, devices: int) -> float:
    return steps * step_seconds * devices / 3600
