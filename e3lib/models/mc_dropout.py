"""MC-Dropout V-MoE (Gal & Ghahramani 2016; paper Appendix G.2).

Notation: B images, M dropout samples (ensemble members, ``model.ensemble_size``), T tokens
per image, H hidden size, E experts, K experts selected per token, C classes.

The model is a V-MoE (one router over all E experts, top-K) whose expert MLPs have dropout
(``model.expert_dropout``; the paper's fine-tuned V-MoEs use 0.1):

* training (``train=True``): an ordinary V-MoE fine-tune, one dropout sample per image, as
  the paper takes already fine-tuned V-MoEs; logits (B, 1, C).
* evaluation (``train=False``): expert dropout stays on and the rows are repeated M times
  (member index fastest, row b·M + m) before the block holding the first MoE layer, i.e.
  the first layer with dropout; each copy draws its own dropout mask, giving M samples:
  logits (B, M, C). Router noise is off and the evaluation capacity factor applies, as for
  every method at evaluation. Dropout outside the experts (``model.dropout``) is not sampled.

The dropout randomness at evaluation is the ``"dropout"`` rng passed to ``apply``; when the
caller passes none (the evaluation suite applies models with ``train=False`` and no rngs),
it is derived from ``eval_seed`` (the run's seed) and the batch's content, so predictions
are reproducible and batches draw different masks.

Fine-tuning starts from a V-MoE checkpoint with the V-MoE conversion (same parameter tree).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from e3lib.models.factory import moe_mlp_factory, vit_kwargs
from e3lib.models.layout import MoeLayout
from e3lib.models.vit import VisionTransformer

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Array = jax.Array


def content_key(seed: int, images: Array) -> Array:
    """A PRNG key from ``seed`` and the batch's pixels (jit-compatible): the wrapping uint32
    sum of the pixels' float32 bit patterns, which (unlike a float sum) is the same in any
    summation order, so a batch split over devices draws the same masks."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(images, jnp.float32), jnp.uint32)
    return jax.random.fold_in(jax.random.key(seed), jnp.sum(bits, dtype=jnp.uint32))


class McDropoutVisionTransformer(nn.Module):
    """The V-MoE of ``make_vit(train)`` in this module's own scope (same parameter tree as
    a V-MoE), with a default evaluation dropout rng (see the module docstring)."""

    make_vit: Callable[[bool], nn.Module]
    eval_seed: int = 0

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict]:
        vit = self.make_vit(train)
        nn.share_scope(self, vit)
        return vit(images, train=train)

    def apply(self, variables, *args, rngs=None, **kwargs):
        rngs = dict(rngs or {})
        if "dropout" not in rngs and args:
            rngs["dropout"] = content_key(self.eval_seed, args[0])
        return super().apply(variables, *args, rngs=rngs, **kwargs)


def build_mc_dropout(
    cfg: RunConfig, spec: Mapping[str, Any], layout: MoeLayout, num_classes: int
) -> nn.Module:
    """MC-Dropout V-MoE: V-MoE routing, expert dropout sampled M times at evaluation."""
    first_moe_block = spec["moe_layers"][0]
    kwargs = vit_kwargs(cfg, spec, num_classes)

    def make_vit(train: bool) -> nn.Module:
        copies = 1 if train else layout.ensemble_size  # M samples per image at evaluation
        factory = moe_mlp_factory(
            cfg, spec, layout, ensemble_size=copies, expert_dropout_at_eval=True
        )
        return VisionTransformer(
            mlp_factory=factory, tile_before=first_moe_block, ensemble_size=copies, **kwargs
        )

    return McDropoutVisionTransformer(make_vit=make_vit, eval_seed=cfg.seed)
