"""Methods selectable by name from a run config (``method:`` in a sweep file).

One ``Method`` entry per method holds everything the toolkit knows about it: the upstream it
fine-tunes from and how upstream leaves are prepared for it, its cross-field config rules
(its function of ``e3lib.models.checks``) and any config fields of its own, the layout of
its MoE layers (routers, expert subsets, tiling), how many predictions per image it yields,
how rows flow through the backbone (for the analytic FLOPs and parameter counts) and the
function that builds its Flax model. The config validation, ``build.build_model``,
``convert``, ``e3lib.cost`` and the sweep schema's method check all read this table; a new
method is one model module plus one entry (and its check function).

This module stays free of JAX: the config reads it when a sweep file is parsed. Each method's
layout, backbone, FLOPs and parameter terms, builder and upstream hook live in
``e3lib.models.terms``; builders and hooks import their model module when called. No model
module imports this one (``build.build_model`` and ``convert`` do), so there is no import
cycle.

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
from e3lib.models.layout import Backbone, MoeLayout, default_backbone
from e3lib.models.terms import (
    PARTITION_FIELDS,
    SOFT_FIELDS,
    batchensemble_backbone,
    batchensemble_params,
    build_batchensemble,
    build_mc_dropout,
    build_mimo,
    build_moe,
    build_soft_moe,
    build_vit,
    e3_layout,
    mimo_backbone,
    multipred_layout,
    one_router,
    one_router_tiled,
    partitioning_layout,
    prepare_batchensemble,
    prepare_mimo,
    prepare_soft_moe,
    soft_e3_layout,
    soft_moe_flops,
    soft_moe_params,
)


def _ensemble_size(cfg: Cfg) -> int:
    return cfg.model.ensemble_size


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
        Method("vit", "dense ViT", "vit", build_vit, check_single, "Table 23"),
        Method(
            "vmoe",
            "V-MoE: sparse MoE MLPs, top-K routing",
            "vmoe",
            build_moe,
            check_vmoe,
            "§2.1",
            layout=one_router,
        ),
        Method(
            "e3",
            "Efficient Ensemble of Experts: tiled tokens, M routers over disjoint "
            "(or overlapping, model.overlap) expert subsets",
            "vmoe",
            build_moe,
            check_e3,
            "§3",
            layout=e3_layout,
        ),
        Method(
            "tiling",
            "tiled tokens, one router over all E experts (§4.2.2)",
            "vmoe",
            build_moe,
            check_moe,
            "Table 2",
            layout=one_router_tiled,
        ),
        Method(
            "partitioning",
            "no tiling; K experts chosen in each of M subsets (§4.2.1), "
            "or K in all with model.partition_k: total (Table 22)",
            "vmoe",
            build_moe,
            check_partitioning,
            "Table 2",
            layout=partitioning_layout,
            predictions=lambda cfg: 1,
            fields=PARTITION_FIELDS,
        ),
        Method(
            "multipred",
            "last MoE layer keeps its K expert outputs apart: K predictions (§4.2.4)",
            "vmoe",
            build_moe,
            check_multipred,
            "Table 4",
            layout=multipred_layout,
            predictions=lambda cfg: cfg.model.num_selected,
        ),
        Method(
            "batchensemble",
            "BatchEnsemble ViT: rank-1 fast weights in the last-n MLPs (App. G.1)",
            "vit",
            build_batchensemble,
            check_batchensemble,
            "Table 5",
            backbone=batchensemble_backbone,
            extra_params=batchensemble_params,
            prepare_upstream=prepare_batchensemble,
        ),
        Method(
            "mc_dropout",
            "MC-Dropout V-MoE: expert dropout active at evaluation, M samples (App. G.2)",
            "vmoe",
            build_mc_dropout,
            check_mc_dropout,
            "Table 5",
            layout=one_router_tiled,
        ),
        Method(
            "mimo",
            "MIMO V-MoE: M inputs/outputs through one V-MoE (App. G.3)",
            "vmoe",
            build_mimo,
            check_mimo,
            "Table 5",
            layout=one_router,
            backbone=mimo_backbone,
            prepare_upstream=prepare_mimo,
        ),
        Method(
            "soft_moe",
            "Soft MoE: every slot a softmax-weighted mix of all tokens, no "
            "dropping (Puigcerver et al. 2024)",
            "vmoe",
            build_soft_moe,
            check_soft_moe,
            layout=one_router,
            moe_flops=soft_moe_flops,
            moe_params=soft_moe_params,
            prepare_upstream=prepare_soft_moe,
            fields=SOFT_FIELDS,
        ),
        Method(
            "soft_e3",
            "E³ of Soft MoEs: tiled tokens, member m's slots over the m-th disjoint E/M experts",
            "vmoe",
            build_soft_moe,
            check_soft_moe,
            layout=soft_e3_layout,
            moe_flops=soft_moe_flops,
            moe_params=soft_moe_params,
            prepare_upstream=prepare_soft_moe,
            reads=tuple(SOFT_FIELDS),
        ),
    ]
}


def method_named(name: str) -> Method:
    """The registry entry of the method ``name`` (ConfigError if there is none)."""
    if name not in METHODS:
        raise ConfigError("method", name, f"allowed: {sorted(METHODS)}")
    return METHODS[name]


def method_of(cfg: Cfg) -> Method:
    """The registry entry of a resolved run config's ``method``."""
    return method_named(cfg.method)


def foreign_fields(name: str) -> list[str]:
    """Dotted fields declared by some method (``Method.fields``) that the method ``name``
    neither declares nor ``reads``: they do not change its model."""
    own = method_named(name)
    mine = set(own.fields) | set(own.reads)
    return [f for m in METHODS.values() for f in m.fields if f not in mine]


def predictions_per_image(cfg: Cfg) -> int:
    """Predictions per image that the run's model yields (the ``member`` axis)."""
    return method_of(cfg).predictions(cfg)


def routing_group_images(cfg: Cfg) -> int:
    """Images per routing group of the run's model (``model.group_images``; 1 for methods
    without routed layers): what a micro-batch keeps whole (e3lib.train.micro)."""
    return cfg.model.group_images if method_of(cfg).layout is not None else 1


def moe_layout(cfg: Cfg, spec: Spec) -> MoeLayout | None:
    """The MoE layout of a resolved run config (None for methods without routed layers)."""
    method = method_of(cfg)
    return method.layout(cfg, spec) if method.layout else None
