"""Run configuration: defaults, validation, canonical form and run identity.

A *run* is one fine-tuning job (plus its evaluation). Its configuration has the sections
below; every field has a default (``DEFAULTS``, derived from the typed sections of
``e3lib.run_config``). ``resolve`` fills the defaults, checks the values, spells out the
"None = derived" fields (``resolve_derived``) and returns a typed ``RunConfig``; its plain
dict form (``RunConfig.to_dict``) is what gets hashed into the run id.

Notation used in field docs: E experts, K experts selected per token, M ensemble
members, o experts shared by all members (overlap), C capacity factor, λ load-balance
strength (importance + load auxiliary losses, each weighted λ/2).

Sections
--------
method     name of the method (a key of ``e3lib.models.registry.METHODS``, whose entry also
           holds the method's cross-field rules and any config fields of its own)
seed       fine-tuning seed
model      architecture and routing fields (size, E, K, M, overlap, noise, λ, capacity, ...)
upstream   how the checkpoint fine-tuning starts from is obtained (pretraining job or file)
data       dataset name, image size, data directory
finetune   optimisation recipe (steps, lr, warmup, batch size, clipping, mixup, ...)
eval       evaluation options (batch size, few-shot shots, which suites to run)
log        live-metric sinks (TensorBoard, W&B, MLflow; e3lib.monitor). Not part of the run id.
mesh       device mesh of the job (e3lib.parallel, docs/scale.md; null = one device). Not
           part of the run id: it changes where arrays live, not the results (beyond
           float tolerance), so one run has one id on any number of devices.
           ``model.remat`` (which activations the backward pass recomputes) is too.
           ``finetune.log_every`` / ``upstream.log_every`` (how often the loss history is
           recorded), ``finetune.eval_every`` / ``upstream.eval_every`` (how often the
           held-out loss is) and
           ``upstream.checkpoint_every`` are likewise left out of the ids
           (``RUN_ID_EXCLUDED``).

Adding a field: declare it with its type and default in its section of ``e3lib.run_config``,
its type rule in ``config_rules.FIELDS`` and, if it has a closed set of values, its allowed
values in ``CHOICES``. The sweep schema and the docs read from these tables. A field only one
method reads is declared by that method's registry entry (``Method.fields``, which owns its
default) and named in its ``run_config`` section. Import order: this module imports the
registry, never the reverse (``e3lib.models.registry`` and ``e3lib.models.sizes`` import no
config).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from e3lib import config_stale, tree
from e3lib.config_derive import resolve_derived
from e3lib.config_rules import (
    RUN_ID_EXCLUDED,
    check_microsteps,
    check_pixels,
    check_pp,
    check_training,
    check_types,
    check_upstream_checkpoint,
)
from e3lib.config_stale import stale_fields as stale_fields  # re-exported
from e3lib.errors import ConfigError
from e3lib.models.registry import method_named
from e3lib.models.sizes import MODEL_SIZES, size_spec
from e3lib.run_config import RunConfig, defaults_dict

# Every field's default, as a nested dict: derived from the typed sections of
# ``e3lib.run_config`` (the one owner of field names, types and defaults).
DEFAULTS: dict[str, Any] = defaults_dict()

# Deep ensembles of independent runs: members fine-tuned from one upstream (downstream) or
# each from its own upstream (upstream), Table 15.
ENSEMBLE_KINDS = ("downstream", "upstream")

CHOICES: dict[str, tuple] = {
    "model.size": tuple(MODEL_SIZES),
    "model.moe_placement": ("last", "every"),
    "model.noise_scaling": ("code", "paper"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"),
    "model.dispatch_dtype": ("float32", "bfloat16"),
    "model.be_init": ("random_sign", "normal"),
    "upstream.method": (None, "vmoe", "vit"),
    "upstream.momentum_dtype": ("float32", "bfloat16"),
    "finetune.schedule": ("cosine", "linear"),
    "finetune.momentum_dtype": ("float32", "bfloat16"),
    "eval.fewshot_l2_selection": ("test", "holdout"),
    # The embedded default plus the real datasets e3lib.data can read (e3lib/data/__init__.py).
    "data.dataset": ("demo", "cifar10", "cifar100", "imagenet2012"),
    "log.wandb_mode": ("offline", "online"),
}


def resolve(
    overrides: Mapping[str, Any] | RunConfig, source: str | None = None, job: bool = False
) -> RunConfig:
    """Fill defaults into ``overrides`` and validate. Returns the resolved, typed config
    (``e3lib.run_config.RunConfig``), which every stage after this one reads.

    ``job=True`` (sweep expansion, ``e3 run``, ``e3 upstream``): the config will be trained,
    so its images must also split into whole patches (``config_rules.check_pixels``).
    """
    if isinstance(overrides, RunConfig):
        overrides = overrides.to_dict()
    try:
        if not isinstance(overrides, Mapping):
            raise ConfigError(
                "(top level)",
                overrides,
                f"a run config must be a mapping of fields; allowed sections: {sorted(DEFAULTS)}",
            )
        cfg = tree.merge_known(DEFAULTS, overrides)
        validate(cfg)
        resolve_derived(cfg)
        resolved = RunConfig.from_dict(cfg)
        if job:
            check_pixels(cfg, size_spec(resolved))
    except ConfigError as err:
        if source and not err.source:
            raise ConfigError(err.field, err.value, err.rule, source) from None
        raise
    return resolved


def override(cfg: RunConfig, changes: Mapping[str, Any], job: bool = False) -> RunConfig:
    """A new resolved config: ``cfg`` with the nested ``changes`` applied, validated again."""
    return resolve(tree.merge(cfg.to_dict(), changes), job=job)


def validate(cfg: dict) -> None:
    """Check every field's type and range (``e3lib.config_rules.FIELDS``), the allowed
    values (``CHOICES``), the cross-field rules of the run's method (its registry entry)
    and those of the training stages (``config_rules.check_training``).

    The one validation of a run config: ``resolve`` calls it where a config enters (sweep
    expansion, ``e3 run``, ``e3 upstream``, ``e3 flops``), before the config is hashed;
    model builders and the training code trust the resolved config.
    """
    check_types(cfg)
    method = method_named(cfg["method"])
    for field, allowed in CHOICES.items():
        if tree.get(cfg, field) not in allowed:
            raise ConfigError(field, tree.get(cfg, field), f"allowed: {list(allowed)}")
    check_pp(cfg["data"])
    check_upstream_checkpoint(cfg["upstream"])
    typed = RunConfig.from_dict(cfg)  # the method rules read it as the stages will
    spec = size_spec(typed)
    method.check(typed, spec)
    check_training(cfg, spec)
    upstream_method = cfg["upstream"]["method"] or method.upstream_method
    groups = DEFAULTS["model"]["group_images"]  # the upstream model's
    check_microsteps(
        cfg,
        cfg["model"]["group_images"] if method.layout is not None else 1,
        groups if upstream_method == "vmoe" else 1,
    )


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats in repr form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def short_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def non_default_fields(
    cfg: RunConfig | Mapping[str, Any], defaults: Mapping[str, Any] = DEFAULTS
) -> dict:
    """The part of a resolved config that differs from ``DEFAULTS`` (nested, same layout)."""
    out: dict = {}
    for key, value in as_dict(cfg).items():
        default = defaults.get(key, _MISSING)
        # dict, not the Mapping ABC: this runs for every run of a paper-scale sweep union
        if isinstance(value, dict) and isinstance(default, dict):
            sub = non_default_fields(value, default)
            if sub:
                out[key] = sub
        elif value != default or type(value) is not type(default):
            out[key] = value
    return out


_MISSING = object()


def as_dict(cfg: RunConfig | Mapping[str, Any]) -> dict:
    """The plain nested dict of a resolved config, or of a stored one (read from results)."""
    return cfg.to_dict() if isinstance(cfg, RunConfig) else dict(cfg)


def run_id(cfg: RunConfig | Mapping[str, Any]) -> str:
    """Identity of a resolved run config: the same config always gets the same id.

    Only the fields that differ from ``DEFAULTS`` are hashed, so adding a new field (with a
    default that keeps the old behaviour) leaves every existing run id, and every finished
    run, valid. ``RUN_ID_EXCLUDED`` fields are not hashed. Each run's results store the
    full resolved config; ``stale_fields`` detects results computed under other defaults.
    """
    identity = {k: v for k, v in as_dict(cfg).items() if k not in RUN_ID_EXCLUDED}
    for dotted in RUN_ID_EXCLUDED:  # section.field entries
        section, _, name = dotted.partition(".")
        if name and isinstance(identity.get(section), Mapping) and name in identity[section]:
            identity[section] = {k: v for k, v in identity[section].items() if k != name}
    return short_hash(non_default_fields(identity))


def size_shape(cfg: RunConfig | Mapping[str, Any]) -> dict | None:
    """``config_stale.size_shape`` of a resolved or a stored config."""
    return config_stale.size_shape(as_dict(cfg))


def stale_size_shape(
    stored_shape: Mapping[str, Any] | None, current: RunConfig | Mapping[str, Any]
) -> list[str]:
    """``config_stale.stale_size_shape`` against a resolved or a stored config."""
    return config_stale.stale_size_shape(stored_shape, as_dict(current))


def upstream_config(cfg: RunConfig | Mapping[str, Any]) -> dict:
    """The fields the upstream (pretraining) stage reads; its checkpoint is keyed by these.

    Runs that differ only in fine-tuning fields (K, M, overlap, λ, lr, seed...) share it.
    With ``upstream.checkpoint`` set, its content checksum ``checkpoint_sha256`` is part of
    it (pinned at sweep expansion, ``e3lib.upstreams.identity``), so runs from different
    checkpoint contents never share an id. Derived fields are read resolved
    (``resolve_derived``), also from a config stored before they were.
    """
    cfg = as_dict(cfg)
    up = cfg["upstream"]
    if None in (up["method"], up["dataset"], cfg["model"]["moe_n"]) or (
        up["method"] == "vmoe" and None in (up["num_experts"], up["num_selected"])
    ):
        cfg = resolve_derived(copy.deepcopy(cfg))
    up = cfg["upstream"]
    m = cfg["model"]
    method = up["method"]
    out = {
        "checkpoint": up["checkpoint"],
        "method": method,
        "size": m["size"],
        "num_experts": up["num_experts"] if method == "vmoe" else None,
        "num_selected": up["num_selected"] if method == "vmoe" else None,
        "moe_placement": m["moe_placement"] if method == "vmoe" else None,
        "moe_n": m["moe_n"] if method == "vmoe" else None,
        "dataset": up["dataset"],
        "image_size": cfg["data"]["image_size"],
        "data_dir": cfg["data"]["data_dir"],
        "seed": up["seed"],
        "steps": up["steps"],
        "lr": up["lr"],
        "warmup": up["warmup"],
        "batch_size": up["batch_size"],
        "weight_decay": up["weight_decay"],
        "capacity_factor": up["capacity_factor"],
        "representation": m["representation"],
    }
    if up["checkpoint"]:  # absent otherwise: upstream ids without a checkpoint are unchanged
        out["checkpoint_sha256"] = up["checkpoint_sha256"]
    if up.get("renderings", 1) != 1:  # absent at 1: ids of the plain set are unchanged
        out["renderings"] = up["renderings"]
    # Absent at their defaults, so the ids of upstreams trained without them are unchanged.
    if up.get("momentum_dtype", "float32") != "float32":
        out["momentum_dtype"] = up["momentum_dtype"]
    if up.get("microsteps", 1) != 1:
        out["microsteps"] = up["microsteps"]
    return out


def upstream_model_config(ucfg: Mapping[str, Any], remat: str = "none") -> dict:
    """A resolved run config describing the upstream model (for ``build_model``); ``remat``
    (the run's ``model.remat``) recomputes the same values, so it is no part of the upstream."""
    model = {
        "size": ucfg["size"],
        "capacity_factor": ucfg["capacity_factor"],
        "representation": ucfg["representation"],
        "remat": remat,
    }
    if ucfg["method"] == "vmoe":
        model.update(
            num_experts=ucfg["num_experts"],
            num_selected=ucfg["num_selected"],
            moe_placement=ucfg["moe_placement"],
            moe_n=ucfg["moe_n"],
        )
    return resolve(
        {
            "method": ucfg["method"],
            "seed": ucfg["seed"],
            "model": model,
            "data": {"image_size": ucfg["image_size"]},
        }
    )


def upstream_id(cfg: RunConfig | Mapping[str, Any]) -> str:
    return short_hash(upstream_config(cfg))
