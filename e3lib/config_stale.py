"""Stale results: a finished run's stored config and size shape against the current ones.

A run id hashes only the fields that differ from ``e3lib.config.DEFAULTS`` and the size's
name, so a result can outlive a change of a default or of a ``MODEL_SIZES`` entry under the
same id; ``e3 aggregate`` compares what each result stored with the current config and
refuses stale ones. A leaf module below ``e3lib.config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from e3lib.config_rules import RUN_ID_EXCLUDED
from e3lib.models.sizes import MODEL_SIZES


def stale_fields(
    stored: Mapping[str, Any], current: Mapping[str, Any], path: str = ""
) -> list[str]:
    """Dotted fields whose value in a stored (finished) config differs from the current one.

    Fields absent from the stored config were added to ``DEFAULTS`` after the run finished;
    the same run id implies they hold their default, so they are not stale.
    """
    diffs: list[str] = []
    for key, value in current.items():
        dotted = f"{path}{key}"
        if key not in stored or dotted in RUN_ID_EXCLUDED:
            continue
        old = stored[key]
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            diffs += stale_fields(old, value, dotted + ".")
        elif old != value:
            diffs.append(dotted)
    return diffs


def size_shape(cfg: Mapping[str, Any]) -> dict | None:
    """The ``MODEL_SIZES`` entry of the run's size, as results store it (None if unknown).

    The run id hashes the size's name, not its shape; results store the shape so that
    ``stale_size_shape`` can tell when a size's entry was edited after the run finished.
    """
    size = (cfg.get("model") or {}).get("size")
    return dict(MODEL_SIZES[size]) if size in MODEL_SIZES else None


def stale_size_shape(
    stored_shape: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> list[str]:
    """["model.size"] if a result's stored shape differs from the current size entry."""
    if stored_shape is None:
        return []  # results written before shapes were stored: nothing to compare
    return [] if dict(stored_shape) == size_shape(current) else ["model.size"]
