"""Where the dispatched expert buffers live when a step is traced on a device mesh.

Notation: E experts, G routing groups, C capacity, H hidden size.

``e3lib.parallel.sharding.active(mesh)`` sets ``BUFFER_SHARDING`` while it traces a step on
a (data × expert) mesh; ``constrain_expert_buffers`` then pins the (E, G·C, H) buffers to
it (E on the expert axis), so XLA moves tokens between expert shards. Without a mesh it
returns its input unchanged: single-device programs are exactly those without the hook.
The hook lives here, below ``e3lib.parallel``, so the models import no layer above them.
"""

from __future__ import annotations

import contextvars

import jax

# A jax.sharding.NamedSharding for (E, G·C, H) arrays, or None (no mesh).
BUFFER_SHARDING: contextvars.ContextVar = contextvars.ContextVar(
    "e3lib_expert_buffer_sharding", default=None
)


def constrain_expert_buffers(x: jax.Array) -> jax.Array:
    """(E, G·C, H) buffers on the active mesh's sharding; no-op without a mesh."""
    sharding = BUFFER_SHARDING.get()
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)
