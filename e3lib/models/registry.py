"""Methods selectable by name from a run config (``method:`` in a sweep file).

One ``Method`` entry per method holds everything the toolkit knows about it: the upstream it
fine-tunes from and how upstream leaves are prepared for it, its cross-field config rules
(its function of ``e3lib.models.checks``) and any config fields of its own, the layout of
its MoE layers (routers, expert subsets, tiling), how many predictions per image it yields,
how rows flow through the backbone (for the analytic FLOPs and parameter counts) and the
function that builds its Flax model. The config validation, ``build.build_model``,
``convert``, ``e3lib.cost`` and the sweep schema's method check all read this table; a new
method is one model module plus one entry (and its check function).

This module stays free of JAX: the config reads it when a sweep file is parsed. Builders
and upstream hooks therefore import their model module when called (``_build_*``); no
model module imports this one (``build.build_model`` and ``convert`` do), so there is no
import cycle.

Notation: E experts, K selected per token, M ensemble size, o overlap, H hidden size,
Q MLP width, L blocks, R routers per MoE layer, E_r experts per router.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from e3lib.errors import ConfigError
from e3lib.models.checks import (
    Cfg,
    Spec,
    check_batchensemble,
    check_e3,
    check_mc_dropout,
    check_mimo,
    check_moe,
    check_multipred,
    check_partitioning,
    check_single,
    check_soft_moe,
    check_vmoe,
)
from e3lib.models.layout import Backbone, MoeLayout, default_backbone, expert_subsets

# Partitioning's K (§4.2.1 vs Table 22): "per_subset" = K experts chosen in each of the M
# subsets (K·M per token, the paper's text); "total" = K in all, K/M per subset (the cost
# Table 22 prints). The reference code has no Partitioning model, so the text is the default.
_PARTITION_FIELDS = {"model.partition_k": "per_subset"}


# --------------------------------------------------------------------------------------
# MoE layouts (docs/models.md, "Methods and layouts") and backbones that differ from the
# default (rows tiled M times before the first MoE block).


def _all_experts(cfg: Cfg) -> tuple[tuple[int, ...], ...]:
    return (tuple(range(cfg["model"]["num_experts"])),)


def _one_router(cfg: Cfg, spec: Spec) -> MoeLayout:  # V-MoE, MIMO
    return MoeLayout(_all_experts(cfg), True, 1)


def _one_router_tiled(cfg: Cfg, spec: Spec) -> MoeLayout:  # Tiling, MC-Dropout
    return MoeLayout(_all_experts(cfg), True, cfg["model"]["ensemble_size"])


def _e3_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    m = cfg["model"]
    E, M, o = m["num_experts"], m["ensemble_size"], m["overlap"]
    if o == E:  # every member sees every expert: Tiling
        return _one_router_tiled(cfg, spec)
    return MoeLayout(expert_subsets(E, M, o), True, M)


def _partitioning_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    m = cfg["model"]
    split = m["ensemble_size"] if m["partition_k"] == "total" else 1
    return MoeLayout(
        expert_subsets(m["num_experts"], m["ensemble_size"], 0), False, 1, k_split=split
    )


def _multipred_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    return MoeLayout(_all_experts(cfg), True, 1, multipred_last=True)


def _batchensemble_backbone(cfg: Cfg, spec: Spec, layout: MoeLayout | None) -> Backbone:
    return Backbone(tile_before=spec["moe_layers"][0], ensemble_size=cfg["model"]["ensemble_size"])


def _mimo_backbone(cfg: Cfg, spec: Spec, layout: MoeLayout | None) -> Backbone:
    m = cfg["model"]
    return Backbone(
        input_rows=m["mimo_batch_repetition"],
        input_channels=3 * m["ensemble_size"],
        head_outputs=m["ensemble_size"],
        rows_are_inputs=True,
    )


def _batchensemble_params(cfg: Cfg, spec: Spec) -> int:
    """r_m, s_m of both dense layers and M − 1 more bias copies, per BatchEnsemble MLP."""
    H, Q, M = spec["hidden"], spec["mlp"], cfg["model"]["ensemble_size"]
    return len(spec["moe_layers"]) * (3 * M - 1) * (H + Q)


# --------------------------------------------------------------------------------------
# Builders ``(cfg, spec, layout, num_classes) -> flax module`` and upstream hooks
# ``(upstream, target, cfg, keep_head) -> upstream``; each imports its module when called.


def _build_vit(cfg, spec, layout, num_classes):
    from e3lib.models.factory import build_vit

    return build_vit(cfg, spec, layout, num_classes)


def _build_moe(cfg, spec, layout, num_classes):
    from e3lib.models.factory import build_moe

    return build_moe(cfg, spec, layout, num_classes)


def _build_batchensemble(cfg, spec, layout, num_classes):
    from e3lib.models.batchensemble import build_batchensemble

    return build_batchensemble(cfg, spec, layout, num_classes)


def _build_mc_dropout(cfg, spec, layout, num_classes):
    from e3lib.models.mc_dropout import build_mc_dropout

    return build_mc_dropout(cfg, spec, layout, num_classes)


def _build_mimo(cfg, spec, layout, num_classes):
    from e3lib.models.mimo import build_mimo

    return build_mimo(cfg, spec, layout, num_classes)


def _prepare_batchensemble(upstream, target, cfg, keep_head):
    from e3lib.models.batchensemble import prepare_upstream

    return prepare_upstream(upstream, target, cfg, keep_head)


def _prepare_mimo(upstream, target, cfg, keep_head):
    from e3lib.models.mimo import prepare_upstream

    return prepare_upstream(upstream, target, cfg, keep_head)


# --------------------------------------------------------------------------------------
# Soft MoE (e3lib/models/soft_moe.py): P = E_r·n slots per router, n slots per expert.


def _soft_e3_layout(cfg: Cfg, spec: Spec) -> MoeLayout:
    m = cfg["model"]
    return MoeLayout(
        expert_subsets(m["num_experts"], m["ensemble_size"], 0), True, m["ensemble_size"]
    )


def _soft_moe_flops(blk: Any) -> dict:
    """Logits XΦ, slot inputs DᵀX, experts on r·P slots, outputs CỸ, and two softmaxes."""
    H, Q, T, r = blk.spec["hidden"], blk.spec["mlp"], blk.tokens, blk.rows
    P = len(blk.layout.subsets[0]) * blk.cfg["model"]["slots_per_expert"]
    return {
        "router": blk.train_matmul(r * T, H, P),
        "dispatch": blk.train_matmul(r * P, T, H) + blk.train_matmul(r * T, P, H),
        "experts": blk.train_matmul(r * P, H, 2 * Q),
        "elementwise": blk.mlp_elementwise(r * P) + 2 * SOFTMAX_FLOPS * r * T * P,
    }


def _soft_moe_params(cfg: Cfg, spec: Spec, layout: MoeLayout) -> int:
    H, Q, m = spec["hidden"], spec["mlp"], cfg["model"]
    slots = len(layout.subsets) * len(layout.subsets[0]) * m["slots_per_expert"]
    return m["num_experts"] * (2 * H * Q + Q + H) + H * slots + int(m["soft_moe_normalize"])


def _build_soft_moe(cfg, spec, layout, num_classes):
    from e3lib.models.soft_moe import build_soft_moe

    return build_soft_moe(cfg, spec, layout, num_classes)


def _prepare_soft_moe(upstream, target, cfg, keep_head):
    from e3lib.models.soft_moe import prepare_upstream

    return prepare_upstream(upstream, target, cfg, keep_head)


# Elementwise FLOPs per softmax entry, forward + backward (exp, sum, divide and their
# gradients), as XLA counts them (tests/test_soft_moe.py compares with XLA).
SOFTMAX_FLOPS = 8
_SOFT_FIELDS = {"model.slots_per_expert": 1, "model.soft_moe_normalize": False}


# --------------------------------------------------------------------------------------


def _ensemble_size(cfg: Cfg) -> int:
    return cfg["model"]["ensemble_size"]


@dataclass(frozen=True)
class Method:
    """Everything one method contributes (see the module docstring)."""

    name: str
    description: str
    upstream_method: str  # "vmoe" or "vit"
    build: Callable[..., Any]  # (cfg, spec, layout, num_classes)
    check: Callable[[Cfg, Spec], None]
    paper_ref: str = ""
    # MoE layers: routers, subsets, tiling; None = no routed layers (dense MLPs).
    layout: Callable[[Cfg, Spec], MoeLayout] | None = None
    # Predictions per image (the ``member`` axis of results).
    predictions: Callable[[Cfg], int] = _ensemble_size
    # Rows through the backbone, read by the analytic FLOPs and parameter counts.
    backbone: Callable[[Cfg, Spec, MoeLayout | None], Backbone] = default_backbone
    # FLOPs and parameters of one MoE block when it is not a top-K sparse MoE
    # (``e3lib.cost.analytic.MoeBlock`` -> {term: FLOPs per image}; (cfg, spec, layout) -> int).
    moe_flops: Callable[[Any], dict] | None = None
    moe_params: Callable[[Cfg, Spec, MoeLayout], int] | None = None
    extra_params: Callable[[Cfg, Spec], int] = lambda cfg, spec: 0
    # Rewrites upstream leaves into this method's shapes before ``convert.convert_params``.
    prepare_upstream: Callable[..., Any] | None = None
    # Config fields of this method only: {"model.name": default}, added to config.DEFAULTS.
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Fields another method declares (``fields``) that this one reads too. Declared fields
    # a method neither declares nor reads are reset to their default before hashing.
    reads: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("vit", "dense ViT", "vit", _build_vit, check_single, "Table 23"),
        Method(
            "vmoe",
            "V-MoE: sparse MoE MLPs, top-K routing",
            "vmoe",
            _build_moe,
            check_vmoe,
            "§2.1",
            layout=_one_router,
        ),
        Method(
            "e3",
            "Efficient Ensemble of Experts: tiled tokens, M routers over disjoint "
            "(or overlapping, model.overlap) expert subsets",
            "vmoe",
            _build_moe,
            check_e3,
            "§3",
            layout=_e3_layout,
        ),
        Method(
            "tiling",
            "tiled tokens, one router over all E experts (§4.2.2)",
            "vmoe",
            _build_moe,
            check_moe,
            "Table 2",
            layout=_one_router_tiled,
        ),
        Method(
            "partitioning",
            "no tiling; K experts chosen in each of M subsets (§4.2.1), "
            "or K in all with model.partition_k: total (Table 22)",
            "vmoe",
            _build_moe,
            check_partitioning,
            "Table 2",
            layout=_partitioning_layout,
            predictions=lambda cfg: 1,
            fields=_PARTITION_FIELDS,
        ),
        Method(
            "multipred",
            "last MoE layer keeps its K expert outputs apart: K predictions (§4.2.4)",
            "vmoe",
            _build_moe,
            check_multipred,
            "Table 4",
            layout=_multipred_layout,
            predictions=lambda cfg: cfg["model"]["num_selected"],
        ),
        Method(
            "batchensemble",
            "BatchEnsemble ViT: rank-1 fast weights in the last-n MLPs (App. G.1)",
            "vit",
            _build_batchensemble,
            check_batchensemble,
            "Table 5",
            backbone=_batchensemble_backbone,
            extra_params=_batchensemble_params,
            prepare_upstream=_prepare_batchensemble,
        ),
        Method(
            "mc_dropout",
            "MC-Dropout V-MoE: expert dropout active at evaluation, M samples (App. G.2)",
            "vmoe",
            _build_mc_dropout,
            check_mc_dropout,
            "Table 5",
            layout=_one_router_tiled,
        ),
        Method(
            "mimo",
            "MIMO V-MoE: M inputs/outputs through one V-MoE (App. G.3)",
            "vmoe",
            _build_mimo,
            check_mimo,
            "Table 5",
            layout=_one_router,
            backbone=_mimo_backbone,
            prepare_upstream=_prepare_mimo,
        ),
        Method(
            "soft_moe",
            "Soft MoE: every slot a softmax-weighted mix of all tokens, no "
            "dropping (Puigcerver et al. 2024)",
            "vmoe",
            _build_soft_moe,
            check_soft_moe,
            layout=_one_router,
            moe_flops=_soft_moe_flops,
            moe_params=_soft_moe_params,
            prepare_upstream=_prepare_soft_moe,
            fields=_SOFT_FIELDS,
        ),
        Method(
            "soft_e3",
            "E³ of Soft MoEs: tiled tokens, member m's slots over the m-th disjoint E/M experts",
            "vmoe",
            _build_soft_moe,
            check_soft_moe,
            layout=_soft_e3_layout,
            moe_flops=_soft_moe_flops,
            moe_params=_soft_moe_params,
            prepare_upstream=_prepare_soft_moe,
            reads=tuple(_SOFT_FIELDS),
        ),
    ]
}


def method_of(cfg: Cfg) -> Method:
    """The registry entry of a run config's ``method`` (ConfigError if there is none)."""
    name = cfg["method"]
    if name not in METHODS:
        raise ConfigError("method", name, f"allowed: {sorted(METHODS)}")
    return METHODS[name]


def foreign_fields(cfg: Cfg) -> list[str]:
    """Dotted fields declared by some method (``Method.fields``) that the run's method
    neither declares nor ``reads``: they do not change its model."""
    own = method_of(cfg)
    mine = set(own.fields) | set(own.reads)
    return [f for m in METHODS.values() for f in m.fields if f not in mine]


def predictions_per_image(cfg: Cfg) -> int:
    """Predictions per image that the run's model yields (the ``member`` axis)."""
    return method_of(cfg).predictions(cfg)


def moe_layout(cfg: Cfg, spec: Spec) -> MoeLayout | None:
    """The MoE layout of a resolved run config (None for methods without routed layers)."""
    method = method_of(cfg)
    return method.layout(cfg, spec) if method.layout else None
