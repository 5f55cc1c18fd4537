"""Parameter counts from shapes only (``jax.eval_shape``: nothing is allocated).

Notation: B images, H hidden size, E experts, C classes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def param_shapes(cfg: RunConfig, num_classes: int, image_size: int | None = None) -> Any:
    """The parameter tree of the run's model as ``jax.ShapeDtypeStruct`` leaves."""
    from e3lib.models.build import build_model

    size = image_size or cfg.data.image_size
    model = build_model(cfg, num_classes)
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)  # (B=1, H, W, 3)
    variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), images)
    return variables["params"]


def count_tree(tree: Any) -> int:
    """Number of scalars in a tree of arrays or shape structs."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def count_params(cfg: RunConfig, num_classes: int, image_size: int | None = None) -> int:
    """Total parameter count of the run's model at ``image_size`` (default: data.image_size)."""
    return count_tree(param_shapes(cfg, num_classes, image_size))
