"""Sparse MoE MLP with real sparse dispatch (gather/scatter into per-expert buffers).

Notation: B images, M copies of each image (``ensemble_size``; 1 without tiling), T tokens
per image, H hidden size, Q expert MLP width, G groups, S tokens per group, E experts,
K selected per token, J selections per token (K, or K·R for Partitioning), C capacity.

Data path of one MoE layer:

1. (B·M, T, H) -> (G, S, H): each group holds whole images, their M copies interleaved
   copy-fast, S = images_per_group·T·M (reference ``reshape_to_group_size_representation``).
2. ``NoisyTopKRouter`` gives (G, S, J) expert ids and gates; ``buffer_positions`` queues them.
3. Dispatch: each group's tokens are scattered into its expert buffers (E, G, C, H);
   selections at position ≥ C are dropped. On a mesh the buffers then move from the devices
   of their groups to those of their experts (all-to-all, ``mesh_hook.to_expert_shards``).
   ``dispatch_dtype`` bfloat16 sends them in bfloat16 (the reference's bfloat16 dispatcher),
   cast back for the experts. MLP compute is E·G·C rows = about S·J·C_f per group: it grows
   with K and the capacity factor, not with E.
4. Experts: one ``MlpBlock`` vmapped over E with stacked parameters (E, H, Q), (E, Q, H);
   every expert starts from the same initialisation (``split_rngs`` params off).
5. Combine: the outputs move back (all-to-all, in ``dispatch_dtype``); each (token,
   selection) gathers its expert output and scales it by the raw float32 gate (0 if
   dropped); the J contributions are summed, or kept apart (Multi-pred, eq. 3) as F = J
   rows per input row.

``dense_moe_reference`` runs every expert on every token: a test oracle only.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from e3lib.models.layout import compute_capacity
from e3lib.models.mesh_hook import to_expert_shards, to_group_shards
from e3lib.models.routing import NoisyTopKRouter, Routing, buffer_positions
from e3lib.models.vit import MlpBlock

Array = jax.Array


def to_groups(x: Array, ensemble_size: int, group_images: int) -> tuple[Array, int]:
    """(B·M, T, H) -> (G, S, H) with whole images per group and their M copies interleaved.

    Images per group = gcd(B, group_images), so any batch size splits into equal groups.
    Returns the grouped array and the number of images per group.
    """
    rows, tokens, hidden = x.shape
    batch = rows // ensemble_size
    images = math.gcd(batch, group_images)
    # (B·M, T, H) -> (B, M, T, H) -> (B, T, M, H) -> (G, S, H)
    x = x.reshape(batch, ensemble_size, tokens, hidden).transpose(0, 2, 1, 3)
    return x.reshape(batch // images, images * tokens * ensemble_size, hidden), images


def from_groups(y: Array, ensemble_size: int, tokens: int) -> Array:
    """Inverse of ``to_groups`` for (G, S, H) or fanned-out (G, S, F, H) arrays.

    (G, S, H) -> (B, T, M, H) -> (B, M, T, H) -> (B·M, T, H);
    (G, S, F, H) -> (B, T, M, F, H) -> (B, M, F, T, H) -> (B·M·F, T, H), row (b·M + m)·F + f.
    """
    hidden = y.shape[-1]
    if y.ndim == 3:
        y = y.reshape(-1, tokens, ensemble_size, hidden).transpose(0, 2, 1, 3)
        return y.reshape(-1, tokens, hidden)
    fan = y.shape[2]
    y = y.reshape(-1, tokens, ensemble_size, fan, hidden).transpose(0, 2, 3, 1, 4)
    return y.reshape(-1, tokens, hidden)


def dispatch(
    x: Array, routing: Routing, positions: Array, num_experts: int, capacity: int
) -> tuple[Array, Array]:
    """Scatter tokens into expert buffers. x: (G, S, H) -> buffers (E, G, C, H), kept (G, S, J).

    One scatter per group (``jax.vmap`` over G, written expert-major): each group's buffers
    are written on the device that holds the group, so on a mesh nothing but the exchange
    of ``mesh_hook.to_expert_shards`` moves tokens between devices.
    """
    hidden = x.shape[-1]
    kept = positions < capacity  # (G, S, J)
    slot = jnp.where(kept, positions, capacity)  # C = out of range

    def one_group(xg, expert, at):  # (S, H), (S, J), (S, J) -> (E, C, H)
        updates = jnp.broadcast_to(xg[:, None, :], at.shape + (hidden,))  # (S, J, H)
        buffers = jnp.zeros((num_experts, capacity, hidden), xg.dtype)
        return buffers.at[expert, at].set(updates, mode="drop")

    return jax.vmap(one_group, out_axes=1)(x, routing.expert_index, slot), kept


def combine(
    expert_out: Array,
    routing: Routing,
    positions: Array,
    kept: Array,
    sum_selections: bool = True,
    dtype: Any = None,
) -> Array:
    """Gather expert outputs back to tokens, weighted by the raw gates.

    expert_out: (E, G, C, H) -> (G, S, H), or (G, S, J, H) when ``sum_selections`` is False.
    ``dtype``: of the weighting and sum (default ``expert_out``'s); a bfloat16-dispatched
    ``expert_out`` is gathered in bfloat16 and weighted in float32, as the reference's
    bfloat16 dispatcher combines bfloat16 data with float32 gates.
    """
    capacity = expert_out.shape[2]
    slot = jnp.clip(positions, 0, capacity - 1)
    # per group: (E, C, H)[(S, J), (S, J)] -> (S, J, H)
    gathered = jax.vmap(lambda out, expert, at: out[expert, at], in_axes=(1, 0, 0))(
        expert_out, routing.expert_index, slot
    ).astype(dtype or expert_out.dtype)  # (G, S, J, H)
    weights = jnp.where(kept, routing.gates, 0.0).astype(gathered.dtype)  # (G, S, J)
    contributions = gathered * weights[..., None]
    return contributions.sum(axis=2) if sum_selections else contributions


class MoeMlp(nn.Module):
    """Sparse MoE replacement of a block's MLP; returns ``(y, router metrics)``."""

    num_experts: int
    mlp_dim: int
    subsets: tuple[tuple[int, ...], ...]  # expert ids of each router
    num_selected: int  # K per router
    noise_std: float  # σ
    aux_weight: float  # λ
    router_per_copy: bool = True  # copy m -> router m (else every router)
    ensemble_size: int = 1  # M copies of each image entering this layer
    group_images: int = 8  # images (each with its M copies) per routing group
    capacity_factor: float = 1.5
    eval_capacity_factor: float | None = None  # None: same as training
    batch_priority: bool = False
    expert_dropout: float = 0.0
    keep_selections_apart: bool = False  # Multi-pred: J outputs per row instead of their sum
    expert_dropout_at_eval: bool = False  # MC-Dropout (App. G.2): expert dropout also at eval
    dtype: Any = jnp.float32
    # dtype of the dispatched and combined token buffers; None: the activations' own
    dispatch_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict]:
        _, tokens, _ = x.shape
        xg, _ = to_groups(x, self.ensemble_size, self.group_images)  # (G, S, H)
        groups, group_size, _ = xg.shape
        routing, metrics = NoisyTopKRouter(
            subsets=self.subsets,
            num_selected=self.num_selected,
            noise_std=self.noise_std,
            aux_weight=self.aux_weight,
            router_per_copy=self.router_per_copy,
            deterministic=not train,
            name="Router",
        )(xg)
        selections = routing.expert_index.shape[-1]  # J
        factor = self.capacity_factor
        if not train and self.eval_capacity_factor is not None:
            factor = self.eval_capacity_factor
        capacity = compute_capacity(group_size, selections, self.num_experts, factor)
        priority = routing.priority if self.batch_priority else None
        positions = jax.vmap(
            lambda idx, pr: buffer_positions(idx, self.num_experts, pr),
            in_axes=(0, 0 if priority is not None else None),
        )(routing.expert_index, priority)
        moved = self.dispatch_dtype or xg.dtype
        sent = xg.astype(moved)  # bfloat16 dispatch: half the bytes moved
        buffers, kept = dispatch(sent, routing, positions, self.num_experts, capacity)
        buffers = to_expert_shards(buffers)  # all-to-all to the experts' devices, if a mesh
        # (E, G, C, H) -> (E, G·C, H), back in the layer's dtype for the expert MLPs
        buffers = buffers.reshape(self.num_experts, -1, buffers.shape[-1]).astype(xg.dtype)
        experts = nn.vmap(
            MlpBlock,
            variable_axes={"params": 0},
            split_rngs={"params": False, "dropout": True},
            in_axes=0,
            out_axes=0,
            axis_size=self.num_experts,
        )
        sample = train or self.expert_dropout_at_eval
        expert_out = experts(
            self.mlp_dim,
            self.expert_dropout,
            deterministic=not sample,
            dtype=self.dtype,
            name="Mlp",
        )(buffers)  # (E, G·C, H)
        # (E, G·C, H) -> (E, G, C, H)
        received = expert_out.reshape(self.num_experts, groups, capacity, -1)
        received = to_group_shards(received.astype(moved))
        y = combine(
            received,
            routing,
            positions,
            kept,
            sum_selections=not self.keep_selections_apart,
            dtype=expert_out.dtype,
        )
        self.sow("intermediates", "expert_index", routing.expert_index)
        self.sow("intermediates", "kept", kept)
        metrics = dict(
            metrics,
            capacity=jnp.asarray(capacity),
            dropped_fraction=1.0 - jnp.mean(kept.astype(jnp.float32)),
        )
        return from_groups(y, self.ensemble_size, tokens).astype(x.dtype), metrics


def dense_moe_reference(
    expert_params: Any, mlp_dim: int, x: Array, routing: Routing, kept: Array
) -> Array:
    """Test oracle: every expert on every token, then the same gate-weighted combination.

    expert_params: the stacked ``Mlp`` parameters (leading axis E); x: (G, S, H).
    """
    block = MlpBlock(mlp_dim)
    all_out = jax.vmap(lambda p: block.apply({"params": p}, x))(expert_params)  # (E, G, S, H)
    # (E, G, S, H) -> (G, S, E, H)
    all_out = all_out.transpose(1, 2, 0, 3)
    picked = jnp.take_along_axis(all_out, routing.expert_index[..., None], axis=2)  # (G,S,J,H)
    weights = jnp.where(kept, routing.gates, 0.0)
    return jnp.sum(picked * weights[..., None], axis=2)
