"""Run config -> Flax model: the one entry point ``build_model(cfg, num_classes)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from e3lib.errors import ConfigError
from e3lib.models.registry import method_of
from e3lib.models.sizes import size_spec

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def build_model(cfg: RunConfig, num_classes: int) -> Any:
    """The Flax module of a resolved run config (see docs/architecture.md, "Model contract").

    The size spec and the MoE layout are resolved here, once, and handed to the method's
    builder. ``cfg`` comes from ``e3lib.config.resolve``, which checked every field and the
    method's cross-field rules; it is not validated again. A plain dict has not been, and
    is refused (TypeError).
    """
    if isinstance(cfg, Mapping):
        raise TypeError(
            "build_model takes a resolved RunConfig (e3lib.config.resolve), not a "
            f"{type(cfg).__name__}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", num_classes, "must be a positive integer")
    method = method_of(cfg)
    spec = size_spec(cfg)
    layout = method.layout(cfg, spec) if method.layout else None
    return method.build(cfg, spec, layout, num_classes)
