"""Per-method terms that the registry (``e3lib.models.registry.METHODS``) points to.

MoE layouts, backbones that differ from the default, parameter and FLOPs terms, config
fields of a method's own, builders and upstream hooks. Each function is reached through its
method's ``Method`` entry; nothing here reads the registry. Like the registry, this module is
free of JAX: builders and upstream hooks import their model module when called.

Notation: E experts, K selected per token, M ensemble size, o overlap, H hidden size,
Q MLP width, T tokens, P slots per router, r rows.
"""

from __future__ import annotations

from typing import Any

from e3lib.models.checks import Cfg, Spec
from e3lib.models.layout import Backbone, MoeLayout, expert_subsets

# Partitioning's K (§4.2.1 vs Table 22): "per_subset" = K experts chosen in each of the M
# subsets (K·M per token, the paper's text); "total" = K in all, K/M per subset (the cost
# Table 22 prints). The reference code has no Partitioning model, so the text is the default.
PARTITION_FIELDS = {"model.partition_k": "per_subset"}


# --------------------------------------------------------------------------------------
# MoE layouts (docs/models.md, "Methods and layouts") and backbones that differ from the
# default (rows tiled M times before the first MoE block).


def _all_experts(cfg: Cfg) -> tuple[tuple[int, ...], ...]:
    return (tuple(range(cfg.model.num_experts)),)


def one_router(cfg: Cfg, spec: Spec) -> MoeLayout:  # V-MoE, MIMO
    return MoeLayout(_all_experts(cfg), True, 1)


def one_router_tiled(cfg: Cfg, spec: Spec) -> MoeLayout:  # Tiling, MC-Dropout
    return MoeLayout(_all_experts(cfg), True, cfg.model.ensemble_size)


def e3_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    m = cfg.model
    E, M, o = m.num_experts, m.ensemble_size, m.overlap
    if o == E:  # every member sees every expert: Tiling
        return one_router_tiled(cfg, spec)
    return MoeLayout(expert_subsets(E, M, o), True, M)


def partitioning_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    m = cfg.model
    split = m.ensemble_size if m.partition_k == "total" else 1
    return MoeLayout(expert_subsets(m.num_experts, m.ensemble_size, 0), False, 1, k_split=split)


def multipred_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    return MoeLayout(_all_experts(cfg), True, 1, multipred_last=True)


def batchensemble_backbone(cfg: Cfg, spec: Spec, layout: MoeLayout | None) -> Backbone:
    return Backbone(tile_before=spec["moe_layers"][0], ensemble_size=cfg.model.ensemble_size)


def mimo_backbone(cfg: Cfg, spec: Spec, layout: MoeLayout | None) -> Backbone:
    m = cfg.model
    return Backbone(
        input_rows=m.mimo_batch_repetition,
        input_channels=3 * m.ensemble_size,
        head_outputs=m.ensemble_size,
        rows_are_inputs=True,
    )


def batchensemble_params(cfg: Cfg, spec: Spec) -> int:
    """r_m, s_m of both dense layers and M − 1 more bias copies, per BatchEnsemble MLP."""
    H, Q, M = spec["hidden"], spec["mlp"], cfg.model.ensemble_size
    return len(spec["moe_layers"]) * (3 * M - 1) * (H + Q)


# --------------------------------------------------------------------------------------
# Builders ``(cfg, spec, layout, num_classes) -> flax module`` and upstream hooks
# ``(upstream, target, cfg, keep_head) -> upstream``; each imports its module when called.


def build_vit(cfg, spec, layout, num_classes):
    from e3lib.models.factory import build_vit

    return build_vit(cfg, spec, layout, num_classes)


def build_moe(cfg, spec, layout, num_classes):
    from e3lib.models.factory import build_moe

    return build_moe(cfg, spec, layout, num_classes)


def build_batchensemble(cfg, spec, layout, num_classes):
    from e3lib.models.batchensemble import build_batchensemble

    return build_batchensemble(cfg, spec, layout, num_classes)


def build_mc_dropout(cfg, spec, layout, num_classes):
    from e3lib.models.mc_dropout import build_mc_dropout

    return build_mc_dropout(cfg, spec, layout, num_classes)


def build_mimo(cfg, spec, layout, num_classes):
    from e3lib.models.mimo import build_mimo

    return build_mimo(cfg, spec, layout, num_classes)


def prepare_batchensemble(upstream, target, cfg, keep_head):
    from e3lib.models.batchensemble import prepare_upstream

    return prepare_upstream(upstream, target, cfg, keep_head)


def prepare_mimo(upstream, target, cfg, keep_head):
    from e3lib.models.mimo import prepare_upstream

    return prepare_upstream(upstream, target, cfg, keep_head)


# --------------------------------------------------------------------------------------
# Soft MoE (e3lib/models/soft_moe.py): P = E_r·n slots per router, n slots per expert.


def soft_e3_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    m = cfg.model
    return MoeLayout(expert_subsets(m.num_experts, m.ensemble_size, 0), True, m.ensemble_size)


def soft_moe_flops(blk: Any) -> dict:
    """Logits XΦ, slot inputs DᵀX, experts on r·P slots, outputs CỸ, and two softmaxes."""
    H, Q, T, r = blk.spec["hidden"], blk.spec["mlp"], blk.tokens, blk.rows
    P = len(blk.layout.subsets[0]) * blk.cfg.model.slots_per_expert
    return {
        "router": blk.train_matmul(r * T, H, P),
        "dispatch": blk.train_matmul(r * P, T, H) + blk.train_matmul(r * T, P, H),
        "experts": blk.train_matmul(r * P, H, 2 * Q),
        "elementwise": blk.mlp_elementwise(r * P) + 2 * SOFTMAX_FLOPS * r * T * P,
    }


def soft_moe_params(cfg: Cfg, spec: Spec, layout: MoeLayout) -> int:
    H, Q, m = spec["hidden"], spec["mlp"], cfg.model
    slots = len(layout.subsets) * len(layout.subsets[0]) * m.slots_per_expert
    return m.num_experts * (2 * H * Q + Q + H) + H * slots + int(m.soft_moe_normalize)


def build_soft_moe(cfg, spec, layout, num_classes):
    from e3lib.models.soft_moe import build_soft_moe

    return build_soft_moe(cfg, spec, layout, num_classes)


def prepare_soft_moe(upstream, target, cfg, keep_head):
    from e3lib.models.soft_moe import prepare_upstream

    return prepare_upstream(upstream, target, cfg, keep_head)


# Elementwise FLOPs per softmax entry, forward + backward (exp, sum, divide and their
# gradients), as XLA counts them (tests/test_soft_moe.py compares with XLA).
SOFTMAX_FLOPS = 8
SOFT_FIELDS = {"model.slots_per_expert": 1, "model.soft_moe_normalize": False}
