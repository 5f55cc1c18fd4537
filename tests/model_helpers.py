"""Random parameters from shapes only, drawn with NumPy (nothing for XLA to compile).

``model.init`` compiles one random-number program per distinct parameter shape, which
dominates the cost of tests and benchmarks on tiny models. Where the initial distribution
does not matter (routing, dispatch, conversion, shapes), ``random_params`` gives a
parameter tree of the right structure at the cost of a trace (``jax.eval_shape``).

Values: LayerNorm scales 1; other vectors (biases, ...) N(0, 0.02²); arrays with two or more
axes N(0, 1/fan_in) with fan_in = the product of all but the last axis (without the
stacked-experts axis E of expert weights, and H alone for a router kernel (H, R, E_r)).
Unlike ``init``, experts are *not* identical (each expert gets its own draw).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def param_structure(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The ``params`` tree of ``model.init(..., *args, **kwargs)`` as shape structs."""
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *args, **kwargs))
    return variables["params"]


def random_params(model: nn.Module, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
    """A random ``params`` tree for ``model`` called on ``args`` (see module docstring)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if len(leaf.shape) < 2:
            return jnp.asarray(rng.normal(0.0, 0.02, leaf.shape), leaf.dtype)
        keys = [getattr(p, "key", "") for p in path]
        if "Router" in keys:  # (H, R, E_r): R routers side by side
            fan_in = leaf.shape[0]
        elif "Moe" in keys and "Mlp" in keys:  # (E, ...): E stacked experts
            fan_in = math.prod(leaf.shape[1:-1])
        else:
            fan_in = math.prod(leaf.shape[:-1])
        return jnp.asarray(rng.normal(0.0, fan_in**-0.5, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, param_structure(model, *args, **kwargs))
