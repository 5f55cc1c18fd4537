"""Methods selectable by name from a run config (``method:`` in a sweep file).

Each entry says which upstream model it fine-tunes from, how many predictions it
yields per image (M), and which cross-field rules its config must satisfy. A new
method is one module that builds the Flax model plus one entry here; sweeps,
tables, FLOPs and verdicts pick it up by name.

Notation: E experts, K selected per token, M ensemble members, o overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from e3lib.config import ConfigError


def _check_moe(cfg: Mapping[str, Any]) -> None:
    m = cfg["model"]
    E, K = m["num_experts"], m["num_selected"]
    if K > E:
        raise ConfigError("model.num_selected", K, f"K must be <= num_experts E={E}")


def _check_e3(cfg: Mapping[str, Any]) -> None:
    _check_moe(cfg)
    m = cfg["model"]
    E, K, M, o = m["num_experts"], m["num_selected"], m["ensemble_size"], m["overlap"]
    if not isinstance(o, int) or isinstance(o, bool):
        raise ConfigError("model.overlap", o, "must be an integer number of shared experts")
    if o > E:
        raise ConfigError("model.overlap", o, f"overlap o must be <= num_experts E={E}")
    if o == E:
        return  # every member sees all E experts: this is Tiling
    if (E - o) % M:
        raise ConfigError("model.ensemble_size", M,
                          f"E - overlap = {E} - {o} = {E - o} must be divisible by M={M}")
    per_member = (E - o) // M + o
    if K > per_member:
        raise ConfigError("model.num_selected", K,
                          f"K must be <= experts per member (E-o)/M+o = {per_member} "
                          f"(E={E}, M={M}, overlap={o})")


def _check_partitioning(cfg: Mapping[str, Any]) -> None:
    m = cfg["model"]
    E, K, M = m["num_experts"], m["num_selected"], m["ensemble_size"]
    if E % M:
        raise ConfigError("model.ensemble_size", M, f"E={E} must be divisible by M={M}")
    if K > E // M:
        raise ConfigError("model.num_selected", K, f"K must be <= E/M = {E // M} (E={E}, M={M})")


def _check_multipred(cfg: Mapping[str, Any]) -> None:
    _check_moe(cfg)
    m = cfg["model"]
    if m["num_predictions"] != m["num_selected"]:
        raise ConfigError("model.num_predictions", m["num_predictions"],
                          f"Multi-pred yields one prediction per selected expert: must equal "
                          f"K={m['num_selected']}")


def _check_single(cfg: Mapping[str, Any]) -> None:
    m = cfg["model"]
    if m["ensemble_size"] != 1:
        raise ConfigError("model.ensemble_size", m["ensemble_size"],
                          f"method {cfg['method']!r} has a single member: must be 1")


def _check_vmoe(cfg: Mapping[str, Any]) -> None:
    _check_moe(cfg)
    _check_single(cfg)


def _no_check(cfg: Mapping[str, Any]) -> None:
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_batchensemble(cfg: Mapping[str, Any]) -> None:
    from e3lib.config import size_spec

    m = cfg["model"]
    if not size_spec(cfg)["moe_layers"]:
        raise ConfigError("model.moe_n", m["moe_n"], "BatchEnsemble needs at least one block "
                          "with fast weights (the last-n placement of the MoE layers): must be "
                          ">= 1")
    scale = m["be_lr_scale"]
    if not _is_number(scale) or scale <= 0:
        raise ConfigError("model.be_lr_scale", scale, "must be a positive number (the paper "
                          "sweeps 0.5, 1, 2)")


def _check_mc_dropout(cfg: Mapping[str, Any]) -> None:
    from e3lib.config import size_spec

    _check_moe(cfg)
    if not size_spec(cfg)["moe_layers"]:
        raise ConfigError("model.moe_n", cfg["model"]["moe_n"], "MC-Dropout samples the expert "
                          "dropout of the MoE layers: must be >= 1")
    rate = cfg["model"]["expert_dropout"]
    if rate >= 1:
        raise ConfigError("model.expert_dropout", rate, "dropout rate must be in [0, 1) "
                          "(MC-Dropout samples with it at evaluation)")


def _check_mimo(cfg: Mapping[str, Any]) -> None:
    _check_moe(cfg)
    m = cfg["model"]
    rho = m["mimo_input_repetition"]
    if not _is_number(rho) or not 0 <= rho <= 1:
        raise ConfigError("model.mimo_input_repetition", rho, "must be a probability in [0, 1]")
    br = m["mimo_batch_repetition"]
    if isinstance(br, bool) or not isinstance(br, int) or br < 1:
        raise ConfigError("model.mimo_batch_repetition", br, "must be a positive integer")


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    upstream_method: str                     # "vmoe" or "vit"
    uses_moe: bool
    validate: Callable[[Mapping[str, Any]], None] = _no_check
    paper_ref: str = ""
    # Number of predictions per image; default: model.ensemble_size.
    members: Callable[[Mapping[str, Any]], int] = field(
        default=lambda cfg: cfg["model"]["ensemble_size"])
    # "module:function" building the Flax model from (cfg, num_classes); "" = not built yet.
    builder: str = ""
    # "module:function" rewriting upstream params into the downstream shapes before the common
    # conversion (e3lib.models.convert): (upstream, target, cfg, keep_head) -> upstream.
    prepare_upstream: str = ""


_VIT = "e3lib.models.factory:build_vit"
_MOE = "e3lib.models.factory:build_moe"

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("vit", "dense ViT", "vit", False, _check_single, "Table 23",
               builder=_VIT),
        Method("vmoe", "V-MoE: sparse MoE MLPs, top-K routing", "vmoe", True, _check_vmoe, "§2.1",
               builder=_MOE),
        Method("e3", "Efficient Ensemble of Experts: tiled tokens, M routers over disjoint "
               "(or overlapping, model.overlap) expert subsets", "vmoe", True, _check_e3, "§3",
               builder=_MOE),
        Method("tiling", "tiled tokens, one router over all E experts (§4.2.2)", "vmoe", True,
               _check_moe, "Table 2", builder=_MOE),
        Method("partitioning", "no tiling; K experts chosen in each of M subsets (§4.2.1)",
               "vmoe", True, _check_partitioning, "Table 2",
               members=lambda cfg: 1, builder=_MOE),
        Method("multipred", "last MoE layer keeps its K expert outputs apart: K predictions "
               "(§4.2.4)", "vmoe", True, _check_multipred, "Table 4",
               members=lambda cfg: cfg["model"]["num_selected"], builder=_MOE),
        Method("batchensemble", "BatchEnsemble ViT: rank-1 fast weights in the last-n MLPs "
               "(App. G.1)", "vit", False, _check_batchensemble, "Table 5",
               builder="e3lib.models.batchensemble:build_batchensemble",
               prepare_upstream="e3lib.models.batchensemble:prepare_upstream"),
        Method("mc_dropout", "MC-Dropout V-MoE: expert dropout active at evaluation, M samples "
               "(App. G.2)", "vmoe", True, _check_mc_dropout, "Table 5",
               builder="e3lib.models.mc_dropout:build_mc_dropout"),
        Method("mimo", "MIMO V-MoE: M inputs/outputs through one V-MoE (App. G.3)", "vmoe",
               True, _check_mimo, "Table 5", builder="e3lib.models.mimo:build_mimo",
               prepare_upstream="e3lib.models.mimo:prepare_upstream"),
    ]
}


def num_members(cfg: Mapping[str, Any]) -> int:
    """Predictions per image that the run's model yields (the ``member`` axis)."""
    return METHODS[cfg["method"]].members(cfg)
