"""Run configuration: defaults, validation, canonical form and run identity.

A *run* is one fine-tuning job (plus its evaluation). Its configuration is a nested
plain dict with the sections below; every field has a default in ``DEFAULTS`` and the
resolved form (defaults filled, values checked, "None = derived" fields spelled out by
``resolve_derived``) is what gets hashed into the run id.

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
mesh       device mesh of the job (e3lib.parallel, docs/scale.md; null = one device). Not
           part of the run id: it changes where arrays live, not the results (beyond
           float tolerance), so one run has one id on any number of devices.
           ``finetune.log_every`` / ``upstream.log_every`` (how often the loss history is
           recorded) are likewise left out of the ids (``RUN_ID_EXCLUDED``).

Adding a field: put its default here and, if it has a closed set of values, its
allowed values in ``CHOICES``. The sweep schema and the docs read from these tables. A field
only one method reads is declared by that method's registry entry (``Method.fields``) and
added to ``DEFAULTS`` below. Import order: this module imports the registry, never the
reverse (``e3lib.models.registry`` and ``e3lib.models.sizes`` import no config).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from e3lib import tree
from e3lib.config_derive import resolve_derived
from e3lib.config_rules import (
    RUN_ID_EXCLUDED,
    check_pixels,
    check_pp,
    check_training,
    check_types,
    check_upstream_checkpoint,
)
from e3lib.config_stale import size_shape as size_shape  # re-exported
from e3lib.config_stale import stale_fields as stale_fields  # re-exported
from e3lib.config_stale import stale_size_shape as stale_size_shape  # re-exported
from e3lib.errors import ConfigError
from e3lib.models.registry import METHODS, method_of
from e3lib.models.sizes import MODEL_SIZES, size_spec

DEFAULTS: dict[str, Any] = {
    "method": "e3",
    "seed": 0,
    "model": {
        "size": "tiny",
        "num_experts": 8,  # E
        "num_selected": 1,  # K
        "ensemble_size": 1,  # M (members of E3 / Tiling / Partitioning / baselines)
        "overlap": 0,  # o: experts shared by all members (E3 with overlap)
        "moe_placement": "last",  # "last" (last-n odd blocks) or "every" (every n-th block)
        "moe_n": None,  # n; None = the size's default (2, or 5 for H/14)
        "noise_mult": 1.0,  # router noise multiplier
        # "code": σ = mult/(experts the router sees); "paper": σ = mult/E
        "noise_scaling": "code",
        "aux_weight": 0.01,  # λ: importance and load losses each weighted λ/2
        "capacity_factor": 1.5,  # C at training time
        "eval_capacity_factor": None,  # C at evaluation; None = same as training (code); paper: 8
        "batch_priority": False,  # batch-prioritized routing
        "expert_dropout": 0.0,  # dropout inside expert MLPs (Table 7 uses 0.1 at full scale)
        "dropout": 0.0,  # dropout elsewhere
        "group_images": 8,  # images per routing group (per member under E3)
        "num_predictions": 1,  # Multi-pred: predictions from the last MoE layer (= K)
        "permute_experts": False,  # Table 13: shuffle upstream experts before partitioning
        "representation": True,  # pre-logits representation layer (Dense + tanh)
        "head_bias_init": None,  # initial head bias; None = -log(num_classes) (V-MoE configs)
        "dtype": "float32",
        # Efficient-ensemble baselines (Appendix G).
        "be_init": "random_sign",  # BatchEnsemble fast-weight init: random_sign | normal
        "be_lr_scale": 1.0,  # BatchEnsemble fast-weight learning-rate factor
        "mimo_input_repetition": 0.0,  # MIMO: probability that all members see the same image
        "mimo_batch_repetition": 1,  # MIMO: times each batch is repeated
    },
    "upstream": {
        # Checkpoint to fine-tune from instead of pretraining here: an Orbax directory, a
        # published .npz / V-MoE sharded prefix (local path or gs:// URL), or the name of a
        # published checkpoint (e3lib/upstreams/catalog.py; docs/checkpoints.md).
        "checkpoint": None,
        "checkpoint_sha256": None,  # content checksum (pinned at expansion for local files)
        "fresh": ["head"],  # leaves that start from their initialisation, not the checkpoint
        "method": None,  # "vmoe" or "vit"; None = derived from the method
        "num_experts": None,  # upstream E; None = model.num_experts
        "num_selected": None,  # upstream K; None = model.num_selected (Table 19 differs)
        "seed": 0,
        "steps": 300,
        "lr": 1e-3,
        "warmup": 30,
        "batch_size": 64,
        "weight_decay": 0.1,
        "capacity_factor": 1.05,
        "dataset": None,  # None = the upstream set paired with data.dataset
        # Steps per loss-history point (e3lib.curves); None = ⌈steps/100⌉. Not part of any id.
        "log_every": None,
    },
    "data": {
        "dataset": "demo",
        "image_size": 16,
        # True: the patch embedding drops the last image_size mod P pixel rows and columns
        # (the reference code's VALID convolution: the paper's H/14 at 384 px sees 378 px);
        # False: an image size not divisible by the patch size P is refused.
        "crop_to_patch": False,
        "data_dir": None,
        # Preprocessing op strings (e3lib/data/preprocess.py), e.g. the reference's
        # "decode_jpeg_and_inception_crop(384)|flip_lr|value_range(-1,1)", or a recipe name
        # of e3lib.ppspec.RECIPES ("paper", "medium2", "plain"). A set pp_train, or any
        # dataset but the embedded demo, streams the data (e3lib.data.stream); None there =
        # "plain". The demo with None keeps its in-memory arrays.
        "pp_train": None,
        "pp_eval": None,
        "input_workers": 0,  # grain worker processes decoding the stream
    },
    "finetune": {
        "steps": 100,
        "lr": 0.01,
        "warmup": 10,
        "schedule": "cosine",  # cosine | linear
        "end_lr": 1e-5,
        "batch_size": 64,
        "momentum": 0.9,
        "grad_clip": 10.0,
        "mixup": 0.0,
        "checkpoint_every": 25,
        # Steps per loss-history point (e3lib.curves); None = ⌈steps/100⌉. Not part of the id.
        "log_every": None,
    },
    "eval": {
        "batch_size": 256,
        "fewshot_shots": [1, 5, 10, 25],
        # How the few-shot ridge l2 is chosen: "test" (reference code: best test error) or
        # "holdout" (best error on the task's training images not drawn as shots).
        "fewshot_l2_selection": "test",
        "corrupted": True,
        "ood": True,
        "fewshot": True,
    },
    # Device mesh: null = one device; {data: -1, expert: N} (-1 = the rest) or "auto"
    # (e3lib.parallel, docs/scale.md). Excluded from the run id (``RUN_ID_EXCLUDED``).
    "mesh": None,
}


def _with_method_fields(base: dict) -> dict:
    """``base`` plus the fields the registry's methods declare (``Method.fields``)."""
    out = base
    for method in METHODS.values():
        for dotted, default in method.fields.items():
            if tree.has_leaf(out, dotted):
                raise ValueError(f"method {method.name!r} declares {dotted!r}, which exists")
            out = tree.merge(out, tree.nest(dotted, default))
    return out


