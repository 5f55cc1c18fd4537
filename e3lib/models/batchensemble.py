"""BatchEnsemble ViT (Wen et al. 2019; paper Appendices B.2 and G.1).

Notation: B images, M ensemble members, T tokens per image, H hidden size, Q MLP width,
D_in / D_out input / output width of one dense layer, C classes.

A dense layer with shared kernel U (D_in, D_out) becomes, for member m,
``U_m = U ∘ (r_m s_mᵀ)``, so ``x U_m = ((x ∘ r_m) U) ∘ s_m``: one shared matmul between two
elementwise products with the member's *fast weights* r_m (D_in,) and s_m (D_out,). Each
member also has its own bias b_m (D_out,) (``bias`` is (M, D_out)).

Placement follows the V-MoE "last-n" design (App. G.1): both dense layers of the MLPs of the
blocks ``spec["moe_layers"]`` (``e3lib.models.sizes.size_spec``; the last n odd blocks,
``model.moe_n``) are BatchEnsemble layers; every other block stays a dense ViT block. Rows
are repeated M times (member index fastest, row b·M + m) before the first such block, so
the blocks before it run once per image and the head gives (B, M, C).

Fast weights are initialised (``model.be_init``) with random signs (±1, each with
probability 1/2) or from N(1, 0.5²) (mean 1, standard deviation 0.5, as App. G.1 states
N(1, 0.5)). Their learning rate is the fine-tuning learning rate times ``model.be_lr_scale``
(0.5, 1 or 2 in the paper's sweep): ``with_fast_weight_lr_scale`` wraps an Optax optimizer
accordingly, ``fast_weight_mask`` / ``param_labels`` mark the fast weights.

Fine-tuning starts from a ViT checkpoint (``prepare_upstream``): the shared kernels are the
ViT's, every member's bias is the ViT's bias, the fast weights keep their fresh
initialisation. With all fast weights equal to one the model is the ViT, member by member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from e3lib.models.factory import DTYPES, dense_mlp, vit_kwargs
from e3lib.models.vit import MlpBlock, VisionTransformer

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Array = jax.Array

# Leaf names of the rank-1 factors: r_m (input side) and s_m (output side).
FAST_WEIGHT_NAMES = ("fast_in", "fast_out")


def fast_weight_init(kind: str) -> Callable:
    """Initializer of fast-weight vectors: "random_sign" (±1) or "normal" (N(1, 0.5²))."""
    if kind == "random_sign":

        def random_sign(key, shape, dtype=jnp.float32):
            return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)

        return random_sign
    if kind == "normal":

        def normal_around_one(key, shape, dtype=jnp.float32):
            return (1.0 + 0.5 * jax.random.normal(key, shape)).astype(dtype)

        return normal_around_one
    raise ValueError(f"model.be_init={kind!r}; allowed: ['random_sign', 'normal']")


class BatchEnsembleDense(nn.Module):
    """Rank-1 BatchEnsemble dense layer on member-fast rows.

    x: (B·M, T, D_in), row b·M + m belonging to member m -> (B·M, T, D_out).
    Parameters: ``kernel`` (D_in, D_out) shared; ``bias`` (M, D_out), ``fast_in`` (M, D_in),
    ``fast_out`` (M, D_out) per member.
    """

    features: int
    ensemble_size: int  # M
    fast_init: str = "random_sign"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        rows, tokens, d_in = x.shape
        M = self.ensemble_size
        if rows % M:
            raise ValueError(f"BatchEnsembleDense: {rows} rows are not a multiple of M={M}")
        kernel = self.param("kernel", nn.initializers.xavier_uniform(), (d_in, self.features))
        bias = self.param("bias", nn.initializers.normal(stddev=1e-6), (M, self.features))
        fast_in = self.param("fast_in", fast_weight_init(self.fast_init), (M, d_in))
        fast_out = self.param("fast_out", fast_weight_init(self.fast_init), (M, self.features))
        # Per-row copies of the member vectors: (M, D) -> (B·M, 1, D), row b·M + m gets m's.
        per_row = lambda v: jnp.tile(v, (rows // M, 1))[:, None, :].astype(self.dtype)  # noqa
        x = x.astype(self.dtype) * per_row(fast_in)  # (B·M, T, D_in)
        # The shared matmul, contracted as nn.Dense does: (B·M, T, D_in) -> (B·M, T, D_out).
        y = jax.lax.dot_general(x, kernel.astype(self.dtype), (((2,), (0,)), ((), ())))
        return y * per_row(fast_out) + per_row(bias)


class BatchEnsembleMlpBlock(MlpBlock):
    """The ViT ``MlpBlock`` with BatchEnsemble projections: BE Dense(Q) -> gelu -> dropout ->
    BE Dense(H) -> dropout. Parameter paths ``Dense_0`` / ``Dense_1`` as in the dense ViT, so
    kernels convert 1:1."""

    ensemble_size: int = 1
    fast_init: str = "random_sign"

    def make_dense(self, features: int, name: str) -> nn.Module:
        return BatchEnsembleDense(
            features, self.ensemble_size, self.fast_init, self.dtype, name=name
        )


class BatchEnsembleMlp(nn.Module):
    """A block's BatchEnsemble MLP with the ``mlp(x, train)`` calling convention."""

    mlp_dim: int
    ensemble_size: int
    fast_init: str = "random_sign"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        return BatchEnsembleMlpBlock(
            self.mlp_dim,
            self.dropout_rate,
            deterministic=not train,
            dtype=self.dtype,
            ensemble_size=self.ensemble_size,
            fast_init=self.fast_init,
            name="MlpBlock",
        )(x)


