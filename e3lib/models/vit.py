"""Vision Transformer backbone shared by every method (ViT, V-MoE, E³, ablations, baselines).

Notation: B images, T tokens per image (patches + class token), H hidden size, M copies of
each image after tiling (``ensemble_size``; 1 before tiling), F predictions per image,
D representation size (= H), Q MLP width.

Numerics follow the reference code (vmoe-reference.md §2): patch embedding by a strided
convolution, a zero-initialised class token prepended, learned position embeddings
(normal, std 0.02), pre-LN encoder blocks ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``, a final
LayerNorm, the class token's output, an optional representation layer (Dense(H) + tanh) and a
zero-initialised head whose bias starts at ``head_bias_init``.

Seams for other methods:

* ``mlp_factory(block_index, train)`` returns the MLP module of each block (dense ``MlpBlock``,
  a sparse ``MoeMlp``, a BatchEnsemble MLP, ...), created inside that block so its parameters
  live under ``encoderblock_{b}/<name>``. An MLP module is called as ``mlp(x, train=...)``
  and returns ``y`` or ``(y, metrics)``. ``y`` may have ``F`` times more rows than ``x``
  (rows ``r·F + f``, as Multi-pred does); the residual is then repeated to match.
* ``tile_before`` / ``ensemble_size``: rows are repeated M times (``repeat_rows``) before
  that block, so the block holding the first MoE layer already runs on the M copies.

Precision and memory (docs/training.md, "Memory levers"): ``dtype`` is the compute dtype of
the convolution, LayerNorms, attention and MLP matmuls (parameters are promoted to it where
they are used); routers and the returned logits are float32. ``remat`` rematerialises each
encoder block (``flax.linen.remat`` with a named ``jax.checkpoint_policies`` policy): the
backward pass recomputes the block's activations instead of keeping them, from the same
rngs, so values and gradients are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = Mapping[str, Any]
MlpFactory = Callable[[int, bool], nn.Module]


def repeat_rows(x: Array, times: int) -> Array:
    """Repeat each row ``times`` times, copy index fastest (tiling: ``times`` = M).

    (B, ...) -> (B·M, ...), row ``b·M + m`` is copy ``m`` of image ``b`` (``jnp.repeat`` as in
    the reference code, not ``jnp.tile``).
    """
    return x if times == 1 else jnp.repeat(x, times, axis=0)


class MlpBlock(nn.Module):
    """Dense(Q) -> gelu -> dropout -> Dense(H) -> dropout (the ViT MLP and each expert)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    deterministic: bool = True
    dtype: Any = jnp.float32

    def make_dense(self, features: int, name: str) -> nn.Module:
        """The layer type of both projections; variants (BatchEnsemble) override it."""
        return nn.Dense(
            features,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
            name=name,
        )

    @nn.compact
    def __call__(self, x: Array) -> Array:
        hidden = x.shape[-1]
        y = self.make_dense(self.mlp_dim, "Dense_0")(x)
        y = nn.gelu(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
        y = self.make_dense(hidden, "Dense_1")(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)


class DenseMlp(nn.Module):
    """A block's dense MLP, with the ``mlp(x, train)`` calling convention of block MLPs."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        return MlpBlock(
            self.mlp_dim,
            self.dropout_rate,
            deterministic=not train,
            dtype=self.dtype,
            name="MlpBlock",
        )(x)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block whose MLP comes from ``mlp_factory``."""

    block_index: int
    num_heads: int
    mlp_factory: MlpFactory
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, Metrics | None]:
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            broadcast_dropout=False,
            dropout_rate=self.attention_dropout_rate,
            deterministic=not train,
            name="MultiHeadDotProductAttention_0",
        )(y, y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_1")(x)
        mlp = self.mlp_factory(self.block_index, train)
        out = mlp(y, train=train)
        y, metrics = out if isinstance(out, tuple) else (out, None)
        if y.shape[0] != x.shape[0]:  # the MLP fanned each row out into F rows (r·F + f)
            x = repeat_rows(x, y.shape[0] // x.shape[0])
        return x + y, metrics


# ``model.remat`` -> what the backward pass may keep of a block's forward pass (None: nothing
# but the block's inputs, everything else is recomputed).
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def block_class(remat: str) -> type[nn.Module]:
    """``EncoderBlock``, rematerialised by the policy ``remat`` unless it is "none"."""
    if remat == "none":
        return EncoderBlock
    # static_argnums counts ``self``: argument 2 is ``train`` (a Python bool)
    return nn.remat(EncoderBlock, policy=REMAT_POLICIES[remat], static_argnums=(2,))


class Encoder(nn.Module):
    """Position embeddings, ``num_layers`` blocks, final LayerNorm."""

    num_layers: int
    num_heads: int
    mlp_factory: MlpFactory
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    tile_before: int | None = None  # block index before which rows are repeated
    ensemble_size: int = 1  # M copies made there
    dtype: Any = jnp.float32
    remat: str = "none"  # a key of REMAT_POLICIES, or "none"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict]:
        _, num_tokens, hidden = x.shape
        posemb = self.param(
            "posembed_input", nn.initializers.normal(stddev=0.02), (1, num_tokens, hidden)
        )
        x = x + posemb
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        metrics: dict = {}
        repeated = False
        block = block_class(self.remat)
        for b in range(self.num_layers):
            if b == self.tile_before:
                x = repeat_rows(x, self.ensemble_size)  # (B, T, H) -> (B·M, T, H)
                repeated = True
            x, block_metrics = block(
                block_index=b,
                num_heads=self.num_heads,
                mlp_factory=self.mlp_factory,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                dtype=self.dtype,
                name=f"encoderblock_{b}",
            )(x, train)
            if block_metrics is not None:
                metrics[f"encoderblock_{b}"] = block_metrics
        if not repeated and self.ensemble_size > 1:  # no block to tile before: copy at the end
            x = repeat_rows(x, self.ensemble_size)
        return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x), metrics


class VisionTransformer(nn.Module):
    """ViT classifier returning ``(logits (B, F, C), aux)`` (the model contract).

    ``aux = {"aux_loss": scalar Σ over MoE layers, "features": (B, F, D), "router": {...}}``.
    F is the number of predictions per image, the rows per image leaving the encoder (1 for
    ViT/V-MoE, M for E³ and Tiling, K for Multi-pred).
    """

    num_classes: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_factory: MlpFactory
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    representation: bool = True
    head_bias_init: float = 0.0
    tile_before: int | None = None
    ensemble_size: int = 1
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict]:
        batch = images.shape[0]
        p = self.patch_size
        x = nn.Conv(
            self.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            name="embedding",
        )(images)
        # (B, H/p, W/p, H) -> (B, T-1, H)
        x = x.reshape(batch, -1, self.hidden_size)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.hidden_size))
        x = jnp.concatenate([jnp.tile(cls, (batch, 1, 1)).astype(x.dtype), x], axis=1)
        x, router_metrics = Encoder(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_factory=self.mlp_factory,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            tile_before=self.tile_before,
            ensemble_size=self.ensemble_size,
            dtype=self.dtype,
            remat=self.remat,
            name="Encoder",
        )(x, train=train)
        x = x[:, 0]  # class token: (B·F, H)
        if self.representation:
            x = jnp.tanh(nn.Dense(self.hidden_size, dtype=self.dtype, name="pre_logits")(x))
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
            name="head",
        )(x)
        predictions = logits.shape[0] // batch
        # (B·F, C) -> (B, F, C): row b·F + f is prediction f of image b.
        logits = logits.reshape(batch, predictions, -1).astype(jnp.float32)
        features = x.reshape(batch, predictions, -1).astype(jnp.float32)
        aux_loss = sum((m["aux_loss"] for m in router_metrics.values()), jnp.zeros(()))
        return logits, {"aux_loss": aux_loss, "features": features, "router": router_metrics}
