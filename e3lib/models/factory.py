"""Run config -> Flax model: the one entry point ``build_model(cfg, num_classes)``.

Notation: E experts, K selected per token (per router), M ensemble members, o overlap,
R routers per MoE layer, σ router noise std, λ auxiliary-loss strength.

How each method of §4.2 maps onto the shared pieces (``vit.VisionTransformer`` +
``moe.MoeMlp``):

=============  ===========  ======================  ======  ==============================
method         tiling (M)   routers R, subsets      tiled   notes
=============  ===========  ======================  ======  ==============================
vit            no           (dense MLPs)            -
vmoe           no           1 over all E            yes
e3             M before     M contiguous E/M        yes     o > 0: (E−o)/M unique + o shared;
               1st MoE blk                                  o = E is Tiling (one router)
tiling         M before     1 over all E            yes     σ multiplied via noise_mult
partitioning   no           M contiguous E/M        no      K per subset, K·M per token
multipred      no           1 over all E            yes     last MoE layer: K outputs apart
=============  ===========  ======================  ======  ==============================

Methods added later register a builder in ``e3lib.models.registry`` (``Method.builder``,
"module:function" taking ``(cfg, num_classes)``) and reuse ``vit_kwargs``/``mlp_factory``.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax.numpy as jnp

from e3lib.config import ConfigError, size_spec, validate
from e3lib.models.moe import MoeMlp
from e3lib.models.routing import expert_subsets, router_noise_std
from e3lib.models.vit import DenseMlp, VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def vit_kwargs(cfg: Mapping[str, Any], num_classes: int) -> dict:
    """Backbone arguments of ``VisionTransformer`` common to every method."""
    m = cfg["model"]
    spec = size_spec(cfg)
    bias = m.get("head_bias_init")
    if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, float))):
        raise ConfigError("model.head_bias_init", bias, "must be null or a number")
    return dict(num_classes=num_classes, patch_size=spec["patch"], hidden_size=spec["hidden"],
                num_layers=spec["layers"], num_heads=spec["heads"],
                dropout_rate=m["dropout"], attention_dropout_rate=0.0,
                representation=m["representation"],
                head_bias_init=-math.log(num_classes) if bias is None else float(bias),
                dtype=DTYPES[m["dtype"]])


def dense_mlp_factory(cfg: Mapping[str, Any]) -> Callable[[int, bool], nn.Module]:
    """Every block dense (ViT)."""
    spec, m = size_spec(cfg), cfg["model"]
    return lambda block, train: DenseMlp(spec["mlp"], m["dropout"], dtype=DTYPES[m["dtype"]],
                                         name="Mlp")


def moe_mlp_factory(cfg: Mapping[str, Any], *, subsets, tiled: bool, members: int,
                    noise_std: float, multipred_last: bool = False,
                    expert_dropout_at_eval: bool = False) -> Callable[[int, bool], nn.Module]:
    """Dense MLPs, except ``MoeMlp`` (named "Moe") in the blocks of ``size_spec(cfg)``."""
    spec, m = size_spec(cfg), cfg["model"]
    moe_blocks = spec["moe_layers"]

    def factory(block: int, train: bool) -> nn.Module:
        if block not in moe_blocks:
            return DenseMlp(spec["mlp"], m["dropout"], dtype=DTYPES[m["dtype"]], name="Mlp")
        return MoeMlp(
            num_experts=m["num_experts"], mlp_dim=spec["mlp"], subsets=subsets,
            num_selected=m["num_selected"], noise_std=noise_std, aux_weight=m["aux_weight"],
            tiled=tiled, members=members, group_images=m["group_images"],
            capacity_factor=m["capacity_factor"],
            eval_capacity_factor=m["eval_capacity_factor"],
            batch_priority=m["batch_priority"], expert_dropout=m["expert_dropout"],
            keep_selections_apart=multipred_last and block == moe_blocks[-1],
            expert_dropout_at_eval=expert_dropout_at_eval,
            dtype=DTYPES[m["dtype"]], name="Moe")

    return factory


def _first_moe_block(cfg: Mapping[str, Any]) -> Optional[int]:
    layers = size_spec(cfg)["moe_layers"]
    return layers[0] if layers else None


def build_vit(cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    return VisionTransformer(mlp_factory=dense_mlp_factory(cfg), **vit_kwargs(cfg, num_classes))


class MoeLayout(NamedTuple):
    """How a method's MoE layers route (see the table in the module docstring)."""

    subsets: tuple[tuple[int, ...], ...]   # expert ids of each router (R, E_r)
    tiled: bool                            # member copy m -> router m (else every router)
    tile: int                              # rows per image from the first MoE block on (M)
    multipred: bool                        # last MoE layer keeps its K outputs apart


def moe_layout(cfg: Mapping[str, Any]) -> MoeLayout:
    """Routers, expert subsets and tiling of a MoE method's config."""
    method, m = cfg["method"], cfg["model"]
    E, M, o = m["num_experts"], m["ensemble_size"], m["overlap"]
    every = (tuple(range(E)),)
    if method == "vmoe":
        return MoeLayout(every, True, 1, False)
    if method == "tiling" or (method == "e3" and o == E):
        return MoeLayout(every, True, M, False)
    if method == "e3":
        return MoeLayout(expert_subsets(E, M, o), True, M, False)
    if method == "partitioning":
        return MoeLayout(expert_subsets(E, M, 0), False, 1, False)
    if method == "multipred":
        return MoeLayout(every, True, 1, True)
    if method == "mc_dropout":  # V-MoE routing; M dropout samples tiled at evaluation
        return MoeLayout(every, True, M, False)
    if method == "mimo":  # V-MoE routing; the M members share each row
        return MoeLayout(every, True, 1, False)
    raise NotImplementedError(f"method {method!r} has no MoE layout here")


def layer_noise_std(cfg: Mapping[str, Any]) -> float:
    """σ of every MoE layer's router noise for this config."""
    m = cfg["model"]
    return router_noise_std(m["noise_mult"], m["num_experts"], len(moe_layout(cfg).subsets[0]),
                            m["noise_scaling"])


def build_moe(cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    """V-MoE, E³ (with overlap), Tiling, Partitioning and Multi-pred (see the table above)."""
    layout = moe_layout(cfg)
    factory = moe_mlp_factory(cfg, subsets=layout.subsets, tiled=layout.tiled,
                              members=layout.tile, noise_std=layer_noise_std(cfg),
                              multipred_last=layout.multipred)
    return VisionTransformer(mlp_factory=factory, tile_before=_first_moe_block(cfg),
                             tile_factor=layout.tile, **vit_kwargs(cfg, num_classes))


def build_model(cfg: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The Flax module of a resolved run config (see docs/architecture.md, "Model contract").

    The config is validated first, so invalid combinations (K > E/M, E−o not divisible by M,
    unknown size or method, ...) raise ``ConfigError`` naming the field, value and rule.
    """
    from e3lib.models.registry import METHODS

    validate(cfg)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", num_classes, "must be a positive integer")
    method = METHODS[cfg["method"]]
    if not method.builder:
        raise NotImplementedError(
            f"method {cfg['method']!r} ({method.description}) has no model builder yet; "
            f"methods with one: {sorted(k for k, v in METHODS.items() if v.builder)}")
    module_name, func = method.builder.split(":")
    return getattr(importlib.import_module(module_name), func)(cfg, num_classes)