DEFAULTS = _with_method_fields(DEFAULTS)

# Deep ensembles of independent runs: members fine-tuned from one upstream (downstream) or
# each from its own upstream (upstream), Table 15.
ENSEMBLE_KINDS = ("downstream", "upstream")

CHOICES: dict[str, tuple] = {
    "model.size": tuple(MODEL_SIZES),
    "model.moe_placement": ("last", "every"),
    "model.noise_scaling": ("code", "paper"),
    "model.dtype": ("float32", "bfloat16"),
    "model.be_init": ("random_sign", "normal"),
    "upstream.method": (None, "vmoe", "vit"),
    "finetune.schedule": ("cosine", "linear"),
    "eval.fewshot_l2_selection": ("test", "holdout"),
    # The embedded default plus the real datasets e3lib.data can read (e3lib/data/__init__.py).
    "data.dataset": ("demo", "cifar10", "cifar100", "imagenet2012"),
}


def resolve(overrides: Mapping[str, Any], source: str | None = None, job: bool = False) -> dict:
    """Fill defaults into ``overrides`` and validate. Returns the resolved config.

    ``job=True`` (sweep expansion, ``e3 run``, ``e3 upstream``): the config will be trained,
    so its images must also split into whole patches (``config_rules.check_pixels``).
    """
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
        if job:
            check_pixels(cfg, size_spec(cfg))
    except ConfigError as err:
        if source and not err.source:
            raise ConfigError(err.field, err.value, err.rule, source) from None
        raise
    return cfg


