"""Ensemble losses and predictions on member logits.

Notation: B images, M members (predictions per image), C classes.

* training loss = mean over images and members of the member cross-entropy
  (1/(B·M)) Σ_b Σ_m CE(logits[b, m], y_b)  (Appendix C.1; reference ``ensemble_softmax_xent``);
* prediction = mean of member probabilities p̄_b = (1/M) Σ_m softmax(logits[b, m]);
* reported NLL = −log p̄_b[y_b], computed as −(logsumexp_m log_softmax − log M).

With M = 1 these are the ordinary cross-entropy, softmax and NLL.
Labels are integer classes (B,) or (soft) one-hot targets (B, C), e.g. after mixup.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _targets(labels: Array, num_classes: int) -> Array:
    """(B,) int or (B, C) -> (B, C) float targets."""
    labels = jnp.asarray(labels)
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if labels.ndim == 2 and labels.shape[-1] == num_classes:
        return labels.astype(jnp.float32)
    raise ValueError(
        f"labels must be (B,) integers or (B, {num_classes}) targets; got shape {labels.shape}"
    )


def _check_logits(logits: Array) -> Array:
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (B, M, C); got shape {logits.shape}")
    return logits


def member_cross_entropy(logits: Array, labels: Array) -> Array:
    """CE of every member. logits (B, M, C) -> (B, M)."""
    logits = _check_logits(logits)
    targets = _targets(labels, logits.shape[-1])  # (B, C)
    log_p = jax.nn.log_softmax(logits, axis=-1)  # (B, M, C)
    return -jnp.sum(targets[:, None, :] * log_p, axis=-1)


def ensemble_train_loss(logits: Array, labels: Array) -> Array:
    """Mean over images and members of the member cross-entropy (a scalar)."""
    return jnp.mean(member_cross_entropy(logits, labels))


def ensemble_log_probs(logits: Array) -> Array:
    """log p̄: log of the mean member probability. (B, M, C) -> (B, C)."""
    logits = _check_logits(logits)
    members = logits.shape[1]
    return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=1) - jnp.log(members)


def ensemble_probs(logits: Array) -> Array:
    """p̄, the mean of member probabilities. (B, M, C) -> (B, C)."""
    return jnp.exp(ensemble_log_probs(logits))


def ensemble_nll(logits: Array, labels: Array) -> Array:
    """Per-image NLL of the mean prediction. (B, M, C) -> (B,)."""
    log_p = ensemble_log_probs(logits)
    targets = _targets(labels, log_p.shape[-1])
    return -jnp.sum(jnp.where(targets > 0, targets * log_p, 0.0), axis=-1)


def ensemble_predict(logits: Array) -> Array:
    """Predicted class: argmax of the mean member probability. (B, M, C) -> (B,)."""
    return jnp.argmax(ensemble_log_probs(logits), axis=-1)
