"""Upstream -> downstream parameters: build any method from a V-MoE (or ViT) checkpoint.

Notation: H hidden size, E experts, M members, R routers, E_r experts per router, o overlap,
T tokens per image, Q MLP width.

Rules applied leaf by leaf to the downstream model's freshly initialised tree (Appendix B,
vmoe-reference.md §8):

* ``head``: kept from the downstream initialisation (a new, zero-initialised head).
* ``Encoder/posembed_input`` (1, 1 + h·w, H): the class-token row is kept, the h×w grid is
  resized bilinearly to the downstream grid when the image resolution changes.
* ``.../Moe/Router/kernel``: the upstream kernel, (H, E) or (H, R_up, E_r_up) laid out
  contiguously, is flattened to (H, E) (column e = expert e) and the columns of each
  downstream router's expert subset are gathered into (H, R, E_r). For E³ without overlap
  this is the reshape (H, E) -> (H, M, E/M); for V-MoE/Tiling it is (H, 1, E); for
  overlap, the shared experts' columns are copied into every member's router.
* ``.../Moe/Mlp/...`` (E, ...): expert weights copied; from a dense ViT MLP they are tiled
  into E identical experts.
* optional expert permutation (Table 13): new expert i = upstream expert π(i), applied to the
  expert weights and to the router columns alike, before the subsets are taken.
* every other leaf is copied and must have the same shape (a mismatch names the path).

K and M may differ from the upstream's (Table 19): K has no parameters, M only changes how
the router columns are grouped. Checkpoints are read with Orbax (``restore_params``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from e3lib.models.registry import method_of, moe_layout
from e3lib.models.sizes import size_spec

Array = jax.Array
Params = Mapping[str, Any]


class ConversionError(ValueError):
    """An upstream leaf that cannot be mapped onto the downstream model."""


def resize_posemb(posemb: Array, target_tokens: int) -> Array:
    """(1, 1 + h·w, H) -> (1, target_tokens, H): class row kept, grid resized bilinearly."""
    _, tokens, hidden = posemb.shape
    if tokens == target_tokens:
        return posemb
    old, new = int(round((tokens - 1) ** 0.5)), int(round((target_tokens - 1) ** 0.5))
    if old * old != tokens - 1 or new * new != target_tokens - 1:
        raise ConversionError(f"posembed_input: cannot resize {tokens} tokens to "
                              f"{target_tokens}: expected 1 + a square number each")
    cls, grid = posemb[:, :1], posemb[0, 1:].reshape(old, old, hidden)  # (h, w, H)
    grid = jax.image.resize(grid, (new, new, hidden), method="bilinear")  # (h', w', H)
    return jnp.concatenate([cls, grid.reshape(1, new * new, hidden)], axis=1)


def router_columns(kernel: Array) -> Array:
    """Upstream router kernel -> (H, E), column e scoring expert e.

    (H, E) is returned as is; (H, R, E_r) is flattened router-major, which is the expert
    order of a contiguous layout (V-MoE: R=1; E³ without overlap: member m owns
    [m·E_r, (m+1)·E_r)).
    """
    if kernel.ndim == 2:
        return kernel
    return kernel.reshape(kernel.shape[0], -1)  # (H, R, E_r) -> (H, R·E_r)


def router_kernel_for(columns: Array, subsets: Sequence[Sequence[int]]) -> Array:
    """(H, E) columns -> (H, R, E_r) kernel of routers over ``subsets`` (R, E_r)."""
    return columns[:, np.asarray(subsets)]  # (H, R, E_r)


def expert_permutation(num_experts: int, seed: int) -> np.ndarray:
    """π: downstream expert i starts from upstream expert π[i] (a seeded shuffle)."""
    return np.random.default_rng(seed).permutation(num_experts)


def convert_params(upstream: Params, target: Params, *,
                   subsets: Optional[Sequence[Sequence[int]]] = None,
                   permutation: Optional[np.ndarray] = None,
                   keep_head: bool = False) -> dict:
    """Map an upstream parameter tree onto a downstream one (see the module docstring).

    upstream: upstream ``params``; target: the downstream model's initialised ``params``
    (arrays; their values are kept where the rules say so, e.g. the new head);
    subsets: expert ids of each downstream router (``registry.moe_layout(cfg, spec).subsets``);
    permutation: optional expert permutation π (length E).
    """
    source = traverse_util.flatten_dict(dict(upstream), sep="/")
    out = {}
    for path, leaf in traverse_util.flatten_dict(dict(target), sep="/").items():
        out[path] = _convert_leaf(path, leaf, source, subsets, permutation, keep_head)
    return traverse_util.unflatten_dict(out, sep="/")


def _convert_leaf(path: str, leaf: Array, source: dict, subsets, permutation,
                  keep_head: bool) -> Array:
    parts = path.split("/")
    if parts[0] == "head" and not keep_head:
        return _fresh(path, leaf)
    if "/Moe/Router/" in path:
        if path not in source:
            return _fresh(path, leaf)  # a ViT upstream has no router: keep the fresh one
        columns = router_columns(jnp.asarray(source[path]))             # (H, E)
        if permutation is not None:
            columns = columns[:, np.asarray(permutation)]
        routers = subsets if subsets is not None else [list(range(columns.shape[1]))]
        if max(max(s) for s in routers) >= columns.shape[1]:
            raise ConversionError(f"{path}: upstream router scores {columns.shape[1]} experts, "
                                  f"downstream subsets use expert ids up to "
                                  f"{max(max(s) for s in routers)}")
        return _checked(path, router_kernel_for(columns, routers), leaf)
    if "/Moe/Mlp/" in path:
        value = source.get(path)
        if value is None:  # dense upstream: ".../Moe/Mlp/X" <- ".../Mlp/MlpBlock/X"
            dense = path.replace("/Moe/Mlp/", "/Mlp/MlpBlock/")
            if dense not in source:
                raise ConversionError(f"{path}: no upstream leaf {path!r} or {dense!r}")
            value = jnp.broadcast_to(source[dense], leaf.shape)        # E identical experts
        elif permutation is not None:
            value = jnp.asarray(value)[np.asarray(permutation)]
        return _checked(path, value, leaf)
    if path not in source:
        raise ConversionError(f"{path}: missing in the upstream checkpoint "
                              f"(upstream has {len(source)} leaves)")
    value = jnp.asarray(source[path])
    if parts[-1] == "posembed_input":
        value = resize_posemb(value, leaf.shape[1])
    return _checked(path, value, leaf)


def _fresh(path: str, leaf: Any) -> Array:
    """A leaf kept from the downstream initialisation (it must hold values)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        raise ConversionError(f"{path}: kept from the downstream initialisation, so the "
                              f"target tree needs initialised arrays, not shapes")
    return leaf


