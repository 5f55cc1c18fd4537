"""XLA's compiled cost of the actual training step of a run config (never executed).

Notation: B images per batch.

``xla_cost`` lowers and compiles value-and-gradient of the loss of ``build_model`` on
abstract inputs at full size and reads XLA's cost and memory analysis (the reference code
logs the same ``compiled.cost_analysis()["flops"]``, vmoe-reference §10). It checks the
analytic count of ``e3lib.cost.analytic`` (docs/flops.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def _abstract_train_step(cfg: RunConfig, num_classes: int, batch: int | None):
    """The jitted loss-and-gradient function and its abstract arguments (nothing allocated)."""
    import jax
    import jax.numpy as jnp

    from e3lib.models import build_model
    from e3lib.models.losses import ensemble_train_loss

    model = build_model(cfg, num_classes)
    B = batch or cfg.model.group_images
    size = cfg.data.image_size
    images = jax.ShapeDtypeStruct((B, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((B,), jnp.int32)
    key = jax.random.key(0)
    variables = jax.eval_shape(
        lambda x: model.init({"params": key, "dropout": key, "gating": key}, x, train=False), images
    )

    def loss_fn(params, x, y, rng):
        drop, gate = jax.random.split(rng)
        logits, aux = model.apply(
            {"params": params}, x, train=True, rngs={"dropout": drop, "gating": gate}
        )
        return ensemble_train_loss(logits, y) + aux["aux_loss"]

    step = jax.jit(jax.value_and_grad(loss_fn))
    return step, (variables["params"], images, labels, key), B


def compiled_train_step(cfg: RunConfig, num_classes: int, batch: int | None = None):
    """Lower and compile the training step on abstract inputs: (compiled, batch size)."""
    step, args, B = _abstract_train_step(cfg, num_classes, batch)
    return step.lower(*args).compile(), B


def _cost_dict(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per device
        cost = cost[0]
    return dict(cost or {})


def xla_cost(cfg: RunConfig, num_classes: int = 1000, batch: int | None = None) -> dict[str, float]:
    """XLA's compiled cost of the training step, per image, plus the compiled memory.

    Keys: ``gflops`` (per image), ``batch``, ``temp_bytes``, ``argument_bytes``,
    ``output_bytes``, ``peak_bytes`` (arguments + outputs + temporaries − aliased).
    """
    compiled, B = compiled_train_step(cfg, num_classes, batch)
    flops = _cost_dict(compiled).get("flops")
    if flops is None or flops <= 0:  # some backends report no or negative counts
        raise RuntimeError(f"XLA cost analysis returned no FLOP count ({flops!r}) on this backend")
    out = {"gflops": float(flops) / B / 1e9, "batch": B}
    mem = compiled.memory_analysis()
    if mem is not None:
        out.update(
            temp_bytes=mem.temp_size_in_bytes,
            argument_bytes=mem.argument_size_in_bytes,
            output_bytes=mem.output_size_in_bytes,
            peak_bytes=(
                mem.argument_size_in_bytes
                + mem.output_size_in_bytes
                + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes
            ),
        )
    return out


def xla_gflops(cfg: RunConfig, num_classes: int = 1000, batch: int | None = None) -> float:
    """GFLOPs per image of the compiled training step (XLA cost analysis, never executed)."""
    return xla_cost(cfg, num_classes, batch)["gflops"]
