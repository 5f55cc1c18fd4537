"""Field types and the training stages' cross-field rules of a run config, checked in one place.

``e3lib.config.validate`` calls ``check_types`` (every field: type, range, finiteness) before
anything reads or hashes a value, then the method's registry rules, then ``check_training``:
the rules the training stages would otherwise discover only when a job starts (warmup <
steps, end_lr <= lr, MoE blocks that exist, image size divisible by the patch). Each error is
a ``ConfigError`` naming the dotted field, the value and what is allowed; ``check_pp`` and
``check_upstream_checkpoint`` check the preprocessing strings and the upstream checkpoint
fields. A leaf module below ``e3lib.config``: it imports only the errors and the pp grammar.

Notation: L blocks, P patch size, n MoE blocks (``model.moe_n``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from e3lib.errors import ConfigError
from e3lib.ppspec import RECIPES, parse_pp, pp_string

# Largest seed: PRNG keys, NumPy and the input pipeline all take it as a 32-bit integer.
MAX_SEED = 2**31 - 1

# Top-level fields that say how a run is executed, not what it computes: left out of the
# run id (e3lib.config.run_id) and of ``stale_fields`` (the device mesh: results on any mesh
# equal the single-device ones within float tolerance, tests/test_parallel.py; the
# rematerialisation policy, which recomputes the same values, tests/test_levers.py; how
# often the loss history is recorded, e3lib.curves). Top-level names or "section.field".
RUN_ID_EXCLUDED = (
    "mesh",
    "model.remat",
    "finetune.log_every",
    "finetune.eval_every",
    "upstream.log_every",
    "upstream.checkpoint_every",
    "upstream.eval_every",
    "log",
)


@dataclass(frozen=True)
class Field:
    """What one field may hold: ``kind`` int | number | bool | str | choice | int_list |
    str_list | mesh."""

    kind: str
    lo: float | None = None  # inclusive lower bound (numbers and ints)
    hi: float | None = None  # upper bound, inclusive unless ``hi_open``
    lo_open: bool = False  # lower bound exclusive
    hi_open: bool = False
    null: bool = False  # None allowed

    def allowed(self) -> str:
        """What the field allows, in words ("a non-negative number", "null or ...")."""
        fixed = {
            "bool": "true or false",
            "str": "a string",
            "int_list": "a list of positive integers",
            "str_list": "a list of non-empty strings",
            "mesh": "null, 'auto' or {data: -1|n, expert: -1|n, fsdp: true|false} (at most one -1)",
        }
        noun = "integer" if self.kind == "int" else "finite number"
        if self.kind in fixed:
            what = fixed[self.kind]
        elif self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            what = (
                f"{'an' if self.kind == 'int' else 'a'} {noun} in {left}{self.lo}, {self.hi}{right}"
            )
        elif self.lo == 0 or (self.lo == 1 and self.kind == "int"):
            what = f"a {'non-negative' if self.lo == 0 and not self.lo_open else 'positive'} {noun}"
        elif self.lo is not None:
            what = f"a {noun} {'>' if self.lo_open else '>='} {self.lo}"
        else:
            what = f"a {noun}"
        return ("null or " if self.null else "") + what


def _int(lo: int | None = None, hi: int | None = None, null: bool = False) -> Field:
    return Field("int", lo, hi, null=null)


def _num(
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    null: bool = False,
) -> Field:
    return Field("number", lo, hi, lo_open, hi_open, null)


BOOL, STR, CHOICE = Field("bool"), Field("str"), Field("choice")
STR_OR_NULL = Field("str", null=True)

# Every leaf of e3lib.config.DEFAULTS (tests/test_bad_input.py checks the coverage).
# ``choice`` fields are checked against e3lib.config.CHOICES (``method``: the registry).
FIELDS: dict[str, Field] = {
    "method": STR,
    "seed": _int(0, MAX_SEED),
    "model.size": CHOICE,
    "model.num_experts": _int(1),
    "model.num_selected": _int(1),
    "model.ensemble_size": _int(1),
    "model.overlap": _int(0),
    "model.moe_placement": CHOICE,
    "model.moe_n": _int(1, null=True),
    "model.noise_mult": _num(0),
    "model.noise_scaling": CHOICE,
    "model.aux_weight": _num(0),
    "model.capacity_factor": _num(0, lo_open=True),
    "model.eval_capacity_factor": _num(0, lo_open=True, null=True),
    "model.batch_priority": BOOL,
    "model.expert_dropout": _num(0, 1, hi_open=True),
    "model.dropout": _num(0, 1, hi_open=True),
    "model.group_images": _int(1),
    "model.num_predictions": _int(1),
    "model.permute_experts": BOOL,
    "model.representation": BOOL,
    "model.head_bias_init": _num(null=True),
    "model.dtype": CHOICE,
    "model.param_dtype": CHOICE,
    "model.remat": CHOICE,
    "model.dispatch_dtype": CHOICE,
    "model.be_init": CHOICE,
    "model.be_lr_scale": _num(0, lo_open=True),
    "model.mimo_input_repetition": _num(0, 1),
    "model.mimo_batch_repetition": _int(1),
    "model.slots_per_expert": _int(1),
    "model.soft_moe_normalize": BOOL,
    "model.partition_k": CHOICE,  # allowed values: the partitioning registry entry
    "upstream.checkpoint": STR_OR_NULL,
    "upstream.checkpoint_sha256": STR_OR_NULL,  # format checked in config
    "upstream.fresh": Field("str_list"),
    "upstream.method": CHOICE,
    "upstream.num_experts": _int(1, null=True),
    "upstream.num_selected": _int(1, null=True),
    "upstream.seed": _int(0, MAX_SEED),
    "upstream.steps": _int(1),
    "upstream.lr": _num(0),
    "upstream.warmup": _int(0),
    "upstream.batch_size": _int(1),
    "upstream.weight_decay": _num(0),
    "upstream.capacity_factor": _num(0, lo_open=True),
    "upstream.momentum_dtype": CHOICE,
    "upstream.microsteps": _int(1),
    "upstream.dataset": STR_OR_NULL,
    "upstream.renderings": _int(1),
    "upstream.log_every": _int(1, null=True),
    "upstream.checkpoint_every": _int(1),
    "upstream.eval_every": _int(0, null=True),
    "data.dataset": CHOICE,
    "data.image_size": _int(1),
    "data.crop_to_patch": BOOL,
    "data.data_dir": STR_OR_NULL,
    "data.pp_train": STR_OR_NULL,
    "data.pp_eval": STR_OR_NULL,
    "data.input_workers": _int(0),
    "finetune.steps": _int(1),
    "finetune.lr": _num(0),
    "finetune.warmup": _int(0),
    "finetune.schedule": CHOICE,
    "finetune.end_lr": _num(0),
    "finetune.batch_size": _int(1),
    "finetune.momentum": _num(0, 1, hi_open=True),
    "finetune.momentum_dtype": CHOICE,
    "finetune.microsteps": _int(1),
    "finetune.grad_clip": _num(0),
    "finetune.mixup": _num(0),
    "finetune.checkpoint_every": _int(1),
    "finetune.log_every": _int(1, null=True),
    "finetune.eval_every": _int(0, null=True),
    "eval.batch_size": _int(1),
    "eval.fewshot_shots": Field("int_list"),
    "eval.fewshot_l2_selection": CHOICE,
    "eval.corrupted": BOOL,
    "eval.ood": BOOL,
    "eval.fewshot": BOOL,
    "mesh": Field("mesh", null=True),
    "log.tensorboard": BOOL,
    "log.wandb_project": STR_OR_NULL,
    "log.wandb_mode": CHOICE,
    "log.mlflow_uri": STR_OR_NULL,
    "log.mlflow_experiment": STR_OR_NULL,
}

MESH_AXES = ("data", "expert")  # axes of the device mesh (e3lib.parallel, docs/scale.md)
MESH_OPTIONS = ("fsdp",)  # boolean options of the mesh mapping (FSDP, docs/scale.md)


def check_mesh(v: Any, dotted: str = "mesh") -> None:
    """The ``mesh`` field: null (one device), "auto", or sizes of the (data, expert) axes,
    each a positive integer or -1 (the rest of the devices; at most one axis), and the
    boolean ``fsdp``."""
    if v is None or v == "auto":
        return
    if not isinstance(v, Mapping):
        raise ConfigError(dotted, v, f"must be {FIELDS['mesh'].allowed()}")
    unknown = sorted(set(v) - set(MESH_AXES) - set(MESH_OPTIONS))
    if unknown:
        raise ConfigError(
            f"{dotted}.{unknown[0]}",
            v[unknown[0]],
            f"allowed axes: {list(MESH_AXES)}, options: {list(MESH_OPTIONS)}",
        )
    for option in MESH_OPTIONS:
        if option in v and not isinstance(v[option], bool):
            raise ConfigError(f"{dotted}.{option}", v[option], "must be true or false")
    for axis in MESH_AXES:
        n = v.get(axis, -1 if axis == "data" else 1)
        if not _is_int(n) or (n < 1 and n != -1):
            raise ConfigError(
                f"{dotted}.{axis}", n, "must be a positive integer or -1 (the rest of the devices)"
            )
    if [v.get(axis) for axis in MESH_AXES].count(-1) > 1:
        raise ConfigError(dotted, dict(v), "at most one axis may be -1")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _in_range(spec: Field, v: float) -> bool:
    if spec.lo is not None and (v <= spec.lo if spec.lo_open else v < spec.lo):
        return False
    return spec.hi is None or (v < spec.hi if spec.hi_open else v <= spec.hi)


def check_value(dotted: str, v: Any, spec: Field) -> None:
    """ConfigError unless ``v`` is what ``spec`` allows (type first, then range)."""
    if v is None and spec.null:
        return
    if spec.kind == "choice":
        if isinstance(v, (list, dict)):
            raise ConfigError(dotted, v, "must be a single value, not a list or mapping")
        return  # the allowed values are checked against CHOICES
    bad = ConfigError(dotted, v, f"must be {spec.allowed()}")
    if spec.kind == "bool":
        if not isinstance(v, bool):
            raise bad
    elif spec.kind == "str":
        if not isinstance(v, str):
            raise bad
    elif spec.kind == "int":
        if not _is_int(v) or not _in_range(spec, v):
            raise bad
    elif spec.kind == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad
        if not math.isfinite(v) or not _in_range(spec, v):
            raise bad
    elif spec.kind == "int_list":
        if not isinstance(v, list) or not all(_is_int(x) and x >= 1 for x in v):
            raise bad
    elif spec.kind == "str_list":
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise bad
    elif spec.kind == "mesh":
        check_mesh(v, dotted)


def check_types(cfg: Mapping[str, Any]) -> None:
    """Every field of a merged config against ``FIELDS`` (before anything reads it)."""
    for dotted, spec in FIELDS.items():
        node: Any = cfg
        for part in dotted.split("."):
            node = node[part]
        check_value(dotted, node, spec)


def max_moe_n(layers: int, placement: str) -> int:
    """Largest n that places n distinct MoE blocks: last-n of the odd blocks, or every n-th."""
    return layers // 2 if placement == "last" else layers


def check_training(cfg: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """Cross-field rules the training stages rely on (``spec``: ``sizes.size_spec(cfg)``)."""
    m, ft, up, data = cfg["model"], cfg["finetune"], cfg["upstream"], cfg["data"]
    if ft["warmup"] >= ft["steps"]:
        raise ConfigError(
            "finetune.warmup", ft["warmup"], f"must be < finetune.steps = {ft['steps']}"
        )
    if up["checkpoint"] is None and up["warmup"] >= up["steps"]:
        raise ConfigError(
            "upstream.warmup", up["warmup"], f"must be < upstream.steps = {up['steps']}"
        )
    pretrain_set = up["dataset"] or data["dataset"]  # None pairs with data.dataset
    if up["renderings"] != 1 and pretrain_set != "demo":
        raise ConfigError(
            "upstream.renderings",
            up["renderings"],
            f"must be 1 with the upstream set {pretrain_set!r} (only the embedded demo "
            "upstream set has renderings)",
        )
    if ft["end_lr"] > ft["lr"]:
        raise ConfigError(
            "finetune.end_lr",
            ft["end_lr"],
            f"must be <= finetune.lr = {ft['lr']} (the {ft['schedule']} schedule "
            "decays from lr to end_lr)",
        )
    n, placement, L = m["moe_n"], m["moe_placement"], spec["layers"]
    top = max_moe_n(L, placement)
    if n is not None and n > top:
        raise ConfigError(
            "model.moe_n",
            n,
            f"size {m['size']} has {L} blocks: placement {placement!r} allows "
            f"n in [1, {top}] (or null for the size's default)",
        )
    if data["image_size"] < spec["patch"]:
        raise ConfigError(
            "data.image_size",
            data["image_size"],
            f"must be >= the patch size {spec['patch']} of model.size {m['size']}",
        )


def check_microsteps(cfg: Mapping[str, Any], group_images: int, upstream_group_images: int) -> None:
    """``microsteps`` splits a stage's batch B into equal micro-batches, each made of whole
    routing groups (gcd(B, group_images) images, ``e3lib.models.moe.to_groups``), so the
    micro-batches hold exactly the full batch's groups. ``group_images``: images per routing
    group of the fine-tuned / the upstream model, 1 for a model that does not route."""
    up = cfg["upstream"]
    stages = [("finetune", cfg["finetune"], group_images)]
    if up["checkpoint"] is None:  # pretrained here
        stages.append(("upstream", up, upstream_group_images))
    for stage, section, images in stages:
        ms, batch = section["microsteps"], section["batch_size"]
        whole = math.gcd(batch, images)  # images per routing group of the full batch
        if ms > 1 and (batch % ms or (batch // ms) % whole):
            ok = [d for d in range(1, batch + 1) if batch % d == 0 and (batch // d) % whole == 0]
            groups = f" of whole routing groups ({whole} images each)" if whole > 1 else ""
            raise ConfigError(
                f"{stage}.microsteps",
                ms,
                f"must split {stage}.batch_size = {batch} into equal micro-batches{groups}; "
                f"allowed: {ok}",
            )


def check_pixels(cfg: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    """A job's images must split into whole patches, unless ``data.crop_to_patch`` says to
    drop the remainder (checked for configs that will be trained; pricing one is allowed)."""
    P, size, m = spec["patch"], cfg["data"]["image_size"], cfg["model"]
    if size % P and not cfg["data"]["crop_to_patch"]:
        raise ConfigError(
            "data.image_size",
            size,
            f"must be divisible by the patch size {P} of model.size {m['size']} "
            f"(e.g. {size - size % P} or {size - size % P + P}); set "
            f"data.crop_to_patch: true to drop the last {size % P} pixel rows and "
            "columns as the reference code does",
        )


def check_upstream_checkpoint(up: Mapping[str, Any]) -> None:
    """``upstream.fresh`` names leaves; the checkpoint and its checksum are null or strings,
    the checksum 64 lowercase hex digits."""
    fresh = up["fresh"]
    if not isinstance(fresh, list) or not all(isinstance(p, str) and p for p in fresh):
        raise ConfigError(
            "upstream.fresh",
            fresh,
            "must be a list of leaf names or name parts (e.g. [head, pre_logits, Router])",
        )
    for field in ("checkpoint", "checkpoint_sha256"):
        if up[field] is not None and (not isinstance(up[field], str) or not up[field]):
            raise ConfigError(f"upstream.{field}", up[field], "must be null or a string")
    sha = up["checkpoint_sha256"]
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ConfigError(
            "upstream.checkpoint_sha256",
            sha,
            "must be 64 lowercase hex digits (as `e3 checkpoint inspect` prints)",
        )


def check_pp(data: Mapping[str, Any]) -> None:
    """``data.pp_train`` / ``pp_eval``: null, a recipe name or a pp string that parses."""
    for key, which in (("pp_train", "train"), ("pp_eval", "eval")):
        if data[key] is not None:
            if not isinstance(data[key], str) or not data[key].strip():
                raise ConfigError(
                    f"data.{key}", data[key], f"must be a pp string or a recipe {sorted(RECIPES)}"
                )
            parse_pp(pp_string(data[key], data["image_size"], which), f"data.{key}")
