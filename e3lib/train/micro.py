"""Gradient accumulation: one train step's batch in μ micro-batches, one optimizer update.

Notation: B batch (images), μ micro-steps, D blocks of batch rows (one per device on a
mesh, else 1), b = B/(D·μ) rows of a block per micro-batch, g images per routing group.

The batch (after mixup) is cut into μ micro-batches of B/μ images (``micro_batches``); a
``lax.scan`` sums their loss terms and gradients in float32 and divides by μ. Every
micro-batch holds whole routing groups, the full batch's groups, so the mean cross-entropy
(equal micro-batches), the mean over groups of the auxiliary losses and hence the
gradients equal the full batch's up to float reassociation. Micro-batch i draws its router
noise and dropout from the step's keys folded with i, as the reference code's micro-steps
do (the full batch's noise cannot be cut into micro-batches): a step with such randomness
is another draw from the same distribution, one without it is the full batch's update.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from e3lib.errors import ConfigError


def micro_batches(x, microsteps: int, shards: int):
    """(B, ...) -> (μ, B/μ, ...): micro-batch i holds the i-th run of b rows of each of the
    D blocks of B/D rows, so it stays spread over every device and consecutive rows (the
    routing groups) stay together."""
    rows = x.shape[0] // (shards * microsteps)
    # (B, ...) -> (D, μ, b, ...) -> (μ, D, b, ...) -> (μ, D·b, ...)
    x = x.reshape(shards, microsteps, rows, *x.shape[1:]).swapaxes(0, 1)
    return x.reshape(microsteps, shards * rows, *x.shape[3:])


def check_micro_batches(
    batch: int, microsteps: int, shards: int, group_images: int, field: str
) -> None:
    """ConfigError naming ``field`` unless each of the D blocks of the batch splits into μ
    runs of whole routing groups (``e3lib.config_rules.check_microsteps`` checks B/μ when a
    config is parsed; this adds the devices, known when the job starts)."""
    whole = math.gcd(batch, group_images)  # images per routing group of the full batch
    if microsteps > 1 and batch % (shards * microsteps * whole):
        ok = [d for d in range(1, batch + 1) if batch % (shards * d * whole) == 0]
        raise ConfigError(
            field,
            microsteps,
            f"batch {batch} on {shards} devices: each device's {batch // shards} rows must "
            f"split into equal micro-batches of whole routing groups ({whole} images); "
            f"allowed: {ok}",
        )


def accumulated(grad_fn: Callable, microsteps: int, shards: int) -> Callable:
    """``grad_fn(params, images, targets, k_drop, k_gate) -> ((loss, (ce, aux)), grads)``
    -> ``gradients(...) -> ((loss, ce, aux), grads)`` over μ micro-batches (the plain
    gradients when μ = 1)."""
    import jax
    import jax.numpy as jnp

    def gradients(params, images, targets, k_drop, k_gate):
        if microsteps == 1:
            (loss, (ce, aux_loss)), grads = grad_fn(params, images, targets, k_drop, k_gate)
            return (loss, ce, aux_loss), grads

        def add(acc, xs):
            i, x, t = xs
            keys = jax.random.fold_in(k_drop, i), jax.random.fold_in(k_gate, i)
            (loss, (ce, aux_loss)), g = grad_fn(params, x, t, *keys)
            terms = ((loss, ce, aux_loss), g)
            return jax.tree_util.tree_map(lambda a, v: a + v.astype(jnp.float32), acc, terms), None

        zeros = jax.tree_util.tree_map(
            lambda p: jnp.zeros(jnp.shape(p), jnp.float32), ((0.0, 0.0, 0.0), params)
        )
        parts = [micro_batches(a, microsteps, shards) for a in (images, targets)]
        (sums, grads), _ = jax.lax.scan(add, zeros, (jnp.arange(microsteps), *parts))
        grads = jax.tree_util.tree_map(lambda g, p: (g / microsteps).astype(p.dtype), grads, params)
        return tuple(v / microsteps for v in sums), grads

    return gradients
