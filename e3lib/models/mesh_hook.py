"""Where the dispatched expert buffers live when a step is traced on a device mesh.

Notation: E experts, G routing groups, C capacity, H hidden size.

``e3lib.parallel.sharding.active(mesh)`` sets ``EXCHANGE`` while it traces a step on a
(data × expert) mesh. The buffers (E, G, C, H) are written group by group on the devices
that hold the groups (G over all devices); ``to_expert_shards`` then constrains them twice,
first to that layout, then to E on ``expert`` and G on ``data``: between the two XLA moves
each group's slice of every expert to the device holding the expert, an all-to-all over the
expert axis (the reference's constraint → reshape → constraint). ``to_group_shards`` is the
way back after the expert MLPs. Without a mesh both return their input unchanged:
single-device programs are exactly those without the hook; so do buffers whose E or G the
mesh axes do not divide (e.g. a replicated last evaluation batch), left to XLA. The hook
lives here, below ``e3lib.parallel``, so the models import no layer above them.
"""

from __future__ import annotations

import contextvars
import math
from typing import NamedTuple

import jax


class ExpertExchange(NamedTuple):
    """``jax.sharding.NamedSharding``s of one (E, G, C, H) buffer on the two sides."""

    groups: object  # G over all devices (where tokens are routed and combined)
    experts: object  # E over ``expert``, G over ``data`` (where the expert MLPs run)


# An ExpertExchange, or None (no mesh).
EXCHANGE: contextvars.ContextVar = contextvars.ContextVar("e3lib_expert_exchange", default=None)


def _exchange_for(x: jax.Array) -> ExpertExchange | None:
    """The active exchange, if both its shardings divide ``x``'s dimensions."""
    exchange = EXCHANGE.get()
    if exchange is None:
        return None
    for sharding in exchange:
        for size, axes in zip(x.shape, sharding.spec):
            names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
            if size % math.prod(sharding.mesh.shape[n] for n in names):
                return None
    return exchange


def to_expert_shards(x: jax.Array) -> jax.Array:
    """(E, G, C, H) from the devices of its groups to those of its experts (all-to-all)."""
    sharding = _exchange_for(x)
    if sharding is None:
        return x
    x = jax.lax.with_sharding_constraint(x, sharding.groups)
    return jax.lax.with_sharding_constraint(x, sharding.experts)


def to_group_shards(x: jax.Array) -> jax.Array:
    """(E, G, C, H) from the devices of its experts back to those of its groups."""
    sharding = _exchange_for(x)
    if sharding is None:
        return x
    x = jax.lax.with_sharding_constraint(x, sharding.experts)
    return jax.lax.with_sharding_constraint(x, sharding.groups)
