"""Derived defaults: the "None = derived" fields of a run config, spelled out before hashing.

``e3lib.config.resolve`` calls ``resolve_derived`` after validation, and
``e3lib.config.upstream_config`` on a stored config that predates a derived field. A leaf
module below ``e3lib.config``: it reads the method registry and the model sizes.
"""

from __future__ import annotations

from typing import Any

from e3lib.models.registry import METHODS, foreign_fields, method_named
from e3lib.models.sizes import MODEL_SIZES


def _declared_default(dotted: str) -> Any:
    """The default a method declares for one of its own fields (``Method.fields``): the value
    ``e3lib.config.DEFAULTS`` holds for it."""
    return next(m.fields[dotted] for m in METHODS.values() if dotted in m.fields)


def resolve_derived(cfg: dict) -> dict:
    """Replace every "None = derived" field of a validated config by its value, in place.

    Equal runs then have equal configs and so one id, however a sweep spells them
    (``upstream.num_selected`` unset or set to the fine-tune's K is one run):

    - ``upstream.method``: the method's upstream (``Method.upstream_method``);
    - ``upstream.num_experts`` / ``num_selected``: ``model.num_experts`` / ``num_selected``
      for a V-MoE upstream; None for a dense one (which reads neither);
    - ``upstream.dataset``: ``data.dataset`` (the loader pairs ``demo`` with its embedded
      upstream set);
    - ``model.moe_n``: the size's default n (``moe_last_n``);
    - ``model.eval_capacity_factor``: ``model.capacity_factor`` (the code's behaviour);
    - fields a method declares (``Method.fields``) that the run's method does not read:
      their default (``registry.foreign_fields``).

    ``model.head_bias_init`` stays None (= −log V): V is the data's class count, which the
    config does not know. Idempotent; returns ``cfg``.
    """
    m, up = cfg["model"], cfg["upstream"]
    for dotted in foreign_fields(cfg["method"]):
        section, name = dotted.split(".", 1)
        cfg[section][name] = _declared_default(dotted)
    if m["moe_n"] is None:
        m["moe_n"] = MODEL_SIZES[m["size"]]["moe_last_n"]
    if m["eval_capacity_factor"] is None:
        m["eval_capacity_factor"] = m["capacity_factor"]
    if up["method"] is None:
        up["method"] = method_named(cfg["method"]).upstream_method
    if up["dataset"] is None:
        up["dataset"] = cfg["data"]["dataset"]
    if up["method"] == "vmoe":
        up["num_experts"] = up["num_experts"] or m["num_experts"]
        up["num_selected"] = up["num_selected"] or m["num_selected"]
    else:
        up["num_experts"] = up["num_selected"] = None
    return cfg