def batchensemble_mlp_factory(
    cfg: RunConfig, spec: Mapping[str, Any]
) -> Callable[[int, bool], nn.Module]:
    """Dense MLPs, except ``BatchEnsembleMlp`` (named "Mlp") in the last-n blocks."""
    m = cfg.model

    def factory(block: int, train: bool) -> nn.Module:
        if block not in spec["moe_layers"]:
            return dense_mlp(cfg, spec)
        return BatchEnsembleMlp(
            spec["mlp"],
            m.ensemble_size,
            m.be_init,
            m.dropout,
            dtype=DTYPES[m.dtype],
            name="Mlp",
        )

    return factory


def build_batchensemble(
    cfg: RunConfig, spec: Mapping[str, Any], layout: None, num_classes: int
) -> nn.Module:
    """BatchEnsemble ViT: rows tiled M times before the first BatchEnsemble block."""
    return VisionTransformer(
        mlp_factory=batchensemble_mlp_factory(cfg, spec),
        tile_before=spec["moe_layers"][0],
        ensemble_size=cfg.model.ensemble_size,
        **vit_kwargs(cfg, spec, num_classes),
    )


# ----------------------------------------------------------------------------------------
# Upstream conversion.


def _is_fast(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in FAST_WEIGHT_NAMES


def prepare_upstream(
    upstream: Mapping, target: Mapping, cfg: RunConfig, keep_head: bool = False
) -> dict:
    """ViT upstream params -> BatchEnsemble shapes, before ``convert.convert_params``.

    For each BatchEnsemble layer of ``target``: the member biases (M, D_out) are the
    upstream bias (D_out,) repeated for every member; the fast weights, absent upstream,
    take the target's fresh initialisation. Leaves the upstream already has in the target's
    shape (a BatchEnsemble checkpoint) are left as they are. ``keep_head`` is unused (the head
    has the ViT's shape).
    """
    del keep_head
    source = dict(traverse_util.flatten_dict(dict(upstream), sep="/"))
    for path, leaf in traverse_util.flatten_dict(dict(target), sep="/").items():
        have = source.get(path)
        if have is not None and tuple(jnp.shape(have)) == tuple(leaf.shape):
            continue
        if _is_fast(path):
            source[path] = leaf  # fresh r_m, s_m
        elif path.endswith("/bias") and leaf.ndim == 2 and have is not None and jnp.ndim(have) == 1:
            source[path] = jnp.broadcast_to(jnp.asarray(have), leaf.shape)  # (D,) -> (M, D)
    return traverse_util.unflatten_dict(source, sep="/")


# ----------------------------------------------------------------------------------------
# Fast-weight learning-rate scale (App. G.1).


def fast_weight_mask(params: Mapping) -> Any:
    """A tree like ``params`` with True at the fast weights (r_m, s_m), False elsewhere."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in FAST_WEIGHT_NAMES, params
    )


def param_labels(params: Mapping) -> Any:
    """ "fast" / "slow" per leaf, for ``optax.multi_transform``."""
    return jax.tree_util.tree_map(lambda fast: "fast" if fast else "slow", fast_weight_mask(params))


def with_fast_weight_lr_scale(optimizer, cfg: RunConfig):
    """The fine-tuning optimizer with the fast weights' updates multiplied by
    ``model.be_lr_scale`` (for BatchEnsemble runs; other methods get ``optimizer`` back).

    Scaling the final update is scaling their learning rate, for SGD with momentum (the
    fine-tuning optimizer) and any other optimizer whose update is linear in the step size.
    """
    import optax

    scale = float(cfg.model.be_lr_scale)
    if cfg.method != "batchensemble" or scale == 1.0:
        return optimizer
    return optax.chain(optimizer, optax.masked(optax.scale(scale), fast_weight_mask))
