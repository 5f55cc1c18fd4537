"""Noisy top-K-per-item routing: gates, capacity, buffer positions, auxiliary losses.

Notation: G groups, S tokens per group (all member copies included), H hidden size,
E experts in the layer, K experts selected per token by one router, R routers in the layer
(1 for V-MoE and Tiling, M for E³ / overlap / Partitioning), E_r experts one router sees,
S_r tokens one router sees per group (S/M when each copy has its own router, else S),
J expert selections per token (K, or K·R when every token visits every router), C capacity
(buffer slots per expert per group).

Numerics (vmoe-reference.md §3, §4, §11):

* logits ``z = x W_r`` (Dense without bias, lecun-normal), per router r.
* training: ``z̃ = z + σ·ε``, ε ~ N(0, 1) from the ``"gating"`` rng, drawn per router;
  gates = softmax(z̃) over the router's E_r experts. Evaluation: gates = softmax(z).
* top-K per token; the combine weight is the raw gate value (no renormalisation).
* importance loss: ``CV²(Σ_s softmax(z)[s, e])`` on the clean softmax, population std.
* load loss (training only): τ_s = K-th largest noisy logit,
  ``p[s,e] = 1 − Φ((τ_s − z[s,e])/σ)``, ``CV²(mean_s p[s, e])``.
* per (group, router): aux = λ/2·(importance + load) (evaluation: λ/2·importance); the layer's
  aux is the mean over groups and routers (Ω_partition of Appendix C.2 when R = M).
* capacity ``C = roundup4(ceil(S·J·C_f/E))`` (``layout.compute_capacity``); buffer
  positions are assigned K-major (every token's first choice before any second choice), in
  token order or, with batch-prioritized routing, in order of decreasing top-1 gate;
  selections at position ≥ C are dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

Array = jax.Array


ARGMAX_TOP_K_MAX = 4  # K up to which ``top_k`` uses K masked argmax passes instead of a sort


def top_k(x: Array, k: int) -> tuple[Array, Array]:
    """``jax.lax.top_k`` over the last axis: (..., N) -> values, indices (..., k).

    For k ≤ ``ARGMAX_TOP_K_MAX`` it takes k masked argmax passes (each a single fused
    reduction) instead of XLA's sort of the whole row, which dominates the router on CPU.
    The result is the same, bit for bit, for finite inputs: a pass returns the first
    position holding the largest remaining value, which is the order of ``lax.top_k``
    (descending, ties by lower index), and values are taken from ``x`` unchanged, so
    gradients flow to the same positions.
    """
    if k > ARGMAX_TOP_K_MAX:
        return jax.lax.top_k(x, k)
    remaining = x
    picked = []
    for _ in range(k):
        index = jnp.argmax(remaining, axis=-1)  # (...,)
        picked.append(index)
        taken = jax.nn.one_hot(index, x.shape[-1], dtype=jnp.bool_)  # (..., N)
        remaining = jnp.where(taken, -jnp.inf, remaining)
    indices = jnp.stack(picked, axis=-1).astype(jnp.int32)  # (..., k)
    return jnp.take_along_axis(x, indices, axis=-1), indices


def coefficient_of_variation_squared(values: Array, axis: int = -1) -> Array:
    """(std/mean)² along ``axis`` with the population std (ddof=0)."""
    return (jnp.std(values, axis=axis) / jnp.mean(values, axis=axis)) ** 2


def importance_loss(gates_clean: Array) -> Array:
    """CV² of the per-expert sum of clean gates. gates_clean: (..., S_r, E_r) -> (...)."""
    return coefficient_of_variation_squared(jnp.sum(gates_clean, axis=-2))


def load_loss(
    logits_clean: Array, logits_noisy: Array, noise_std: float, num_selected: int
) -> Array:
    """CV² of each expert's probability of being selected under fresh noise.

    logits: (..., S_r, E_r) -> (...). The threshold of token s is the K-th largest noisy
    logit; expert e stays selected if its clean logit plus noise exceeds it.
    """
    threshold = top_k(logits_noisy, num_selected)[0][..., -1:]  # (..., S_r, 1)
    p_selected = 1.0 - norm.cdf((threshold - logits_clean) / noise_std)  # (..., S_r, E_r)
    return coefficient_of_variation_squared(jnp.mean(p_selected, axis=-2))


def buffer_positions(expert_index: Array, num_experts: int, priority: Array | None = None) -> Array:
    """Position of each (token, selection) in its expert's buffer, for one group.

    expert_index: (S, J) int; priority: optional (S,) score, higher served first (BPR).
    Returns (S, J) int positions 0, 1, 2, ... per expert, K-major: all selections j=0 of
    every token are queued before any selection j=1.
    """
    num_tokens, num_slots = expert_index.shape
    order = jnp.arange(num_tokens) if priority is None else jnp.argsort(-priority, stable=True)
    ordered = expert_index[order]  # (S, J)
    flat = ordered.T.reshape(-1)  # (J·S,) K-major
    one_hot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)  # (J·S, E)
    position = jnp.sum(jnp.cumsum(one_hot, axis=0) * one_hot, axis=-1) - 1  # (J·S,)
    position = position.reshape(num_slots, num_tokens).T  # (S, J) in `order`
    return jnp.zeros_like(position).at[order].set(position)  # back to token order


class Routing(NamedTuple):
    """Expert selections of every token of every group."""

    expert_index: Array  # (G, S, J) int, global expert ids
    gates: Array  # (G, S, J) float, raw gate values (combine weights)
    priority: Array  # (G, S) top-1 gate of each token (batch-prioritized routing)


class NoisyTopKRouter(nn.Module):
    """R noisy top-K routers, router r choosing among the experts ``subsets[r]``.

    router_per_copy=True: the S tokens of a group are copies interleaved copy-fast
    (s = t·R + r) and copy r is routed by router r only (E³, overlap; V-MoE/Tiling with R=1).
    router_per_copy=False: every token is routed by every router, J = K·R selections
    (Partitioning). See ``e3lib.models.layout.MoeLayout``.
    The kernel is stored as (H, R, E_r): a V-MoE kernel (H, E) is (H, 1, E).
    """

    subsets: tuple[tuple[int, ...], ...]  # (R, E_r) global expert ids
    num_selected: int  # K per router
    noise_std: float  # σ, already divided by the experts it scales with
    aux_weight: float  # λ
    router_per_copy: bool = True
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> tuple[Routing, dict]:
        groups, tokens, hidden = x.shape
        num_routers, experts_per_router = len(self.subsets), len(self.subsets[0])
        if self.num_selected > experts_per_router:
            raise ValueError(
                f"K={self.num_selected} selected experts exceed the "
                f"{experts_per_router} experts a router sees"
            )
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(in_axis=0, out_axis=-1, batch_axis=(1,)),
            (hidden, num_routers, experts_per_router),
        )
        x = x.astype(jnp.float32)
        if self.router_per_copy:
            if tokens % num_routers:
                raise ValueError(f"group size S={tokens} not divisible by routers R={num_routers}")
            # (G, S, H) -> (G, S/R, R, H): copy r of each token goes to router r.
            x_r = x.reshape(groups, tokens // num_routers, num_routers, hidden)
            logits = jnp.einsum("gtrh,hre->gtre", x_r, kernel)  # (G, S_r, R, E_r)
        else:
            logits = jnp.einsum("gsh,hre->gsre", x, kernel)  # (G, S, R, E_r)
        gates_clean = jax.nn.softmax(logits, axis=-1)
        # (G, S_r, R, E_r) -> (G, R, S_r, E_r) for per-(group, router) statistics.
        per_router = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731
        imp = importance_loss(per_router(gates_clean))  # (G, R)
        noisy = not self.deterministic and self.noise_std > 0
        if noisy:
            noise = self.noise_std * jax.random.normal(self.make_rng("gating"), logits.shape)
            logits_noisy = logits + noise
            gates = jax.nn.softmax(logits_noisy, axis=-1)
            load = load_loss(
                per_router(logits), per_router(logits_noisy), self.noise_std, self.num_selected
            )  # (G, R)
        else:
            gates, load = gates_clean, jnp.zeros_like(imp)
        aux = 0.5 * self.aux_weight * (imp + load) if self.aux_weight > 0 else jnp.zeros_like(imp)

        top_gates, local_index = top_k(gates, self.num_selected)  # (G, S_r, R, K)
        subsets = jnp.asarray(self.subsets, dtype=jnp.int32)  # (R, E_r)
        global_index = subsets[jnp.arange(num_routers)[:, None], local_index]  # (G, S_r, R, K)
        if self.router_per_copy:
            # (G, S/R, R, K) -> (G, S, K): token s = t·R + r.
            expert_index = global_index.reshape(groups, tokens, self.num_selected)
            sel_gates = top_gates.reshape(groups, tokens, self.num_selected)
        else:
            # (G, S, R, K) -> (G, S, K, R) -> (G, S, K·R): slot k·R + r, k-major.
            expert_index = jnp.swapaxes(global_index, 2, 3).reshape(groups, tokens, -1)
            sel_gates = jnp.swapaxes(top_gates, 2, 3).reshape(groups, tokens, -1)
        metrics = {
            "aux_loss": jnp.mean(aux),
            "importance_loss": jnp.mean(imp),
            "load_loss": jnp.mean(load),
        }
        return Routing(expert_index, sel_gates, jnp.max(sel_gates, axis=-1)), metrics
