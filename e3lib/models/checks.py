"""Cross-field config rules of the methods: ``check(cfg, spec)`` raises ConfigError naming
field, value and rule.

Each method's registry entry (``e3lib.models.registry.METHODS``, ``Method.check``) names its
function here; ``e3lib.config.validate`` calls it after every field's type was checked
(``e3lib.config_rules``). Like the registry, this module stays free of JAX.

Notation: E experts, K selected per token, M ensemble size, o overlap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from e3lib.errors import ConfigError

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Cfg: TypeAlias = "RunConfig"  # e3lib.run_config (type only: it sits above)
Spec = Mapping[str, Any]  # ``sizes.size_spec(cfg)``

# Partitioning's K (``model.partition_k``, the registry entry's field): "per_subset" or
# "total" (see the entry in e3lib.models.registry).
PARTITION_K = ("per_subset", "total")


def check_moe(cfg: Cfg, spec: Spec) -> None:
    m = cfg.model
    E, K = m.num_experts, m.num_selected
    if K > E:
        raise ConfigError("model.num_selected", K, f"K must be <= num_experts E={E}")


def check_e3(cfg: Cfg, spec: Spec) -> None:
    check_moe(cfg, spec)
    m = cfg.model
    E, K, M, o = m.num_experts, m.num_selected, m.ensemble_size, m.overlap
    if not isinstance(o, int) or isinstance(o, bool):
        raise ConfigError("model.overlap", o, "must be an integer number of shared experts")
    if o > E:
        raise ConfigError("model.overlap", o, f"overlap o must be <= num_experts E={E}")
    if o == E:
        return  # every member sees all E experts: this is Tiling
    if (E - o) % M:
        raise ConfigError(
            "model.ensemble_size",
            M,
            f"E - overlap = {E} - {o} = {E - o} must be divisible by M={M}",
        )
    per_member = (E - o) // M + o
    if K > per_member:
        raise ConfigError(
            "model.num_selected",
            K,
            f"K must be <= experts per member (E-o)/M+o = {per_member} (E={E}, M={M}, overlap={o})",
        )


def check_partitioning(cfg: Cfg, spec: Spec) -> None:
    m = cfg.model
    E, K, M = m.num_experts, m.num_selected, m.ensemble_size
    mode = m.partition_k
    if mode not in PARTITION_K:
        raise ConfigError("model.partition_k", mode, f"allowed: {list(PARTITION_K)}")
    if E % M:
        raise ConfigError("model.ensemble_size", M, f"E={E} must be divisible by M={M}")
    if mode == "total" and K % M:
        raise ConfigError(
            "model.num_selected",
            K,
            f"partition_k=total chooses K/M experts in "
            f"each of the M={M} subsets: K must be a multiple of M",
        )
    per_subset = K // M if mode == "total" else K
    if per_subset > E // M:
        raise ConfigError(
            "model.num_selected",
            K,
            f"experts chosen per subset ({per_subset}, "
            f"partition_k={mode}) must be <= E/M = {E // M} (E={E}, M={M})",
        )


def check_multipred(cfg: Cfg, spec: Spec) -> None:
    check_moe(cfg, spec)
    m = cfg.model
    if m.num_predictions != m.num_selected:
        raise ConfigError(
            "model.num_predictions",
            m.num_predictions,
            f"Multi-pred yields one prediction per selected expert: must equal K={m.num_selected}",
        )


def check_single(cfg: Cfg, spec: Spec) -> None:
    m = cfg.model
    if m.ensemble_size != 1:
        raise ConfigError(
            "model.ensemble_size",
            m.ensemble_size,
            f"method {cfg.method!r} has a single member: must be 1",
        )


def check_vmoe(cfg: Cfg, spec: Spec) -> None:
    check_moe(cfg, spec)
    check_single(cfg, spec)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_batchensemble(cfg: Cfg, spec: Spec) -> None:
    m = cfg.model
    if not spec["moe_layers"]:
        raise ConfigError(
            "model.moe_n",
            m.moe_n,
            "BatchEnsemble needs at least one block "
            "with fast weights (the last-n placement of the MoE layers): must be "
            ">= 1",
        )
    scale = m.be_lr_scale
    if not _is_number(scale) or scale <= 0:
        raise ConfigError(
            "model.be_lr_scale", scale, "must be a positive number (the paper sweeps 0.5, 1, 2)"
        )


def check_mc_dropout(cfg: Cfg, spec: Spec) -> None:
    check_moe(cfg, spec)
    if not spec["moe_layers"]:
        raise ConfigError(
            "model.moe_n",
            cfg.model.moe_n,
            "MC-Dropout samples the expert dropout of the MoE layers: must be >= 1",
        )
    rate = cfg.model.expert_dropout
    if rate >= 1:
        raise ConfigError(
            "model.expert_dropout",
            rate,
            "dropout rate must be in [0, 1) (MC-Dropout samples with it at evaluation)",
        )


def check_mimo(cfg: Cfg, spec: Spec) -> None:
    check_moe(cfg, spec)
    m = cfg.model
    rho = m.mimo_input_repetition
    if not _is_number(rho) or not 0 <= rho <= 1:
        raise ConfigError("model.mimo_input_repetition", rho, "must be a probability in [0, 1]")
    br = m.mimo_batch_repetition
    if isinstance(br, bool) or not isinstance(br, int) or br < 1:
        raise ConfigError("model.mimo_batch_repetition", br, "must be a positive integer")


def check_soft_moe(cfg: Cfg, spec: Spec) -> None:
    m = cfg.model
    n = m.slots_per_expert
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("model.slots_per_expert", n, "must be a positive integer")
    if not isinstance(m.soft_moe_normalize, bool):
        raise ConfigError("model.soft_moe_normalize", m.soft_moe_normalize, "must be true or false")
    if cfg.method == "soft_moe":
        check_single(cfg, spec)
    elif m.num_experts % m.ensemble_size or m.overlap:
        raise ConfigError(
            "model.ensemble_size",
            m.ensemble_size,
            f"soft_e3 gives each "
            f"member E/M experts of its own: E={m.num_experts} must be "
            f"divisible by M and model.overlap must be 0",
        )
