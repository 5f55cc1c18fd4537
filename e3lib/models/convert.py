"""Upstream -> downstream parameters: build any method from a V-MoE (or ViT) checkpoint.

Notation: H hidden size, E experts, M members, R routers, E_r experts per router, o overlap,
T tokens per image, Q MLP width.

Rules applied leaf by leaf to the downstream model's freshly initialised tree (Appendix B,
vmoe-reference.md §8):

* ``head`` and every leaf matching ``upstream.fresh`` (``matches``): kept from the downstream
  initialisation (a new, zero-initialised head); upstream leaves they match are dropped.
* ``Encoder/posembed_input`` (1, 1 + h·h, H): the class-token row is kept, the h×h grid is
  resized to the downstream grid by a corner-aligned linear zoom (the reference's
  ``scipy.ndimage.zoom(grid, (h'/h, h'/h, 1), order=1)``), written as two interpolation
  matrices so that it also runs on shapes alone (``jax.eval_shape``: dry runs).
* ``.../Moe/Router/kernel``: the upstream kernel, (H, E) or (H, R_up, E_r_up) laid out
  contiguously, is flattened to (H, E) (column e = expert e) and the columns of each
  downstream router's expert subset are gathered into (H, R, E_r). For E³ without overlap
  this is the reshape (H, E) -> (H, M, E/M); for V-MoE/Tiling it is (H, 1, E); for
  overlap, the shared experts' columns are copied into every member's router. A router with
  no upstream kernel (a dense upstream) is an error unless ``upstream.fresh`` lists it: no
  leaf is silently left at its initialisation.
* ``.../Moe/Mlp/...`` (E, ...): expert weights copied; from a dense ViT MLP they are tiled
  into E identical experts.
* optional expert permutation (Table 13): new expert i = upstream expert π(i), applied to the
  expert weights and to the router columns alike, before the subsets are taken.
* every other leaf is copied and must have the same shape (a mismatch names the path).
* accounting: an upstream leaf that no rule uses (and no fresh pattern drops) is an error
  naming it with its shape. A method's ``prepare_upstream`` hook (registry) rewrites leaves
  into its shapes first and removes the upstream leaves it deliberately does not use.

K and M may differ from the upstream's (Table 19): K has no parameters, M only changes how
the router columns are grouped. Checkpoints are read with Orbax (``restore_params``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from e3lib.models.registry import method_of, moe_layout
from e3lib.models.sizes import size_spec

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Array = jax.Array
Params = Mapping[str, Any]


class ConversionError(ValueError):
    """An upstream leaf that cannot be mapped onto the downstream model."""


def zoom_matrix(old: int, new: int) -> np.ndarray:
    """(new, old) corner-aligned linear interpolation: row i samples input coordinate
    x = i·(old − 1)/(new − 1) as (1 − w)·g[⌊x⌋] + w·g[⌊x⌋ + 1], w = x − ⌊x⌋
    (``scipy.ndimage.zoom(order=1)``: corner cells copied, no anti-aliasing)."""
    out = np.zeros((new, old), np.float64)
    for i in range(new):
        x = i * (old - 1) / (new - 1) if new > 1 else 0.0
        lo = min(int(np.floor(x)), old - 1)
        hi, w = min(lo + 1, old - 1), x - lo
        out[i, lo] += 1.0 - w
        out[i, hi] += w
    return out


def resize_posemb(posemb: Array, target_tokens: int) -> Array:
    """(1, 1 + h·h, H) -> (1, target_tokens, H): class row kept, grid zoomed corner-aligned."""
    _, tokens, hidden = posemb.shape
    if tokens == target_tokens:
        return posemb
    old, new = int(round((tokens - 1) ** 0.5)), int(round((target_tokens - 1) ** 0.5))
    if old * old != tokens - 1 or new * new != target_tokens - 1:
        raise ConversionError(
            f"posembed_input: cannot resize {tokens} tokens to "
            f"{target_tokens}: expected 1 + a square number each"
        )
    posemb = jnp.asarray(posemb)
    z = jnp.asarray(zoom_matrix(old, new), jnp.float32)  # (h', h)
    cls, grid = posemb[:, :1], posemb[0, 1:].reshape(old, old, hidden)  # (h, h, H)
    grid = jnp.einsum(
        "ia,jb,abd->ijd", z, z, grid.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )  # (h', h', H)
    grid = grid.astype(posemb.dtype).reshape(1, new * new, hidden)
    return jnp.concatenate([cls, grid], axis=1)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when a pattern's '/'-separated parts occur, in order and contiguously, among
    ``name``'s: ``head`` matches ``head/kernel``, ``Router`` matches
    ``Encoder/encoderblock_7/Moe/Router/kernel``, ``encoderblock_7/Moe`` its leaves."""
    parts = name.split("/")
    for p in patterns:
        want = [w for w in str(p).split("/") if w]
        n = len(want)
        if n and any(parts[i : i + n] == want for i in range(len(parts) - n + 1)):
            return True
    return False


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


