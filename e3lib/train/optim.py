"""Optimizers and learning-rate schedules (Optax) of the two training stages.

Notation: T total steps, t step index (0-based).

- Fine-tuning (paper App. A.3/A.4, reference configs): SGD with momentum 0.9
  (``finetune.momentum``), gradient global-norm clipping at 10 (``finetune.grad_clip``;
  0 disables it), linear warmup to ``finetune.lr`` over ``finetune.warmup`` steps then
  cosine or linear decay to ``finetune.end_lr`` at step T. The momentum accumulator is
  held in ``finetune.momentum_dtype`` (the paper's "SGD with momentum (using
  half-precision)": bfloat16; optax ``accumulator_dtype``).
- Upstream (V-MoE paper's upstream recipe, standing in for JFT checkpoints): Adam
  (β₁ 0.9, β₂ 0.999) with decoupled weight decay ``upstream.weight_decay``, global-norm
  clipping at 1, linear warmup then linear decay to 0; the first moment in
  ``upstream.momentum_dtype`` (optax ``mu_dtype``; the second stays in the parameters'
  dtype).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from e3lib.errors import ConfigError

if TYPE_CHECKING:
    from e3lib.run_config import FinetuneConfig


def lr_schedule(
    kind: str, peak: float, warmup: int, steps: int, end: float, field: str = "finetune"
):
    """Warmup then decay; ``warmup < steps`` is a config rule (e3lib.config_rules)."""
    import optax

    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end)
    if kind == "linear":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, warmup),
                optax.linear_schedule(peak, end, steps - warmup),
            ],
            [warmup],
        )
    raise ConfigError(f"{field}.schedule", kind, "allowed: ['cosine', 'linear']")


def finetune_lr(ft: FinetuneConfig):
    """The fine-tuning learning rate of step t (an Optax schedule)."""
    return lr_schedule(ft.schedule, ft.lr, ft.warmup, ft.steps, ft.end_lr)


def upstream_lr(up: Mapping[str, Any]):
    """The upstream learning rate of step t (an Optax schedule)."""
    return lr_schedule("linear", up["lr"], up["warmup"], up["steps"], 0.0, field="upstream")


def host_schedule(schedule):
    """``schedule`` as step indices (NumPy) → learning rates (NumPy float64)."""
    import numpy as np

    return lambda steps: np.asarray(schedule(np.asarray(steps)), dtype=np.float64)


def finetune_optimizer(ft: FinetuneConfig):
    import optax

    sched = finetune_lr(ft)
    parts = [optax.clip_by_global_norm(ft.grad_clip)] if ft.grad_clip > 0 else []
    momentum = optax.sgd(sched, momentum=ft.momentum, accumulator_dtype=ft.momentum_dtype)
    return optax.chain(*parts, momentum)


def upstream_optimizer(up: Mapping[str, Any]):
    import optax

    sched = upstream_lr(up)
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(
            sched,
            b1=0.9,
            b2=0.999,
            weight_decay=up["weight_decay"],
            mu_dtype=up.get("momentum_dtype", "float32"),  # in the upstream id if not float32
        ),
    )
