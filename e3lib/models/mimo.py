"""MIMO V-MoE (Havasi et al. 2020; paper Appendices B.3 and G.3).

Notation: B images, M ensemble members (``model.ensemble_size``), R batch repetitions
(``model.mimo_batch_repetition``), N = B·R rows of a training batch, ρ input-repetition
probability (``model.mimo_input_repetition``), h×w patch size, D hidden size, C classes.

One V-MoE carries M members: its patch embedding reads M images stacked on the channel
axis, (N, H, W, 3·M) with channel 3·m + c = channel c of member m's image, and its head has
M·C outputs, unit m·C + c = class c of member m. Everything in between (attention, MoE
routing, the representation) is shared by the members.

* Evaluation: every member sees the same image, (B, H, W, 3) -> (B, H, W, 3·M); logits
  (B, M, C). The members share the pre-logits representation: features (B, M, D) repeat it.
* Training: the batch is repeated R times (N rows; position j = b·R + r holds image b) and
  shuffled once (a main permutation π); member m sees, in row i, position P_m(i), where P_m
  is π with its first ⌊N·(1−ρ)⌋ entries shuffled again independently for each member and
  the remaining ⌈N·ρ⌉ rows left as in π, so those rows give all members the same image
  (ρ = 1: every row). Each member's output in row i belongs to the image at P_m(i); the
  model puts it back there, returning logits (B, R·M, C) with column r·M + m = member m's
  prediction of image b in repeat r. The loss of the training loop (mean over columns of
  the member cross-entropy against image b's label) is then MIMO's loss: every member is
  trained on the labels of its own inputs. The shuffle uses the ``"dropout"`` rng.

Fine-tuning from a V-MoE checkpoint (``prepare_upstream``, App. B.3): the embedding kernel
(h, w, 3, D) is repeated M times on the channel axis and divided by M, (h, w, 3·M, D), so
M identical inputs give the upstream embedding; a kept head (D, C) is repeated to
(D, M·C) and divided by M, its bias repeated to (M·C,). A new head is zero-initialised
as for every method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from e3lib.models.factory import moe_mlp_factory, vit_kwargs
from e3lib.models.layout import MoeLayout
from e3lib.models.vit import VisionTransformer

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Array = jax.Array


def shuffled_rows(rows: int, input_repetition: float) -> int:
    """Rows whose member inputs are shuffled independently: ⌊N·(1−ρ)⌋."""
    return int(math.floor(rows * (1.0 - input_repetition) + 1e-9))


def member_positions(
    key: Array, batch: int, ensemble_size: int, input_repetition: float, batch_repetition: int
) -> Array:
    """P (M, N): the batch position member m reads in row i (position j holds image j // R).

    A main permutation π of the N = B·R positions; for member m, P_m = π with its first
    ⌊N·(1−ρ)⌋ entries permuted independently per member.
    """
    rows = batch * batch_repetition
    shuffled = shuffled_rows(rows, input_repetition)
    k_main, k_members = jax.random.split(key)
    main = jax.random.permutation(k_main, rows)  # (N,)
    keys = jax.random.split(k_members, ensemble_size)
    head = jax.vmap(lambda k: jax.random.permutation(k, main[:shuffled]))(keys)  # (M, N')
    tail = jnp.broadcast_to(main[shuffled:], (ensemble_size, rows - shuffled))  # (M, N−N')
    return jnp.concatenate([head, tail], axis=1)  # (M, N)


def stack_member_images(images: Array, positions: Array, batch_repetition: int) -> Array:
    """(B, H, W, 3) images and positions P (M, N) -> (N, H, W, 3·M) MIMO inputs."""
    member_images = images[positions // batch_repetition]  # (M, N, H, W, 3)
    ensemble_size, rows, height, width, channels = member_images.shape
    # (M, N, H, W, 3) -> (N, H, W, M, 3) -> (N, H, W, 3·M): channel 3·m + c.
    return member_images.transpose(1, 2, 3, 0, 4).reshape(
        rows, height, width, ensemble_size * channels
    )


def unshuffle(outputs: Array, positions: Array, batch_repetition: int) -> Array:
    """Member outputs per row -> per image: (N, M, X) -> (B, R·M, X).

    outputs[i, m] concerns position P[m, i]; the result's [b, r·M + m] is member m's output
    at position b·R + r.
    """
    rows, ensemble_size, features = outputs.shape
    inverse = jnp.argsort(positions, axis=1)  # (M, N): row of position j
    per_member = outputs.transpose(1, 0, 2)  # (M, N, X)
    at_position = jnp.take_along_axis(per_member, inverse[..., None], axis=1)  # (M, N, X)
    batch = rows // batch_repetition
    # (M, N, X) -> (M, B, R, X) -> (B, R, M, X) -> (B, R·M, X)
    at_position = at_position.reshape(ensemble_size, batch, batch_repetition, features)
    return at_position.transpose(1, 2, 0, 3).reshape(
        batch, batch_repetition * ensemble_size, features
    )


class MimoVisionTransformer(nn.Module):
    """M inputs and outputs through one V-MoE (``make_vit()``, built with M·C classes), in
    this module's own scope: parameter paths are the V-MoE's."""

    make_vit: Callable[[], nn.Module]
    ensemble_size: int  # M
    num_classes: int
    input_repetition: float = 0.0
    batch_repetition: int = 1

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict]:
        vit = self.make_vit()
        nn.share_scope(self, vit)
        M, C = self.ensemble_size, self.num_classes
        batch = images.shape[0]
        if train:
            R = self.batch_repetition
            positions = member_positions(
                self.make_rng("dropout"), batch, M, self.input_repetition, R
            )  # (M, N)
        else:
            R = 1
            positions = jnp.broadcast_to(jnp.arange(batch), (M, batch))  # every member: b
        x = stack_member_images(images, positions, R)  # (N, H, W, 3·M)
        self.sow("intermediates", "member_inputs", x)
        logits, aux = vit(x, train=train)  # (N, 1, M·C)
        rows = x.shape[0]
        logits = logits.reshape(rows, M, C)  # unit m·C + c
        features = jnp.broadcast_to(aux["features"], (rows, M, aux["features"].shape[-1]))
        if train:
            logits = unshuffle(logits, positions, R)  # (B, R·M, C)
            features = unshuffle(features, positions, R)  # (B, R·M, D)
        return logits, dict(aux, features=features)


def build_mimo(
    cfg: RunConfig, spec: Mapping[str, Any], layout: MoeLayout, num_classes: int
) -> nn.Module:
    """MIMO V-MoE: V-MoE routing over rows that carry M images on the channel axis."""
    m = cfg.model
    M = m.ensemble_size
    factory = moe_mlp_factory(cfg, spec, layout, ensemble_size=1)  # rows are not tiled
    kwargs = vit_kwargs(cfg, spec, num_classes)  # head bias −log(C) for each member's C
    kwargs["num_classes"] = M * num_classes
    return MimoVisionTransformer(
        make_vit=lambda: VisionTransformer(mlp_factory=factory, **kwargs),
        ensemble_size=M,
        num_classes=num_classes,
        input_repetition=float(m.mimo_input_repetition),
        batch_repetition=m.mimo_batch_repetition,
    )


def prepare_upstream(
    upstream: Mapping, target: Mapping, cfg: RunConfig, keep_head: bool = False
) -> dict:
    """V-MoE upstream params -> MIMO shapes (App. B.3), before ``convert.convert_params``."""
    M = cfg.model.ensemble_size
    source = dict(traverse_util.flatten_dict(dict(upstream), sep="/"))
    shapes = {
        p: tuple(v.shape) for p, v in traverse_util.flatten_dict(dict(target), sep="/").items()
    }
    kernel = source.get("embedding/kernel")
    if kernel is not None and tuple(np.shape(kernel)) != shapes["embedding/kernel"]:
        # (h, w, 3, D) -> (h, w, 3·M, D): channel 3·m + c = channel c, scaled by 1/M.
        source["embedding/kernel"] = jnp.tile(jnp.asarray(kernel), (1, 1, M, 1)) / M
    if (
        keep_head
        and "head/kernel" in source
        and tuple(np.shape(source["head/kernel"])) != shapes["head/kernel"]
    ):
        # (D, C) -> (D, M·C): unit m·C + c = class c of member m, scaled by 1/M.
        source["head/kernel"] = jnp.tile(jnp.asarray(source["head/kernel"]), (1, M)) / M
        source["head/bias"] = jnp.tile(jnp.asarray(source["head/bias"]), (M,))  # (M·C,)
    return traverse_util.unflatten_dict(source, sep="/")
