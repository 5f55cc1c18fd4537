"""Shardings of a run on a (data × expert) mesh, declared once.

Notation: E experts, G routing groups, C capacity, H hidden size, S packed seeds.

- Parameters: rules by parameter path (``/``-joined keys), first match wins; like the
  reference's ``params_axis_resources = [('Moe/Mlp/.*', ('expert',))]``. The stacked
  expert weights (E, ...) put E on ``expert``; everything else is replicated.
- FSDP (mesh option ``fsdp: true``): after the rules, every leaf also puts ``data`` on
  its largest dimension that the rules left unsharded and the data-axis size divides
  (``FSDP_AXIS``; first such dimension on ties): dense weights and their momentum are split
  over ``data`` instead of replicated on it, expert weights over ``expert`` × ``data``.
  Leaves with no such dimension (scalars, odd sizes) stay as the rules say. XLA gathers a
  weight where the step uses it and reduce-scatters its gradient.
- Optimizer state follows the parameters: its leaves sit under the same key paths
  (e.g. the momentum ``trace``), so the same rules apply; scalars are replicated.
- Batches: the leading batch axis on ``('data', 'expert')``, i.e. over all devices.
- MoE buffers (E, G, C, H): G over all devices where tokens are routed and combined
  (``GROUP_SPEC``), E on ``expert`` and G on ``data`` where the experts run
  (``EXPERT_SPEC``); ``active(mesh)`` sets the hook ``e3lib.models.mesh_hook.EXCHANGE``
  that ``e3lib.models.moe`` reads while tracing (the change of sharding between the two is
  the all-to-all); without it the hook is a no-op, so single-device runs are unchanged.

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

from e3lib.models.mesh_hook import EXCHANGE, ExpertExchange

PARAM_RULES: tuple[tuple[str, P], ...] = ((r"(^|/)Moe/Mlp/", P("expert")),)
FSDP_AXIS = "data"  # the axis ``fsdp`` adds to each leaf's largest free divisible dim
BATCH_AXES = ("data", "expert")
GROUP_SPEC = P(None, BATCH_AXES)  # (E, G, C, H): groups over all devices
EXPERT_SPEC = P("expert", "data")  # (E, G, C, H): experts over expert, groups over data


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


def spec_for(
    path: str, shape: Sequence[int], rules=PARAM_RULES, leading: int = 0, fsdp: int = 1
) -> P:
    """PartitionSpec of one leaf: the first matching rule, else replicated; with ``fsdp``
    = the data-axis size (> 1), plus ``FSDP_AXIS`` on the largest free dimension it divides
    (the ``leading`` seed axes excluded)."""
    ndim = len(shape)
    axes: list = [None] * ndim
    for pattern, spec in rules:
        if re.search(pattern, path) and ndim >= leading + len(spec):
            axes[leading : leading + len(spec)] = list(spec)
            break
    if fsdp > 1:
        free = [d for d in range(leading, ndim) if axes[d] is None and shape[d] % fsdp == 0]
        if free:
            axes[max(free, key=lambda d: (shape[d], -d))] = FSDP_AXIS
    while axes and axes[-1] is None:  # P("expert"), not P("expert", None, None)
        axes.pop()
    return P(*axes)


def fsdp_size(mesh, fsdp: bool) -> int:
    """The data-axis size ``fsdp`` shards over (1: off)."""
    return int(mesh.shape[FSDP_AXIS]) if fsdp and mesh is not None else 1


def tree_specs(tree: Any, rules=PARAM_RULES, leading: int = 0, fsdp: int = 1) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: spec_for(
            path_string(path), tuple(getattr(leaf, "shape", ())), rules, leading, fsdp
        ),
        tree,
    )


def tree_shardings(tree: Any, mesh, rules=PARAM_RULES, leading: int = 0, fsdp: bool = False) -> Any:
    """NamedSharding per leaf of ``tree`` (params, optimizer state or a whole train state);
    shapes are read from the leaves (arrays or ``jax.ShapeDtypeStruct``s)."""
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec),
        tree_specs(tree, rules, leading, fsdp_size(mesh, fsdp)),
        is_leaf=lambda x: isinstance(x, P),
    )


def param_sharding(
    mesh, path: str, shape: Sequence[int], rules=PARAM_RULES, fsdp: bool = False
) -> NamedSharding:
    """NamedSharding of one parameter leaf by its ``/``-joined path (e.g. while loading)."""
    return NamedSharding(mesh, spec_for(path, shape, rules, fsdp=fsdp_size(mesh, fsdp)))


def batch_sharding(mesh, leading: int = 0) -> NamedSharding:
    """Batch axis (after ``leading`` unsharded axes) over all devices."""
    return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def active(mesh) -> Iterator[None]:
    """Shard the MoE buffers on ``mesh`` while tracing inside this block."""
    token = EXCHANGE.set(
        ExpertExchange(NamedSharding(mesh, GROUP_SPEC), NamedSharding(mesh, EXPERT_SPEC))
    )
    try:
        yield
    finally:
        EXCHANGE.reset(token)