def convert_params(
    upstream: Params,
    target: Params,
    *,
    subsets: Sequence[Sequence[int]] | None = None,
    permutation: np.ndarray | None = None,
    keep_head: bool = False,
    fresh: Sequence[str] = (),
    record: dict | None = None,
    put: Callable[[str, Array], Any] | None = None,
) -> dict:
    """Map an upstream parameter tree onto a downstream one (see the module docstring).

    upstream: upstream ``params``; target: the downstream model's initialised ``params``
    (arrays; their values are kept where the rules say so, e.g. the new head);
    subsets: expert ids of each downstream router (``registry.moe_layout(cfg, spec).subsets``);
    permutation: optional expert permutation π (length E);
    fresh: ``upstream.fresh`` patterns (leaves meant to start from their initialisation);
    record: if given, filled with target path -> (rule, upstream path or None);
    put: if given, each converted leaf is replaced by ``put(path, leaf)`` as soon as it is
    converted (e.g. placed on a mesh), so the converted tree never exists whole.
    """
    source = traverse_util.flatten_dict(dict(upstream), sep="/")
    fresh = tuple(p for p in fresh if p != "head") if keep_head else ("head", *fresh)
    record = {} if record is None else record
    out = {}
    for path, leaf in traverse_util.flatten_dict(dict(target), sep="/").items():
        value = _convert_leaf(path, leaf, source, subsets, permutation, fresh, record)
        out[path] = value if put is None else put(path, value)
    used = {src for _, src in record.values() if src is not None}
    unused = {
        p: tuple(np.shape(v)) for p, v in source.items() if p not in used and not matches(p, fresh)
    }
    if unused:
        listed = "\n".join(f"    {p} {s}" for p, s in sorted(unused.items()))
        raise ConversionError(
            f"upstream leaves no downstream leaf uses:\n{listed}\n  list "
            f"them in upstream.fresh to drop them (now {list(fresh)})"
        )
    return traverse_util.unflatten_dict(out, sep="/")


