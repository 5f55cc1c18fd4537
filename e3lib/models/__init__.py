"""Flax models of the toolkit: ViT, V-MoE, E³ and the ablations of §4.2.

``build_model(cfg, num_classes)`` is the entry point (see docs/architecture.md and
docs/models.md). Imports are lazy so that reading configs does not load JAX.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_model", "count_params"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from e3lib.models.build import build_model

        return build_model
    if name == "count_params":
        from e3lib.models.params import count_params

        return count_params
    raise AttributeError(f"module 'e3lib.models' has no attribute {name!r}")
