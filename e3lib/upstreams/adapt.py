"""Published checkpoint -> a run's model, through the one conversion of ``models.convert``.

Notation: H hidden size, E experts, M members, R routers per MoE layer, E_r experts per router.

The rules (new head, corner-aligned position-embedding zoom, router columns regrouped into
the run's expert subsets — E³ (H, E) -> (H, M, E/M), overlap's shared columns copied into
every member — expert permutation, dense MLP tiled into E experts) and each method's own
leaf rewrites (its registry entry's ``prepare_upstream``: BatchEnsemble member biases, MIMO
input channels, Soft MoE's unused router) are those of ``e3lib.models.convert``, applied to
the checkpoint's leaves under their e3lib names (``names``). Nothing here is per method.

``plan_adaptation`` runs that conversion on shapes only (``jax.eval_shape``): it reads no
array, records the rule and source of every target leaf, and raises ``AdaptationError``
naming the leaves on both sides (with shapes) when a target leaf has no source or a
checkpoint leaf has no use — before any array is read, and in ``e3 checkpoint inspect --for``.
``adapt_published`` then reads only the leaves the plan uses (streamed, each handed to
``place`` when complete) and converts them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from e3lib.models.convert import (
    ConversionError,
    conversion_rules,
    convert_for_config,
    convert_params,
    matches,
)
from e3lib.models.registry import method_of

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Shape = tuple[int, ...]


class AdaptationError(ConversionError):
    """A checkpoint that does not fit the run's model; names the leaves on both sides."""


@dataclass
class Plan:
    steps: dict[str, tuple[str, str | None]]  # target -> (rule, e3lib source name)
    target: dict[str, Shape]
    source: dict[str, Shape]  # checkpoint leaves (e3lib names)
    dropped: dict[str, Shape] = field(default_factory=dict)

    @property
    def read(self) -> list[str]:
        """Checkpoint leaves the conversion uses."""
        return sorted({s for _, s in self.steps.values() if s in self.source})

    def lines(self, stored: Mapping[str, str] | None = None) -> list[str]:
        """Human-readable mapping: target <- rule <- checkpoint leaf, with shapes."""
        out = []
        for t, (rule, src) in sorted(self.steps.items()):
            shape = self.target[t]
            if rule == "fresh":
                out.append(f"{t} {shape}  <- fresh (upstream.fresh)")
            elif src in self.source:
                name = (stored or {}).get(src, src)
                out.append(f"{t} {shape}  <- {rule} <- {name} {self.source[src]}")
            else:
                out.append(f"{t} {shape}  <- initialisation (the method's prepare_upstream)")
        for d, shape in sorted(self.dropped.items()):
            out.append(f"(dropped) {(stored or {}).get(d, d)} {shape}  (upstream.fresh)")
        return out


def _abstract(shapes: Mapping[str, Shape], dtypes: Mapping[str, Any] | None = None) -> dict:
    flat = {
        k: jax.ShapeDtypeStruct(tuple(v), (dtypes or {}).get(k, jnp.float32))
        for k, v in shapes.items()
    }
    return traverse_util.unflatten_dict(flat, sep="/")


def plan_adaptation(
    source: Mapping[str, Shape],
    target: Mapping[str, Shape],
    cfg: RunConfig,
    stored: Mapping[str, str] | None = None,
    where: str = "checkpoint",
) -> Plan:
    """The conversion of ``source`` (e3lib name -> shape) onto ``target``, from shapes only.

    ``stored`` (e3lib name -> stored name) makes messages name the checkpoint's leaves.
    """
    source = {k: tuple(v) for k, v in source.items()}
    target = {k: tuple(v) for k, v in target.items()}
    record: dict = {}
    try:
        jax.eval_shape(
            lambda u, t: convert_for_config(u, t, cfg, record=record),
            _abstract(source),
            _abstract(target),
        )
    except ConversionError as err:
        text = str(err)
        for e3, name in (stored or {}).items():
            if name != e3:
                text = text.replace(f"    {e3} ", f"    {name} ")
        raise AdaptationError(
            f"{where} does not fit the run's model (method {cfg.method}, size "
            f"{cfg.model.size}):\n  {text}\n  upstream.fresh = "
            f"{list(cfg.upstream.fresh)}: list leaves meant to start from their "
            f"initialisation (e.g. head, pre_logits, Router)"
        ) from None
    used = {s for _, s in record.values()}
    dropped = {
        s: shape
        for s, shape in source.items()
        if s not in used and matches(s, ["head", *cfg.upstream.fresh])
    }
    return Plan(record, target, source, dropped)


def shapes_of(params: Mapping) -> dict[str, Shape]:
    return {
        k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()
    }


def adapt_published(
    ckpt,
    fresh_params: Mapping,
    cfg: RunConfig,
    place: Callable[[str, Any], Any] | None = None,
    put: Callable[[str, Any], Any] | None = None,
) -> dict:
    """A ``PublishedCheckpoint`` -> the run's parameter tree (``fresh_params``' structure).

    The plan is checked first (no array read on a misfit); then the leaves it uses are read
    once, shard by shard, each handed to ``place(e3lib_name, host_array)`` when complete
    (its return value is kept), and converted. With ``put(target_path, leaf)`` (e.g. a
    device put with the leaf's sharding on a mesh) each converted leaf is handed over as
    soon as it is ready: for methods without a ``prepare_upstream`` hook, the target leaves
    of a checkpoint leaf are converted and put while the reader streams, and the host copy
    is dropped; the values are those of the whole-tree conversion, leaf for leaf.
    """
    plan = plan_adaptation(
        ckpt.shapes, shapes_of(fresh_params), cfg, ckpt.params, where=f"checkpoint {ckpt.path}"
    )
    if put is not None and place is None and not method_of(cfg).prepare_upstream:
        return _adapt_streamed(ckpt, plan, fresh_params, cfg, put)
    arrays = ckpt.read(plan.read, place)
    upstream = traverse_util.unflatten_dict(arrays, sep="/")
    return convert_for_config(upstream, fresh_params, cfg, put=put)


def _adapt_streamed(ckpt, plan: Plan, fresh_params: Mapping, cfg: RunConfig, put) -> dict:
    """Convert and ``put`` the target leaves of each checkpoint leaf as the reader hands it
    over (``convert_params`` on that one leaf and its targets, with the run's rules)."""
    rules = conversion_rules(cfg)
    target = traverse_util.flatten_dict(dict(fresh_params), sep="/")
    by_source: dict[str | None, list[str]] = {}
    for t, (_, src) in plan.steps.items():
        by_source.setdefault(src if src in plan.source else None, []).append(t)
    out: dict[str, Any] = {}

    def convert(src: str | None, array: Any) -> None:
        upstream = {} if src is None else {src: array}
        targets = {t: target[t] for t in by_source.get(src, [])}
        done = convert_params(upstream, targets, put=put, **rules)
        out.update(traverse_util.flatten_dict(done, sep="/"))

    ckpt.read(plan.read, lambda name, array: convert(name, array))
    convert(None, None)  # leaves kept from the initialisation (head, upstream.fresh)
    return traverse_util.unflatten_dict({t: out[t] for t in target}, sep="/")


def target_shapes(cfg: RunConfig, num_classes: int) -> dict[str, Shape]:
    """The run's parameter shapes without initialising them (``jax.eval_shape``)."""
    from e3lib.models import build_model

    model = build_model(cfg, num_classes)
    size = cfg.data.image_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(
        lambda k, x: model.init({"params": k}, x, train=False), jax.random.key(0), x
    )["params"]
    return shapes_of(shapes)
