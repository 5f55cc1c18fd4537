"""The typed run config: one frozen dataclass per section, and the owner of every field's
name, type and default.

``e3lib.config.resolve`` validates a run config once, where it enters (sweep expansion,
``e3 run``, ``e3 upstream``, ``e3 flops``), and returns a ``RunConfig``; every stage after
that (training, evaluation, cost, the model builders) reads its attributes
(``cfg.model.num_experts``). ``e3lib.config.DEFAULTS`` is derived from the dataclass defaults
below (``defaults_dict``). ``to_dict`` gives the plain nested dict that is hashed into the run
id and stored with results; ``RunConfig.from_dict`` is its inverse (it checks the layout, not
the values: only ``resolve`` makes a config that the stages may trust).

Immutable: lists are held as tuples, the mesh mapping read-only. A changed config is a new
one: ``dataclasses.replace`` for a field that needs no validation (the seed of a sweep
point), ``e3lib.config.override`` (re-resolved) otherwise.

Fields only one method reads are declared by its registry entry (``Method.fields``, with
their default); the section below names them with their type and takes the default from the
registry, so the default has one owner. Notation as in ``e3lib.config``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from e3lib.errors import ConfigError
from e3lib.models.registry import METHODS


def _declared(dotted: str) -> Any:
    """The default a method's registry entry declares for its own field ``dotted``."""
    for method in METHODS.values():
        if dotted in method.fields:
            return method.fields[dotted]
    raise ValueError(f"no method declares {dotted!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and routing fields."""

    size: str = "tiny"
    num_experts: int = 8  # E
    num_selected: int = 1  # K
    ensemble_size: int = 1  # M (members of E3 / Tiling / Partitioning / baselines)
    overlap: int = 0  # o: experts shared by all members (E3 with overlap)
    moe_placement: str = "last"  # "last" (last-n odd blocks) or "every" (every n-th block)
    moe_n: int | None = None  # n; None = the size's default (2, or 5 for H/14)
    noise_mult: float = 1.0  # router noise multiplier
    # "code": σ = mult/(experts the router sees); "paper": σ = mult/E
    noise_scaling: str = "code"
    aux_weight: float = 0.01  # λ: importance and load losses each weighted λ/2
    capacity_factor: float = 1.5  # C at training time
    # C at evaluation; None = same as training (code); paper: 8
    eval_capacity_factor: float | None = None
    batch_priority: bool = False  # batch-prioritized routing
    expert_dropout: float = 0.0  # dropout inside expert MLPs (Table 7 uses 0.1 at full scale)
    dropout: float = 0.0  # dropout elsewhere
    group_images: int = 8  # images per routing group (per member under E3)
    num_predictions: int = 1  # Multi-pred: predictions from the last MoE layer (= K)
    permute_experts: bool = False  # Table 13: shuffle upstream experts before partitioning
    representation: bool = True  # pre-logits representation layer (Dense + tanh)
    # initial head bias; None = -log(num_classes) (V-MoE configs)
    head_bias_init: float | None = None
    # Memory levers (docs/training.md, "Memory levers"): compute dtype of the dense,
    # attention and expert matmuls; dtype the parameters are stored and updated in (the
    # router, auxiliary losses and the head's losses compute in float32 either way);
    # rematerialisation of each encoder block (a jax.checkpoint_policies name, not part of
    # the run id).
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
    # MoE token buffers (dispatch, all-to-all, combine): "float32" = the activations' own
    # dtype, no cast; "bfloat16" = the reference's bfloat16 dispatcher (gates stay float32)
    dispatch_dtype: str = "float32"
    # Efficient-ensemble baselines (Appendix G).
    be_init: str = "random_sign"  # BatchEnsemble fast-weight init: random_sign | normal
    be_lr_scale: float = 1.0  # BatchEnsemble fast-weight learning-rate factor
    mimo_input_repetition: float = 0.0  # MIMO: probability that all members see the same image
    mimo_batch_repetition: int = 1  # MIMO: times each batch is repeated
    # Declared by methods (registry ``Method.fields``): default from the registry.
    partition_k: str = _declared("model.partition_k")
    slots_per_expert: int = _declared("model.slots_per_expert")
    soft_moe_normalize: bool = _declared("model.soft_moe_normalize")


@dataclass(frozen=True)
class UpstreamConfig:
    """How the checkpoint fine-tuning starts from is obtained."""

    # Checkpoint to fine-tune from instead of pretraining here: an Orbax directory, a
    # published .npz / V-MoE sharded prefix (local path or gs:// URL), or the name of a
    # published checkpoint (e3lib/upstreams/catalog.py; docs/checkpoints.md).
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None  # content checksum (pinned at expansion for local files)
    fresh: tuple[str, ...] = ("head",)  # leaves that start from their init, not the checkpoint
    method: str | None = None  # "vmoe" or "vit"; None = derived from the method
    num_experts: int | None = None  # upstream E; None = model.num_experts
    num_selected: int | None = None  # upstream K; None = model.num_selected (Table 19 differs)
    seed: int = 0
    steps: int = 300
    lr: float = 1e-3
    warmup: int = 30
    batch_size: int = 64
    weight_decay: float = 0.1
    capacity_factor: float = 1.05
    momentum_dtype: str = "float32"  # Adam's first moment (optax mu_dtype)
    microsteps: int = 1  # gradient accumulation: micro-batches of batch_size/microsteps
    dataset: str | None = None  # None = the upstream set paired with data.dataset
    # The embedded (``demo``) upstream set only: renderings of each digit and orientation;
    # 1 = the plain set, more adds copies with random colours, shift, rotation and scale.
    renderings: int = 1
    # Steps per loss-history point (e3lib.curves); None = ⌈steps/100⌉. Not part of any id.
    log_every: int | None = None
    # Steps between pretraining checkpoints (a preemption saves too), as the reference
    # configs' 1000. Not part of any id: a resumed run equals the uninterrupted one.
    checkpoint_every: int = 1000
    # Steps between evaluations of the held-out loss (e3lib.curves, e3lib.train.upstream);
    # None = ⌈steps/20⌉, 0 = none. Not part of any id.
    eval_every: int | None = None


@dataclass(frozen=True)
class DataConfig:
    """Dataset, image size, preprocessing."""

    dataset: str = "demo"
    image_size: int = 16
    # True: the patch embedding drops the last image_size mod P pixel rows and columns
    # (the reference code's VALID convolution: the paper's H/14 at 384 px sees 378 px);
    # False: an image size not divisible by the patch size P is refused.
    crop_to_patch: bool = False
    data_dir: str | None = None
    # Preprocessing op strings (e3lib/data/preprocess.py), e.g. the reference's
    # "decode_jpeg_and_inception_crop(384)|flip_lr|value_range(-1,1)", or a recipe name
    # of e3lib.ppspec.RECIPES ("paper", "medium2", "plain"). A set pp_train, or any
    # dataset but the embedded demo, streams the data (e3lib.data.stream); None there =
    # "plain". The demo with None keeps its in-memory arrays.
    pp_train: str | None = None
    pp_eval: str | None = None
    input_workers: int = 0  # grain worker processes decoding the stream


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimisation recipe of the fine-tuning job."""

    steps: int = 100
    lr: float = 0.01
    warmup: int = 10
    schedule: str = "cosine"  # cosine | linear
    end_lr: float = 1e-5
    batch_size: int = 64
    momentum: float = 0.9
    # Dtype of the momentum accumulator (optax accumulator_dtype); the paper's "SGD with
    # momentum (using half-precision)" is bfloat16.
    momentum_dtype: str = "float32"
    # Gradient accumulation: the step's batch in micro-batches of batch_size/microsteps,
    # their gradients averaged into one update (e3lib.train.loop).
    microsteps: int = 1
    grad_clip: float = 10.0
    mixup: float = 0.0
    checkpoint_every: int = 25
    # Steps per loss-history point (e3lib.curves); None = ⌈steps/100⌉. Not part of the id.
    log_every: int | None = None
    # Steps between evaluations of the validation split's loss and error during training
    # (e3lib.curves, e3lib.train.finetune); None = ⌈steps/20⌉, 0 = none. Not part of the id.
    eval_every: int | None = None


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation options."""

    batch_size: int = 256
    fewshot_shots: tuple[int, ...] = (1, 5, 10, 25)
    # How the few-shot ridge l2 is chosen: "test" (reference code: best test error) or
    # "holdout" (best error on the task's training images not drawn as shots).
    fewshot_l2_selection: str = "test"
    corrupted: bool = True
    ood: bool = True
    fewshot: bool = True


@dataclass(frozen=True)
class LogConfig:
    """Where a run streams its live metrics (e3lib.monitor, docs/training.md "Watching a
    run"). Not part of the run id (``RUN_ID_EXCLUDED``): logging never changes results."""

    tensorboard: bool = True  # event files under the run's folder (tb/)
    wandb_project: str | None = None  # a W&B project: log there too (None = no W&B)
    wandb_mode: str = "offline"  # "offline" (no network; `wandb sync` later) or "online"
    mlflow_uri: str | None = None  # an MLflow tracking URI (file:, sqlite:, http:); None = none
    mlflow_experiment: str | None = None  # None = the run's sweep (or "e3" outside a sweep)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "upstream": UpstreamConfig,
    "data": DataConfig,
    "finetune": FinetuneConfig,
    "eval": EvalConfig,
    "log": LogConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """A resolved run config (``e3lib.config.resolve``); see the module docstring."""

    method: str = "e3"  # a key of e3lib.models.registry.METHODS
    seed: int = 0  # fine-tuning seed
    model: ModelConfig = field(default_factory=ModelConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)  # not part of the run id
    # Device mesh: None = one device; {data: -1, expert: N} (-1 = the rest) or "auto"
    # (e3lib.parallel, docs/scale.md). Excluded from the run id (``RUN_ID_EXCLUDED``).
    mesh: Mapping[str, int] | str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> RunConfig:
        """The typed form of a complete nested config dict (every field present, no other)."""
        if isinstance(d, RunConfig):
            return d
        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, "", source)
        sections = {}
        for name, section in SECTIONS.items():
            sub = d[name]
            if not isinstance(sub, Mapping):
                raise ConfigError(name, sub, "must be a mapping", source)
            _check_keys(sub, {f.name for f in dataclasses.fields(section)}, f"{name}.", source)
            sections[name] = section(**{k: _frozen(v) for k, v in sub.items()})
        return cls(method=d["method"], seed=d["seed"], mesh=_frozen(d["mesh"]), **sections)

    def to_dict(self) -> dict:
        """The plain nested dict (lists, dicts): what is hashed, written and stored."""
        return {f.name: _thawed(getattr(self, f.name)) for f in dataclasses.fields(self)}


