"""The router's small-K top-k (masked argmax passes) against ``jax.lax.top_k``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3lib.models.routing import ARGMAX_TOP_K_MAX, top_k


def test_top_k_hand_derived_with_ties():
    # Row [0.1, 0.7, 0.7, 0.2]: the largest value 0.7 sits at 1 and 2; ties go to the lower
    # index first, so K=3 picks 1, 2, then 3 (0.2 > 0.1).
    x = jnp.asarray([[0.1, 0.7, 0.7, 0.2]], jnp.float32)
    values, index = top_k(x, 3)
    np.testing.assert_array_equal(np.asarray(index), [[1, 2, 3]])
    np.testing.assert_array_equal(np.asarray(values), np.float32([[0.7, 0.7, 0.2]]))


@pytest.mark.parametrize("k", range(1, ARGMAX_TOP_K_MAX + 1))
def test_top_k_matches_lax_bitwise_values_indices_and_gradient(k):
    # Rounded values make ties frequent; both must order them identically.
    x = jnp.round(jax.random.normal(jax.random.key(k), (3, 5, 8)), 1)
    ours, ref = top_k(x, k), jax.lax.top_k(x, k)
    np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(ref[1]))
    np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(ref[0]))
    # Gradient of a weighted sum of the values lands on the same positions with the same
    # weights.
    w = jnp.arange(1.0, k + 1.0)
    g_ours = jax.grad(lambda a: jnp.sum(top_k(a, k)[0] * w))(x)
    g_ref = jax.grad(lambda a: jnp.sum(jax.lax.top_k(a, k)[0] * w))(x)
    np.testing.assert_array_equal(np.asarray(g_ours), np.asarray(g_ref))