def validate(cfg: Mapping[str, Any]) -> None:
    """Check every field's type and range (``e3lib.config_rules.FIELDS``), the allowed
    values (``CHOICES``), the cross-field rules of the run's method (its registry entry)
    and those of the training stages (``config_rules.check_training``).

    The one validation of a run config: ``resolve`` calls it where a config enters (sweep
    expansion, ``e3 run``, ``e3 upstream``, ``e3 flops``), before the config is hashed;
    model builders and the training code trust the resolved config.
    """
    check_types(cfg)
    method = method_of(cfg)
    for field, allowed in CHOICES.items():
        if tree.get(cfg, field) not in allowed:
            raise ConfigError(field, tree.get(cfg, field), f"allowed: {list(allowed)}")
    check_pp(cfg["data"])
    check_upstream_checkpoint(cfg["upstream"])
    spec = size_spec(cfg)
    method.check(cfg, spec)
    check_training(cfg, spec)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, floats in repr form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def short_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def non_default_fields(cfg: Mapping[str, Any], defaults: Mapping[str, Any] = DEFAULTS) -> dict:
    """The part of a resolved config that differs from ``DEFAULTS`` (nested, same layout)."""
    out: dict = {}
    for key, value in cfg.items():
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


def run_id(cfg: Mapping[str, Any]) -> str:
    """Identity of a resolved run config: the same config always gets the same id.

    Only the fields that differ from ``DEFAULTS`` are hashed, so adding a new field (with a
    default that keeps the old behaviour) leaves every existing run id, and every finished
    run, valid. ``RUN_ID_EXCLUDED`` fields are not hashed. Each run's results store the
    full resolved config; ``stale_fields`` detects results computed under other defaults.
    """
    identity = {k: v for k, v in cfg.items() if k not in RUN_ID_EXCLUDED}
    for dotted in RUN_ID_EXCLUDED:  # section.field entries
        section, _, name = dotted.partition(".")
        if name and isinstance(identity.get(section), Mapping) and name in identity[section]:
            identity[section] = {k: v for k, v in identity[section].items() if k != name}
    return short_hash(non_default_fields(identity))


def upstream_config(cfg: Mapping[str, Any]) -> dict:
    """The fields the upstream (pretraining) stage reads; its checkpoint is keyed by these.

    Runs that differ only in fine-tuning fields (K, M, overlap, λ, lr, seed...) share it.
    With ``upstream.checkpoint`` set, its content checksum ``checkpoint_sha256`` is part of
    it (pinned at sweep expansion, ``e3lib.upstreams.identity``), so runs from different
    checkpoint contents never share an id. Derived fields are read resolved
    (``resolve_derived``), also from a config stored before they were.
    """
    up = cfg["upstream"]
    if None in (up["method"], up["dataset"], cfg["model"]["moe_n"]) or (
        up["method"] == "vmoe" and None in (up["num_experts"], up["num_selected"])
    ):
        cfg = resolve_derived(copy.deepcopy(dict(cfg)))
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
    return out


def upstream_id(cfg: Mapping[str, Any]) -> str:
    return short_hash(upstream_config(cfg))
