"""Ensemble training loss, evaluation NLL and prediction (e3lib.models.losses)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from e3lib.models import losses


def _logits_from_probs(probs):
    return jnp.log(jnp.asarray(probs, jnp.float32))


def test_two_members_hand_derived():
    # M=2 members with probabilities [.1, .9] and [.2, .8], label 0:
    #   mean probability of class 0 = (.1 + .2)/2 = .15 -> evaluation NLL = -log .15
    #   member cross-entropies = -log .1 and -log .2 -> training loss = their mean.
    logits = _logits_from_probs([[[0.1, 0.9], [0.2, 0.8]]])  # (B=1, M=2, C=2)
    labels = jnp.array([0])
    np.testing.assert_allclose(
        losses.member_cross_entropy(logits, labels), [[-math.log(0.1), -math.log(0.2)]], rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.ensemble_train_loss(logits, labels), (-math.log(0.1) - math.log(0.2)) / 2, rtol=1e-6
    )
    np.testing.assert_allclose(losses.ensemble_nll(logits, labels), [-math.log(0.15)], rtol=1e-6)
    np.testing.assert_allclose(losses.ensemble_probs(logits), [[0.15, 0.85]], rtol=1e-6)
    assert int(losses.ensemble_predict(logits)[0]) == 1


def test_prediction_is_argmax_of_mean_not_majority():
    # Members: [.6,.4], [.6,.4], [0,1]-ish -> majority says class 0, mean says
    # (.6+.6+.01)/3 = .403 for class 0 vs .597 for class 1 -> class 1.
    logits = _logits_from_probs([[[0.6, 0.4], [0.6, 0.4], [0.01, 0.99]]])
    assert int(losses.ensemble_predict(logits)[0]) == 1


def test_one_hot_and_soft_labels_match_integer_labels():
    logits = _logits_from_probs([[[0.1, 0.9], [0.2, 0.8]], [[0.5, 0.5], [0.3, 0.7]]])
    ints = jnp.array([0, 1])
    onehot = jnp.eye(2)[ints]
    np.testing.assert_allclose(
        losses.ensemble_nll(logits, onehot), losses.ensemble_nll(logits, ints), rtol=1e-6
    )
    # Soft target (.5,.5) on image 0: CE = -.5 log .1 - .5 log .9 and -.5 log .2 - .5 log .8.
    soft = jnp.array([[0.5, 0.5], [0.0, 1.0]])
    ce = losses.member_cross_entropy(logits, soft)
    np.testing.assert_allclose(
        ce[0],
        [-0.5 * math.log(0.1) - 0.5 * math.log(0.9), -0.5 * math.log(0.2) - 0.5 * math.log(0.8)],
        rtol=1e-6,
    )


def test_bad_shapes_are_rejected_with_shapes_named():
    with pytest.raises(ValueError, match=r"\(B, M, C\)"):
        losses.ensemble_nll(jnp.zeros((2, 3)), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        losses.ensemble_nll(jnp.zeros((2, 1, 3)), jnp.zeros((2, 4)))
