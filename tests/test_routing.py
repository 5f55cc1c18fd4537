"""Router numerics (e3lib.models.routing) against hand-derived values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3lib.config import resolve
from e3lib.models.factory import layer_noise_std
from e3lib.models.layout import compute_capacity, expert_subsets
from e3lib.models.registry import moe_layout
from e3lib.models.routing import NoisyTopKRouter, buffer_positions, importance_loss, load_loss
from e3lib.models.sizes import size_spec


@pytest.mark.parametrize(
    "S,K,E,C,expected",
    [
        (400, 2, 8, 1.05, 108),  # ceil(800·1.05/8) = ceil(105.0) = 105 -> next multiple of 4: 108
        (4352, 1, 8, 1.5, 816),  # 4352·1.5/8 = 816 exactly, already a multiple of 4
        (32, 2, 32, 1.0, 4),  # ceil(64/32) = 2 -> 4
        (10, 1, 4, 1.0, 4),  # ceil(2.5) = 3 -> 4
        (68, 1, 4, 1.5, 28),  # ceil(25.5) = 26 -> 28
    ],
)
def test_capacity_rounding(S, K, E, C, expected):
    assert compute_capacity(S, K, E, C) == expected


def test_capacity_rejects_nonpositive_factor():
    with pytest.raises(ValueError, match="capacity_factor=0"):
        compute_capacity(8, 1, 2, 0)


def _router_with_kernel(kernel, **kw):
    """Apply a NoisyTopKRouter whose kernel is the given (H, R, E_r) array."""
    kernel = jnp.asarray(kernel, jnp.float32)
    subsets = kw.pop("subsets", (tuple(range(kernel.shape[2])),))
    router = NoisyTopKRouter(subsets=subsets, **kw)
    return lambda x, rngs=None: router.apply({"params": {"kernel": kernel}}, x, rngs=rngs)


def test_gates_and_top_k_hand_derived():
    # Kernel maps x=[a, b] to logits [a, b, 0]. Token 0: x=[ln 4, ln 2] -> exp = [4, 2, 1]
    # -> gates [4/7, 2/7, 1/7]; token 1: x=[ln 2, ln 6] -> [2, 6, 1] -> [2/9, 6/9, 1/9].
    kernel = [[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]]  # (H=2, R=1, E=3)
    x = jnp.log(jnp.array([[[4.0, 2.0], [2.0, 6.0]]]))  # (G=1, S=2, H=2)
    apply = _router_with_kernel(kernel, num_selected=2, noise_std=1.0, aux_weight=0.01)
    routing, metrics = apply(x)
    np.testing.assert_array_equal(routing.expert_index[0], [[0, 1], [1, 0]])
    np.testing.assert_allclose(routing.gates[0], [[4 / 7, 2 / 7], [6 / 9, 2 / 9]], rtol=1e-6)
    np.testing.assert_allclose(routing.priority[0], [4 / 7, 6 / 9], rtol=1e-6)
    # Importance = per-expert gate sums [50/63, 60/63, 16/63]; mean 2/3; deviations
    # [8, 18, -26]/63 -> population variance 1064/(3·63²) = 1064/11907;
    # CV² = variance / mean² = 1064/11907 · 9/4 = 0.2010582.
    np.testing.assert_allclose(metrics["importance_loss"], 1064 / 11907 * 9 / 4, rtol=1e-5)
    # Evaluation: no load loss; aux = λ/2 · importance.
    np.testing.assert_allclose(metrics["load_loss"], 0.0)
    np.testing.assert_allclose(metrics["aux_loss"], 0.005 * 1064 / 11907 * 9 / 4, rtol=1e-5)


def test_importance_loss_uniform_is_zero():
    assert float(importance_loss(jnp.full((5, 4), 0.25))) == 0.0


def test_load_loss_hand_derived():
    # σ=1, K=1. Token 0: clean [0, 0], noisy [.5, -.5] -> threshold τ=.5,
    #   p = [1-Φ(.5), 1-Φ(.5)] = [.308538, .308538].
    # Token 1: clean [1, 0], noisy [1, 2] -> τ=2, p = [1-Φ(1), 1-Φ(2)] = [.158655, .022750].
    # P = mean over tokens = [.233596, .165644]; for two values CV² = ((a-b)/(a+b))² = .028970.
    clean = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    noisy = jnp.array([[0.5, -0.5], [1.0, 2.0]])
    np.testing.assert_allclose(load_loss(clean, noisy, 1.0, 1), 0.0289696, rtol=1e-4)


def test_noise_only_in_training_and_drawn_from_gating_rng():
    x = jax.random.normal(jax.random.key(0), (2, 16, 4))
    kernel = jax.random.normal(jax.random.key(1), (4, 1, 4))
    clean = _router_with_kernel(kernel, num_selected=1, noise_std=0.5, aux_weight=0.01)
    train = _router_with_kernel(
        kernel, num_selected=1, noise_std=0.5, aux_weight=0.01, deterministic=False
    )
    r_eval, _ = clean(x)
    r_a, m_a = train(x, rngs={"gating": jax.random.key(2)})
    r_b, _ = train(x, rngs={"gating": jax.random.key(2)})
    r_c, _ = train(x, rngs={"gating": jax.random.key(3)})
    np.testing.assert_array_equal(r_a.gates, r_b.gates)  # same key, same draw
    assert not np.allclose(r_a.gates, r_c.gates)  # other key, other draw
    assert not np.allclose(r_a.gates, r_eval.gates)  # training adds noise
    assert float(m_a["load_loss"]) > 0


def test_noise_std_is_the_configured_sigma():
    # Zero kernel: logits are pure noise σ·ε over E_r=2 experts. The top gate g satisfies
    # log(g/(1-g)) = σ|ε0 - ε1|, and E|ε0 - ε1| = √2·√(2/π) = 2/√π.
    sigma = 0.25
    apply = _router_with_kernel(
        jnp.zeros((1, 1, 2)), num_selected=1, noise_std=sigma, aux_weight=0.0, deterministic=False
    )
    routing, _ = apply(jnp.ones((1, 20000, 1)), rngs={"gating": jax.random.key(0)})
    g = routing.gates[..., 0]
    measured = float(jnp.mean(jnp.log(g / (1 - g))))
    np.testing.assert_allclose(measured, sigma * 2 / math.sqrt(math.pi), rtol=0.03)


@pytest.mark.parametrize(
    "method,model,expected",
    [
        ("vmoe", {"num_experts": 8}, 1 / 8),
        ("e3", {"num_experts": 8, "ensemble_size": 2}, 2 / 8),  # code: 1/(E/M) = M/E
        ("e3", {"num_experts": 8, "ensemble_size": 2, "noise_scaling": "paper"}, 1 / 8),
        ("e3", {"num_experts": 8, "ensemble_size": 2, "overlap": 2}, 1 / 5),  # 3 unique + 2 shared
        ("tiling", {"num_experts": 8, "ensemble_size": 2, "noise_mult": 4.0}, 4 / 8),
        ("partitioning", {"num_experts": 8, "ensemble_size": 2}, 2 / 8),
    ],
)
def test_noise_std_scaling_per_method(method, model, expected):
    cfg = resolve({"method": method, "model": model})
    assert layer_noise_std(cfg, moe_layout(cfg, size_spec(cfg))) == pytest.approx(expected)


def test_buffer_positions_k_major_and_batch_priority():
    # E=3; token s selects experts expert_index[s] = (first, second).
    idx = jnp.array([[0, 1], [0, 2], [1, 0]])
    # K-major queue: first choices in token order [t0→0, t1→0, t2→1], then second choices
    # [t0→1, t1→2, t2→0]. Expert 0: t0 (0), t1 (1), t2's second (2). Expert 1: t2 (0),
    # t0's second (1). Expert 2: t1's second (0).
    np.testing.assert_array_equal(buffer_positions(idx, 3), [[0, 1], [1, 0], [0, 2]])
    # Batch priority: top-1 gates [.1, .5, .9] serve t2, t1, t0. First choices: t2→1 (0),
    # t1→0 (0), t0→0 (1); second choices: t2→0 (2), t1→2 (0), t0→1 (1).
    np.testing.assert_array_equal(
        buffer_positions(idx, 3, jnp.array([0.1, 0.5, 0.9])), [[1, 1], [0, 0], [0, 2]]
    )


def test_partitioning_router_selects_k_in_every_subset():
    # Untiled, R=2 routers over {0,1} and {2,3}, K=1: every token gets J=2 selections, slot r
    # from subset r.
    x = jax.random.normal(jax.random.key(0), (2, 8, 4))
    kernel = jax.random.normal(jax.random.key(1), (4, 2, 2))
    apply = _router_with_kernel(
        kernel,
        subsets=((0, 1), (2, 3)),
        num_selected=1,
        noise_std=0.5,
        aux_weight=0.01,
        router_per_copy=False,
    )
    routing, _ = apply(x)
    assert routing.expert_index.shape == (2, 8, 2)
    assert set(np.unique(routing.expert_index[..., 0])) <= {0, 1}
    assert set(np.unique(routing.expert_index[..., 1])) <= {2, 3}


@pytest.mark.parametrize(
    "E,M,o,expected",
    [
        (8, 2, 0, ((0, 1, 2, 3), (4, 5, 6, 7))),
        (8, 2, 2, ((0, 1, 2, 6, 7), (3, 4, 5, 6, 7))),  # (8-2)/2 = 3 unique + 2 shared
        (
            32,
            2,
            8,
            (tuple(range(12)) + tuple(range(24, 32)), tuple(range(12, 24)) + tuple(range(24, 32))),
        ),  # paper: 12 unique, 20 in all
        (6, 3, 0, ((0, 1), (2, 3), (4, 5))),
    ],
)
def test_overlap_subsets(E, M, o, expected):
    assert expert_subsets(E, M, o) == expected


def test_overlap_subsets_reject_bad_values():
    with pytest.raises(ValueError, match="divisible by M=4"):
        expert_subsets(8, 4, 2)
    with pytest.raises(ValueError, match="o=9"):
        expert_subsets(8, 2, 9)


def test_router_kernel_shape_and_independent_member_init():
    # E³ router with M=2 members over 4 experts each, H=64: kernel (H, M, E/M); each
    # member's slice is its own lecun-normal draw (std 1/√H = 0.125).
    router = NoisyTopKRouter(
        subsets=((0, 1, 2, 3), (4, 5, 6, 7)), num_selected=1, noise_std=0.25, aux_weight=0.01
    )
    kernel = router.init(jax.random.key(0), jnp.ones((1, 4, 64)))["params"]["kernel"]
    assert kernel.shape == (64, 2, 4)
    assert not np.allclose(kernel[:, 0], kernel[:, 1])
    np.testing.assert_allclose(float(jnp.std(kernel)), 0.125, rtol=0.2)