def require_run_config(cfg: Any, where: str) -> RunConfig:
    """``cfg`` if it is a resolved ``RunConfig``; TypeError naming ``where`` otherwise (a plain
    dict has not been validated: pass it through ``e3lib.config.resolve`` first)."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(
            f"{where} takes a resolved RunConfig (e3lib.config.resolve), not {type(cfg).__name__}"
        )
    return cfg


def _check_keys(d: Mapping[str, Any], names: set, path: str, source: str | None) -> None:
    have = set(d)
    for key in sorted(have - names, key=str):
        raise ConfigError(f"{path}{key}", d[key], f"unknown field; known: {sorted(names)}", source)
    for key in sorted(names - have):
        raise ConfigError(f"{path}{key}", None, "missing from a complete run config", source)


def _frozen(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, Mapping):
        return MappingProxyType(dict(v))
    return v


def _thawed(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {f.name: _thawed(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Mapping):
        return dict(v)
    return v


def defaults_dict() -> dict:
    """Every field's default as a nested dict (``e3lib.config.DEFAULTS``)."""
    return RunConfig().to_dict()


def _check_method_fields() -> None:
    """Each field a method declares is a field of its section, with the declared default."""
    defaults = defaults_dict()
    for method in METHODS.values():
        for dotted, default in method.fields.items():
            section, name = dotted.split(".", 1)
            if defaults.get(section, {}).get(name, _MISSING) != default:
                raise ValueError(
                    f"method {method.name!r} declares {dotted!r}: add it to the "
                    f"{section} section of e3lib.run_config with its registry default"
                )


_MISSING = object()
_check_method_fields()
