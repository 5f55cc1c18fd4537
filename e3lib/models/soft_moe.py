"""Soft MoE (Puigcerver et al., "From Sparse to Soft Mixtures of Experts", ICLR 2024).

Notation: B images, M copies of each image (``ensemble_size``; 1 without tiling), T tokens
per image, H hidden size, Q expert MLP width, E experts, R routers (slot sets) per layer,
E_r experts of one router, n slots per expert (``model.slots_per_expert``), P = E_r·n slots
of one router. X (T, H) are one row's tokens, Φ (H, P) the slot parameters of its router.

Per row (one copy of one image), no grouping across images and no token dropping:

* logits ``L = X Φ`` (T, P); with ``model.soft_moe_normalize`` X is L2-normalised over H
  and Φ over H per slot and scaled by a learned scalar (the paper's normalisation).
* dispatch weights ``D = softmax_T(L)``: each slot's weights over the T tokens sum to one;
  slot inputs ``X̃ = Dᵀ X`` (P, H).
* each expert's MLP runs on its n slots: slot p of router r belongs to expert
  ``subsets[r][p // n]``; outputs Ỹ (P, H).
* combine weights ``C = softmax_P(L)``: each token's weights over the P slots sum to one;
  outputs ``Y = C Ỹ`` (T, H).

``soft_moe``: one router over all E experts (R = 1). ``soft_e3``: the E³ construction on
top, rows tiled M times before the first MoE block and copy m's slots over the m-th
disjoint subset of E/M experts (R = M), so the M members share nothing inside the layer.

Experts are the V-MoE's (a vmapped ``MlpBlock`` named "Mlp", parameters (E, ...)), so a
V-MoE checkpoint converts into them; Φ and the scale start from their initialisation
(``prepare_upstream``). The layer has no auxiliary loss (``aux_loss`` = 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from e3lib.models.factory import DTYPES, dense_mlp, vit_kwargs
from e3lib.models.layout import MoeLayout, default_backbone
from e3lib.models.vit import MlpBlock, VisionTransformer

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Array = jax.Array
FRESH_LEAVES = ("slots", "slot_scale")  # Soft MoE leaves a V-MoE upstream does not have


def _l2_normalize(v: Array, axis: int) -> Array:
    return v * jax.lax.rsqrt(jnp.sum(v * v, axis=axis, keepdims=True) + 1e-6)


def soft_weights(x: Array, phi: Array) -> tuple[Array, Array]:
    """Dispatch and combine weights. x: (B, M, T, H), phi: (H, M, P) -> two (B, M, T, P).

    Dispatch is a softmax over the T tokens (axis 2), combine over the P slots (axis 3).
    """
    logits = jnp.einsum("bmth,hmp->bmtp", x, phi)  # (B, M, T, P)
    return jax.nn.softmax(logits, axis=2), jax.nn.softmax(logits, axis=3)


class SoftMoeMlp(nn.Module):
    """Soft MoE replacement of a block's MLP; returns ``(y, metrics)``."""

    num_experts: int
    mlp_dim: int
    subsets: tuple[tuple[int, ...], ...]  # (R, E_r): each expert in exactly one subset
    slots_per_expert: int = 1  # n
    ensemble_size: int = 1  # M copies per image entering this layer
    normalize: bool = False  # the paper's normalisation of X and Φ
    expert_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict]:
        rows, tokens, hidden = x.shape
        M, R, n = self.ensemble_size, len(self.subsets), self.slots_per_expert
        E_r = len(self.subsets[0])
        P = E_r * n
        order = [e for subset in self.subsets for e in subset]  # R·E_r ids
        if sorted(order) != list(range(self.num_experts)) or R not in (1, M):
            raise ValueError(
                f"Soft MoE needs disjoint subsets covering E={self.num_experts} "
                f"experts, one router or one per copy (R={R}, M={M})"
            )
        phi = self.param(
            "slots",
            nn.initializers.lecun_normal(in_axis=0, out_axis=-1, batch_axis=(1,)),
            (hidden, R, P),
        )  # (H, R, P)
        xf = x.astype(jnp.float32).reshape(rows // M, M, tokens, hidden)  # (B, M, T, H)
        phi_m = jnp.broadcast_to(phi, (hidden, M, P)) if R == 1 else phi  # (H, M, P)
        if self.normalize:
            scale = self.param("slot_scale", nn.initializers.ones, ())
            xf, phi_m = _l2_normalize(xf, -1), scale * _l2_normalize(phi_m, 0)
        dispatch, combine = soft_weights(xf, phi_m)  # (B, M, T, P)
        self.sow("intermediates", "dispatch", dispatch)
        self.sow("intermediates", "combine", combine)
        x_in = x.reshape(rows // M, M, tokens, hidden)  # (B, M, T, H)
        slot_in = jnp.einsum("bmtp,bmth->bmph", dispatch.astype(x.dtype), x_in)  # (B,M,P,H)
        batch = rows // M
        # Slots -> per-expert rows (E, ·, H), experts in the order of ``order``.
        s = slot_in.reshape(batch, M, E_r, n, hidden)  # (B, M, E_r, n, H)
        if R == 1:  # (B, M, E, n, H) -> (E, B, M, n, H) -> (E, B·M·n, H)
            per_expert = s.transpose(2, 0, 1, 3, 4).reshape(E_r, batch * M * n, hidden)
        else:  # (B, M, E_r, n, H) -> (M, E_r, B, n, H) -> (M·E_r, B·n, H)
            per_expert = s.transpose(1, 2, 0, 3, 4).reshape(M * E_r, batch * n, hidden)
        inverse = np.argsort(order)
        identity = bool((inverse == np.arange(len(order))).all())
        if not identity:
            per_expert = per_expert[inverse]  # expert-id order
        experts = nn.vmap(
            MlpBlock,
            variable_axes={"params": 0},
            split_rngs={"params": False, "dropout": True},
            in_axes=0,
            out_axes=0,
            axis_size=self.num_experts,
        )
        out = experts(
            self.mlp_dim, self.expert_dropout, deterministic=not train, dtype=self.dtype, name="Mlp"
        )(per_expert)  # (E, ·, H)
        if not identity:
            out = out[np.asarray(order)]  # back to ``order``
        if R == 1:  # (E, B·M·n, H) -> (E, B, M, n, H) -> (B, M, E, n, H)
            out = out.reshape(E_r, batch, M, n, hidden).transpose(1, 2, 0, 3, 4)
        else:  # (M·E_r, B·n, H) -> (M, E_r, B, n, H) -> (B, M, E_r, n, H)
            out = out.reshape(M, E_r, batch, n, hidden).transpose(2, 0, 1, 3, 4)
        slot_out = out.reshape(batch, M, P, hidden)  # (B, M, P, H)
        y = jnp.einsum("bmtp,bmph->bmth", combine.astype(x.dtype), slot_out)  # (B, M, T, H)
        return y.reshape(rows, tokens, hidden), {"aux_loss": jnp.zeros(())}


def soft_moe_mlp_factory(
    cfg: RunConfig, spec: Mapping[str, Any], layout: MoeLayout
) -> Callable[[int, bool], nn.Module]:
    """Dense MLPs, except ``SoftMoeMlp`` (named "Moe") in the blocks ``spec["moe_layers"]``."""
    m = cfg.model

    def factory(block: int, train: bool) -> nn.Module:
        if block not in spec["moe_layers"]:
            return dense_mlp(cfg, spec)
        return SoftMoeMlp(
            num_experts=m.num_experts,
            mlp_dim=spec["mlp"],
            subsets=layout.subsets,
            slots_per_expert=m.slots_per_expert,
            ensemble_size=layout.ensemble_size,
            normalize=m.soft_moe_normalize,
            expert_dropout=m.expert_dropout,
            dtype=DTYPES[m.dtype],
            name="Moe",
        )

    return factory


def build_soft_moe(
    cfg: RunConfig, spec: Mapping[str, Any], layout: MoeLayout, num_classes: int
) -> nn.Module:
    """Soft MoE ViT (and its E³ ensemble: rows tiled M times before the first MoE block)."""
    rows = default_backbone(cfg, spec, layout)
    return VisionTransformer(
        mlp_factory=soft_moe_mlp_factory(cfg, spec, layout),
        tile_before=rows.tile_before,
        ensemble_size=rows.ensemble_size,
        **vit_kwargs(cfg, spec, num_classes),
    )


def prepare_upstream(
    upstream: Mapping, target: Mapping, cfg: RunConfig, keep_head: bool = False
) -> dict:
    """V-MoE upstream -> Soft MoE: Φ and its scale keep the target's initialisation; the
    expert MLPs and everything else convert as for V-MoE. The upstream router is not used:
    its leaves are removed here (a stated choice, not a silently unused leaf)."""
    source = {
        p: v
        for p, v in traverse_util.flatten_dict(dict(upstream), sep="/").items()
        if "/Moe/Router/" not in p
    }
    for path, leaf in traverse_util.flatten_dict(dict(target), sep="/").items():
        if path.rsplit("/", 1)[-1] in FRESH_LEAVES:
            source[path] = leaf
    return traverse_util.unflatten_dict(source, sep="/")
