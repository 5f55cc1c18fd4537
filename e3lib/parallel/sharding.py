"""Shardings of a run on a (data × expert) mesh, declared once.

Notation: E experts, G routing groups, C capacity, H hidden size, S packed seeds.

- Parameters: rules by parameter path (``/``-joined keys), first match wins; like the
  reference's ``params_axis_resources = [('Moe/Mlp/.*', ('expert',))]``. The stacked
  expert weights (E, ...) put E on ``expert``; everything else is replicated.
- Optimizer state follows the parameters: its leaves sit under the same key paths
  (e.g. the momentum ``trace``), so the same rules apply; scalars are replicated.
- Batches: the leading batch axis on ``('data', 'expert')``, i.e. over all devices.
- MoE buffers: (E, G·C, H) on ('expert', 'data', None). ``active(mesh)`` sets the hook
  ``e3lib.models.mesh_hook.BUFFER_SHARDING`` that ``constrain_expert_buffers`` (called in
  ``e3lib.models.moe``) reads while tracing; without it the hook is a no-op, so
  single-device runs are unchanged.

A packed-seeds state (leading S axis) keeps S unsharded: every spec gets a leading None.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from e3lib.models.mesh_hook import BUFFER_SHARDING

PARAM_RULES: tuple[tuple[str, P], ...] = ((r"(^|/)Moe/Mlp/", P("expert")),)
BATCH_AXES = ("data", "expert")
BUFFER_SPEC = P("expert", "data", None)


def path_string(path: Sequence) -> str:
    """Key path -> 'Encoder/encoderblock_1/Moe/Mlp/Dense_0/kernel' (sequence indices kept)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def spec_for(path: str, ndim: int, rules=PARAM_RULES, leading: int = 0) -> P:
    """PartitionSpec of one leaf: the first matching rule, else replicated."""
    for pattern, spec in rules:
        if re.search(pattern, path) and ndim >= leading + len(spec):
            return P(*([None] * leading), *spec)
    return P()


def tree_specs(tree: Any, rules=PARAM_RULES, leading: int = 0) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: spec_for(
            path_string(path), len(getattr(leaf, "shape", ())), rules, leading
        ),
        tree,
    )


def tree_shardings(tree: Any, mesh, rules=PARAM_RULES, leading: int = 0) -> Any:
    """NamedSharding per leaf of ``tree`` (params, optimizer state or a whole train state)."""
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec),
        tree_specs(tree, rules, leading),
        is_leaf=lambda x: isinstance(x, P),
    )


def param_sharding(mesh, path: str, ndim: int, rules=PARAM_RULES) -> NamedSharding:
    """NamedSharding of one parameter leaf by its ``/``-joined path (e.g. while loading)."""
    return NamedSharding(mesh, spec_for(path, ndim, rules))


def batch_sharding(mesh, leading: int = 0) -> NamedSharding:
    """Batch axis (after ``leading`` unsharded axes) over all devices."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def active(mesh) -> Iterator[None]:
    """Shard the MoE buffers on ``mesh`` while tracing inside this block."""
    token = BUFFER_SHARDING.set(NamedSharding(mesh, BUFFER_SPEC))
    try:
        yield
    finally:
        BUFFER_SHARDING.reset(token)