def _convert_leaf(
    path: str, leaf: Array, source: dict, subsets, permutation, fresh: Sequence[str], record: dict
) -> Array:
    parts = path.split("/")
    if matches(path, fresh):
        record[path] = ("fresh", None)
        return _fresh(path, leaf)
    if "/Moe/Router/" in path:
        if path not in source:
            routers = sorted(p for p in source if "/Router/" in p)
            raise ConversionError(
                f"{path} {tuple(leaf.shape)}: no upstream router kernel at this path "
                f"(upstream routers: {routers or 'none, a dense upstream'}); list it in "
                f"upstream.fresh (e.g. [head, Router]) to start it from its initialisation"
            )
        record[path] = ("router", path)
        columns = router_columns(jnp.asarray(source[path]))  # (H, E)
        if permutation is not None:
            columns = columns[:, np.asarray(permutation)]
        routers = subsets if subsets is not None else [list(range(columns.shape[1]))]
        if max(max(s) for s in routers) >= columns.shape[1]:
            raise ConversionError(
                f"{path}: upstream router scores {columns.shape[1]} experts, "
                f"downstream subsets use expert ids up to "
                f"{max(max(s) for s in routers)}"
            )
        return _checked(path, router_kernel_for(columns, routers), leaf)
    if "/Moe/Mlp/" in path:
        value = source.get(path)
        if value is None:  # dense upstream: ".../Moe/Mlp/X" <- ".../Mlp/MlpBlock/X"
            dense = path.replace("/Moe/Mlp/", "/Mlp/MlpBlock/")
            if dense not in source:
                raise ConversionError(
                    f"{path} {tuple(leaf.shape)}: no upstream leaf {path!r} or {dense!r}"
                )
            record[path] = ("experts_from_dense", dense)
            value = jnp.broadcast_to(source[dense], leaf.shape)  # E identical experts
        else:
            record[path] = ("experts", path)
            if permutation is not None:
                value = jnp.asarray(value)[np.asarray(permutation)]
        return _checked(path, value, leaf)
    if path not in source:
        raise ConversionError(
            f"{path} {tuple(leaf.shape)}: missing in the upstream "
            f"checkpoint (upstream has {len(source)} leaves)"
        )
    value = jnp.asarray(source[path])
    rule = "copy"
    if parts[-1] == "posembed_input" and value.shape != tuple(leaf.shape):
        value, rule = resize_posemb(value, leaf.shape[1]), "posemb_zoom"
    record[path] = (rule, path)
    return _checked(path, value, leaf)


def _fresh(path: str, leaf: Any) -> Array:
    """A leaf kept from the downstream initialisation (it must hold values)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        raise ConversionError(
            f"{path}: kept from the downstream initialisation, so the "
            f"target tree needs initialised arrays, not shapes"
        )
    return leaf


def _checked(path: str, value: Array, leaf: Array) -> Array:
    if tuple(value.shape) != tuple(leaf.shape):
        raise ConversionError(
            f"{path}: upstream shape {tuple(value.shape)} does not fit the "
            f"downstream shape {tuple(leaf.shape)}"
        )
    return jnp.asarray(value, leaf.dtype)


def conversion_rules(cfg: RunConfig, keep_head: bool = False) -> dict:
    """Keyword arguments of ``convert_params`` for the run's method: router ``subsets`` of
    its MoE layout, the seeded expert ``permutation`` (``model.permute_experts``), the
    ``fresh`` patterns (``upstream.fresh``) and ``keep_head`` (the head is kept from the
    upstream when ``keep_head`` or when ``upstream.fresh`` does not list it)."""
    m = cfg.model
    fresh = tuple(cfg.upstream.fresh)
    keep_head = keep_head or not matches("head/kernel", fresh)  # fresh: [] keeps the head
    layout = moe_layout(cfg, size_spec(cfg))
    perm = expert_permutation(m.num_experts, cfg.seed) if m.permute_experts else None
    return dict(
        subsets=layout.subsets if layout is not None else None,
        permutation=perm,
        keep_head=keep_head,
        fresh=fresh,
    )


def convert_for_config(
    upstream: Params,
    target: Params,
    cfg: RunConfig,
    keep_head: bool = False,
    record: dict | None = None,
    put: Callable[[str, Array], Any] | None = None,
) -> dict:
    """``convert_params`` with the rules of the run's method (its registry entry): its
    ``prepare_upstream`` hook first, then ``conversion_rules``."""
    rules = conversion_rules(cfg, keep_head)
    method = method_of(cfg)
    if method.prepare_upstream:  # method-specific leaves (BatchEnsemble, MIMO) first
        upstream = method.prepare_upstream(upstream, target, cfg, rules["keep_head"])
    return convert_params(upstream, target, record=record, put=put, **rules)


def save_params(directory: str | os.PathLike, params: Params) -> None:
    """Write a parameter tree as an Orbax checkpoint (Orbax writes to a temporary
    directory and renames it into place when complete)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(directory), params)


def restore_params(directory: str | os.PathLike, key: str | None = "params") -> dict:
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
