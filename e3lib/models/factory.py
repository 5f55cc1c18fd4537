"""The shared builders: ViT and top-K MoE models from a resolved config, size spec and layout.

Notation: E experts, K selected per token (per router), M ensemble size, o overlap,
R routers per MoE layer, σ router noise std, λ auxiliary-loss strength.

``e3lib.models.build.build_model`` looks the method up in ``e3lib.models.registry``,
resolves the size (``sizes.size_spec``) and the MoE layout (``Method.layout``) once, and
hands both to the method's builder. How each method of §4.2 maps onto the shared pieces
(``vit.VisionTransformer`` + ``moe.MoeMlp``), as the registry's layouts say:

=============  ============  ======================  ===============  =====================
method         tiling (M)    routers R, subsets      router_per_copy  notes
=============  ============  ======================  ===============  =====================
vit            no            (dense MLPs)            -
vmoe           no            1 over all E            yes
e3             M before      M contiguous E/M        yes              o > 0: (E−o)/M unique
               1st MoE blk                                            + o shared; o = E is
                                                                      Tiling (one router)
tiling         M before      1 over all E            yes              σ via noise_mult
partitioning   no            M contiguous E/M        no               K per subset, K·M/token;
                                                                      partition_k=total: K/M
                                                                      per subset, K/token
multipred      no            1 over all E            yes              last MoE layer: K
                                                                      outputs apart
=============  ============  ======================  ===============  =====================

The builders here take ``(cfg, spec, layout, num_classes)``; other methods' modules reuse
``vit_kwargs`` and ``moe_mlp_factory``. The config is trusted: it was validated once, by
``e3lib.config.resolve``, where it entered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import flax.linen as nn
import jax.numpy as jnp

from e3lib.models.layout import MoeLayout, default_backbone, router_noise_std
from e3lib.models.moe import MoeMlp
from e3lib.models.vit import DenseMlp, VisionTransformer

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
Cfg: TypeAlias = "RunConfig"  # e3lib.run_config (type only: it sits above)
Spec = Mapping[str, Any]


def vit_kwargs(cfg: Cfg, spec: Spec, num_classes: int) -> dict:
    """Backbone arguments of ``VisionTransformer`` common to every method."""
    m = cfg.model
    bias = m.head_bias_init
    return dict(
        num_classes=num_classes,
        patch_size=spec["patch"],
        hidden_size=spec["hidden"],
        num_layers=spec["layers"],
        num_heads=spec["heads"],
        dropout_rate=m.dropout,
        attention_dropout_rate=0.0,
        representation=m.representation,
        head_bias_init=-math.log(num_classes) if bias is None else float(bias),
        dtype=DTYPES[m.dtype],
        remat=m.remat,
    )


def dense_mlp(cfg: Cfg, spec: Spec) -> nn.Module:
    """A block's dense ViT MLP (named "Mlp")."""
    m = cfg.model
    return DenseMlp(spec["mlp"], m.dropout, dtype=DTYPES[m.dtype], name="Mlp")


def dense_mlp_factory(cfg: Cfg, spec: Spec) -> Callable[[int, bool], nn.Module]:
    """Every block dense (ViT)."""
    return lambda block, train: dense_mlp(cfg, spec)


def moe_mlp_factory(
    cfg: Cfg,
    spec: Spec,
    layout: MoeLayout,
    *,
    ensemble_size: int,
    expert_dropout_at_eval: bool = False,
) -> Callable[[int, bool], nn.Module]:
    """Dense MLPs, except ``MoeMlp`` (named "Moe") in the blocks ``spec["moe_layers"]``.

    ``ensemble_size``: M copies of each image entering the MoE layers (``layout.ensemble_size``
    unless the method tiles differently, as MC-Dropout does at training time).
    """
    m = cfg.model
    moe_blocks = spec["moe_layers"]
    noise_std = layer_noise_std(cfg, layout)

    def factory(block: int, train: bool) -> nn.Module:
        if block not in moe_blocks:
            return dense_mlp(cfg, spec)
        return MoeMlp(
            num_experts=m.num_experts,
            mlp_dim=spec["mlp"],
            subsets=layout.subsets,
            num_selected=layout.router_k(m.num_selected),
            noise_std=noise_std,
            aux_weight=m.aux_weight,
            router_per_copy=layout.router_per_copy,
            ensemble_size=ensemble_size,
            group_images=m.group_images,
            capacity_factor=m.capacity_factor,
            eval_capacity_factor=m.eval_capacity_factor,
            batch_priority=m.batch_priority,
            expert_dropout=m.expert_dropout,
            keep_selections_apart=layout.multipred_last and block == moe_blocks[-1],
            expert_dropout_at_eval=expert_dropout_at_eval,
            dtype=DTYPES[m.dtype],
            dispatch_dtype=None if m.dispatch_dtype == "float32" else DTYPES[m.dispatch_dtype],
            name="Moe",
        )

    return factory


def layer_noise_std(cfg: Cfg, layout: MoeLayout) -> float:
    """σ of every MoE layer's router noise for this config."""
    m = cfg.model
    return router_noise_std(m.noise_mult, m.num_experts, len(layout.subsets[0]), m.noise_scaling)


def build_vit(cfg: Cfg, spec: Spec, layout: MoeLayout | None, num_classes: int) -> nn.Module:
    return VisionTransformer(
        mlp_factory=dense_mlp_factory(cfg, spec), **vit_kwargs(cfg, spec, num_classes)
    )


def build_moe(cfg: Cfg, spec: Spec, layout: MoeLayout, num_classes: int) -> nn.Module:
    """V-MoE, E³ (with overlap), Tiling, Partitioning and Multi-pred (see the table above)."""
    factory = moe_mlp_factory(cfg, spec, layout, ensemble_size=layout.ensemble_size)
    rows = default_backbone(cfg, spec, layout)
    return VisionTransformer(
        mlp_factory=factory,
        tile_before=rows.tile_before,
        ensemble_size=rows.ensemble_size,
        **vit_kwargs(cfg, spec, num_classes),
    )
