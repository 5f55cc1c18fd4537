"""The device mesh of a run: named axes ``data`` and ``expert``.

Notation: D devices, N devices on the expert axis, B global batch (images), G routing
groups of one step, E experts, M members, o overlap.

- ``data``: data parallelism; the batch and the routing groups are split over
  ``data × expert`` (all D devices, as the reference shards data over
  ('expert', 'replica')), parameters outside the experts are replicated.
- ``expert``: the leading E axis of every expert weight (and its optimizer state) is split
  over N devices: each device holds E/N experts. The dispatched (E, G·C, H) buffers are
  split the same way, so XLA moves tokens between expert shards (all-to-all).

Run-config field ``mesh``: null (default) = one device, exactly as before;
``{data: -1, expert: N}`` (-1 = the rest of the devices); ``"auto"`` = expert axis as
large as possible (the largest divisor of D that divides E), data the rest. The mapping's
``fsdp: true`` also splits dense parameters and their optimizer state over ``data``
(``e3lib.parallel.sharding``, FSDP); it changes where state lives, not the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from e3lib.config_rules import MESH_AXES, check_mesh
from e3lib.errors import ConfigError

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

AXES = MESH_AXES


def validate_field(value: Any) -> None:
    """Type check of the ``mesh`` field (no devices needed): ``config_rules.check_mesh``."""
    check_mesh(value)


def fsdp_of(spec: Any) -> bool:
    """Whether the ``mesh`` field asks for FSDP sharding of the dense state."""
    return isinstance(spec, Mapping) and bool(spec.get("fsdp", False))


def num_experts(cfg: RunConfig) -> int | None:
    """E of a run's model, or None for methods without routed layers (ViT, BatchEnsemble)."""
    from e3lib.models.registry import method_of

    return cfg.model.num_experts if method_of(cfg).layout is not None else None


def mesh_shape(spec: Any, num_devices: int, experts: int | None) -> tuple[int, int]:
    """(data, expert) sizes of ``spec`` on ``num_devices`` devices."""
    validate_field(spec)
    if spec is None:
        return (1, 1)
    if spec == "auto":
        n = max(
            d for d in range(1, num_devices + 1) if num_devices % d == 0 and (experts or 1) % d == 0
        )
        return (num_devices // n, n)
    data, expert = spec.get("data", -1), spec.get("expert", 1)
    if data == -1 or expert == -1:
        known = expert if data == -1 else data
        if num_devices % known:
            axis = "expert" if data == -1 else "data"
            raise ConfigError(
                f"mesh.{axis}",
                known,
                f"must divide the {num_devices} devices; divisors: {divisors(num_devices)}",
            )
        rest = num_devices // known
        data, expert = (rest, expert) if data == -1 else (data, rest)
    if data * expert != num_devices:
        raise ConfigError(
            "mesh",
            dict(spec),
            f"data × expert = {data * expert} must equal the {num_devices} devices",
        )
    return (data, expert)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def routing_groups(cfg: RunConfig, batch: int) -> int:
    """G of a step of ``batch`` images (e3lib.models.moe.to_groups: whole images per group)."""
    return batch // math.gcd(batch, cfg.model.group_images)


def check_divisibility(
    cfg: RunConfig, shape: Sequence[int], batches: Mapping[str, int] | None = None
) -> None:
    """Raise ConfigError, before anything compiles, when the run does not split evenly.

    ``batches``: field -> global batch size to check (default ``finetune.batch_size``).
    """
    data, expert = shape
    devices = data * expert
    if devices == 1:
        return
    batches = batches or {"finetune.batch_size": cfg.finetune.batch_size}
    for field, b in batches.items():
        if b % devices:
            raise ConfigError(
                field,
                b,
                f"must be a multiple of the {devices} devices of mesh "
                f"data={data} × expert={expert}, e.g. {_next_multiple(b, devices)}",
            )
    E = num_experts(cfg)
    if E is not None:
        for field, b in batches.items():
            g = routing_groups(cfg, b)
            if g % devices:
                raise ConfigError(
                    "model.group_images",
                    cfg.model.group_images,
                    f"{field}={b} gives {g} routing groups, not a multiple of "
                    f"the {devices} devices; group_images dividing "
                    f"{b // devices} would",
                )
        if E % expert:
            raise ConfigError(
                "mesh.expert",
                expert,
                f"must divide model.num_experts = {E}; "
                f"divisors of E dividing {devices}: "
                f"{[d for d in divisors(E) if devices % d == 0]}",
            )
        _check_member_boundaries(cfg, E, expert)


def _check_member_boundaries(cfg: RunConfig, E: int, expert: int) -> None:
    """Disjoint expert subsets (one router per member, no shared experts): each device's
    experts belong to one subset, or it holds whole subsets (E/N divides E/M or the other
    way round), so a member's experts never straddle a shard boundary."""
    from e3lib.models.registry import moe_layout
    from e3lib.models.sizes import size_spec

    layout = moe_layout(cfg, size_spec(cfg))
    subsets = layout.subsets if layout is not None else ()
    M = len(subsets)
    if M < 2 or sum(len(s) for s in subsets) != E or len({i for s in subsets for i in s}) != E:
        return  # one router, or shared (overlap) experts: any split is fine
    per_member, shard = E // M, E // expert
    if per_member % shard and shard % per_member:
        ok = [d for d in divisors(E) if per_member % (E // d) == 0 or (E // d) % per_member == 0]
        raise ConfigError(
            "mesh.expert",
            expert,
            f"splits the {per_member} experts of each of M={M} members "
            f"unevenly; expert axis sizes that do not: {ok}",
        )


def _next_multiple(n: int, k: int) -> int:
    return -(-n // k) * k


def build_mesh(spec: Any, cfg: RunConfig | None = None, devices: Sequence | None = None):
    """The ``jax.sharding.Mesh`` of ``spec`` over ``devices`` (default: all), or None for
    ``spec`` None (one device). Checks divisibility against ``cfg`` first."""
    if spec is None:
        return None
    import jax
    import numpy as np

    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(spec, len(devices), num_experts(cfg) if cfg is not None else None)
    if cfg is not None:
        check_divisibility(cfg, shape)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return jax.sharding.Mesh(grid, AXES)


def describe(mesh) -> dict:
    """What results' provenance records about the devices a run used."""
    import jax

    devices = jax.devices() if mesh is None else list(mesh.devices.flat)
    return {
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "num_processes": jax.process_count(),
        "writer": jax.process_index(),
        "mesh": None if mesh is None else dict(zip(mesh.axis_names, mesh.devices.shape)),
    }
