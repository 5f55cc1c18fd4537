"""Dotted paths into nested config trees: the one home of get / set / merge / flatten.

A config is a tree of dicts whose leaves are scalars or lists; ``"model.num_experts"`` names
the leaf ``cfg["model"]["num_experts"]``. A leaf module: it imports only ``e3lib.errors``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from e3lib.errors import ConfigError

_MISSING = object()


def get(tree: Mapping[str, Any], dotted: str, default: Any = _MISSING) -> Any:
    """The value at ``dotted``; ``default`` if given and the path is absent, else KeyError."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def has_leaf(tree: Mapping[str, Any], dotted: str) -> bool:
    """True when ``dotted`` names a leaf (not a sub-tree) of ``tree``."""
    try:
        node = get(tree, dotted)
    except KeyError:
        return False
    return not isinstance(node, Mapping)


def nest(dotted: str, value: Any) -> dict:
    """``nest("a.b", 1) == {"a": {"b": 1}}``."""
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    """``{"model.size": "B/32", "method": "e3"}`` -> ``{"model": {"size": "B/32"},
    "method": "e3"}``."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict:
    """Every leaf by its dotted path (inverse of ``unflatten``)."""
    out: dict = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``base`` updated by ``over`` (recursively), new dicts along merged paths, leaves shared.

    Any key is accepted; use ``merge_known`` where unknown keys are an error.
    """
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def merge_known(base: Mapping[str, Any], over: Mapping[str, Any], path: str = "") -> dict:
    """A deep copy of ``base`` updated by ``over``; a key ``base`` lacks raises ConfigError."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        dotted = f"{path}{key}"
        if key not in out:
            raise ConfigError(dotted, value, f"unknown field; known fields here: {sorted(out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(dotted, value, "must be a mapping")
            out[key] = merge_known(out[key], value, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignments(items: Iterable[str], option: str = "--set") -> dict:
    """``["model.num_selected=2"]`` -> ``{"model": {"num_selected": 2}}``; values are YAML
    scalars."""
    import yaml

    flat: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(option, item, "expected FIELD=VALUE, e.g. model.num_selected=2")
        dotted, raw = item.split("=", 1)
        flat[dotted.strip()] = yaml.safe_load(raw)
    return unflatten(flat)
