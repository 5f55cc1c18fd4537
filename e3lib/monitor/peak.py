"""Peak FLOP/s of one JAX device, for the model FLOPs utilisation (MFU) of a run.

MFU = analytic training FLOPs per step × steps / seconds / (D × peak), D devices.

Accelerators: the published dense bf16 peak of one JAX device (``PEAK_FLOPS``, matched on a
prefix of ``jax.Device.device_kind``). A TPU v2/v3 JAX device is one TensorCore (half a
chip), v4 and later are whole chips. Sources: Cloud TPU system architecture pages
(cloud.google.com/tpu/docs/v2, v3, v4, v5e, v5p, v6e: peak bf16 TFLOP/s per chip) and
NVIDIA's data sheets (A100: 312 TFLOP/s bf16 dense; H100 SXM and H200: 989 TFLOP/s bf16
dense, H100 PCIe 756; without structured sparsity).

CPU: no published number fits a shared host, so the peak is measured: the best of a few
timed float32 ``jnp.dot`` of two N×N matrices (2·N³ FLOPs each) on one device, divided
among the host's CPU devices (``--xla_force_host_platform_device_count`` devices share the
same cores). Measured once per process (a fraction of a second) and cached.
"""

from __future__ import annotations

import functools
import time

# device_kind prefix → peak FLOP/s of one JAX device (dense bf16)
PEAK_FLOPS: dict[str, float] = {
    "TPU v2": 22.5e12,  # 45 TFLOP/s per chip, 2 TensorCores
    "TPU v3": 61.5e12,  # 123 TFLOP/s per chip, 2 TensorCores
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # v5p reports "TPU v5"
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "NVIDIA A100": 312e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100": 989e12,  # SXM
    "NVIDIA H200": 989e12,
}
PEAK_SOURCE = "published dense bf16 peak (e3lib.monitor.peak.PEAK_FLOPS)"
MATMUL_N = 1024
MATMUL_REPEATS = 5


def published_peak(device_kind: str) -> float | None:
    """The table's peak of ``device_kind`` (longest matching prefix), None if unknown."""
    hits = [k for k in PEAK_FLOPS if device_kind.startswith(k)]
    return PEAK_FLOPS[max(hits, key=len)] if hits else None


@functools.cache
def measured_cpu_peak(n: int = MATMUL_N, repeats: int = MATMUL_REPEATS) -> float:
    """FLOP/s of the fastest of ``repeats`` float32 N×N matmuls on the first CPU device,
    for all of this host's CPU devices together."""
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), cpu)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def device_peak(device) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where it comes from) for a ``jax.Device``."""
    if device.platform == "cpu":
        import jax

        local = max(1, len(jax.local_devices(backend="cpu")))
        source = f"measured float32 {MATMUL_N}x{MATMUL_N} matmul, host split over {local} devices"
        return measured_cpu_peak() / local, source
    peak = published_peak(device.device_kind)
    return peak, PEAK_SOURCE if peak is not None else f"unknown device kind {device.device_kind}"