def _checked(path: str, value: Array, leaf: Array) -> Array:
    if tuple(value.shape) != tuple(leaf.shape):
        raise ConversionError(f"{path}: upstream shape {tuple(value.shape)} does not fit the "
                              f"downstream shape {tuple(leaf.shape)}")
    return jnp.asarray(value, leaf.dtype)


def convert_for_config(upstream: Params, target: Params, cfg: Mapping[str, Any],
                       keep_head: bool = False) -> dict:
    """``convert_params`` with the rules of the run's method (its registry entry): its
    ``prepare_upstream`` hook first, then the router subsets of its MoE layout.

    The permutation (``model.permute_experts``) is seeded by the run's ``seed``.
    """
    m = cfg["model"]
    method = method_of(cfg)
    if method.prepare_upstream:  # method-specific leaves (BatchEnsemble, MIMO) first
        upstream = method.prepare_upstream(upstream, target, cfg, keep_head)
    layout = moe_layout(cfg, size_spec(cfg))
    subsets = layout.subsets if layout is not None else None
    perm = expert_permutation(m["num_experts"], cfg["seed"]) if m["permute_experts"] else None
    return convert_params(upstream, target, subsets=subsets, permutation=perm,
                          keep_head=keep_head)


def save_params(directory: str | os.PathLike, params: Params) -> None:
    """Write a parameter tree as an Orbax checkpoint (Orbax writes to a temporary
    directory and renames it into place when complete)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(directory), params)


def restore_params(directory: str | os.PathLike, key: Optional[str] = "params") -> dict:
    """Read an Orbax checkpoint; if it holds a mapping with ``key`` (a train state), that part."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(directory)
    if not os.path.exists(path):
        raise FileNotFoundError(f"upstream checkpoint {path!r} does not exist")
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path)
    if key and isinstance(tree, Mapping) and key in tree:
        tree = tree[key]
    return tree
