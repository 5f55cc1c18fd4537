"""Sparse MoE layer (e3lib.models.moe): dispatch/combine, dropping, cost, grouping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from e3lib.models.layout import compute_capacity
from e3lib.models.moe import MoeMlp, dense_moe_reference, from_groups, to_groups
from e3lib.models.routing import NoisyTopKRouter, Routing, buffer_positions
from e3lib.models.vit import MlpBlock


def _moe(E=4, K=1, C=1.0, ensemble_size=1, mlp_dim=8, **kw):
    subsets = kw.pop("subsets", (tuple(range(E)),))
    return MoeMlp(
        num_experts=E,
        mlp_dim=mlp_dim,
        subsets=subsets,
        num_selected=K,
        noise_std=1.0 / E,
        aux_weight=0.01,
        ensemble_size=ensemble_size,
        group_images=2,
        capacity_factor=C,
        **kw,
    )


def _init(moe, x):
    """Random parameters, every expert distinct (see tests/model_helpers.py)."""
    return random_params(moe, x, seed=1)


def _apply(moe, params, x):
    return moe.apply({"params": params}, x)


def test_grouping_keeps_whole_images_member_fast():
    # Rows b·M + m of (B·M, T, H) with B=2, M=2, T=3, value 100b + 10m + t.
    B, M, T = 2, 2, 3
    vals = np.array(
        [[[100 * b + 10 * m + t] for t in range(T)] for b in range(B) for m in range(M)]
    )
    groups, images = to_groups(jnp.asarray(vals, jnp.float32), ensemble_size=M, group_images=1)
    assert images == 1 and groups.shape == (2, 6, 1)
    # Group 0 is image 0, tokens in order, the two member copies of each token adjacent.
    np.testing.assert_array_equal(groups[0, :, 0], [0, 10, 1, 11, 2, 12])
    np.testing.assert_array_equal(groups[1, :, 0], [100, 110, 101, 111, 102, 112])
    np.testing.assert_array_equal(from_groups(groups, M, T), vals)


def test_group_images_divide_any_batch():
    # B=6 with group_images=4: gcd(6, 4) = 2 images per group, 3 groups.
    groups, images = to_groups(jnp.zeros((6, 5, 2)), ensemble_size=1, group_images=4)
    assert images == 2 and groups.shape == (3, 10, 2)


def test_experts_start_identical():
    x = jnp.ones((2, 4, 6))
    params = _moe().init({"params": jax.random.key(0)}, x)["params"]
    for leaf in jax.tree_util.tree_leaves(params["Mlp"]):
        assert leaf.shape[0] == 4
        np.testing.assert_array_equal(leaf, jnp.broadcast_to(leaf[:1], leaf.shape))


def test_overflow_tokens_are_dropped_and_combine_weight_is_raw_gate():
    # One image of T=8 tokens, all routed to expert 0 (router logits [5, -5]·x0 with x0 = 1).
    # Capacity = ceil(8·1·0.5/2) = 2 -> rounded up to 4: tokens 0..3 kept (queued in token
    # order), tokens 4..7 dropped -> their MoE output is exactly 0.
    x = jnp.concatenate(
        [jnp.ones((1, 8, 1)), jax.random.normal(jax.random.key(0), (1, 8, 3))], axis=-1
    )  # (1,8,4)
    moe = _moe(E=2, C=0.5)
    params = _init(moe, x)
    kernel = jnp.zeros((4, 1, 2)).at[0, 0].set(jnp.array([5.0, -5.0]))
    params = dict(params, Router={"kernel": kernel})
    y, metrics = _apply(moe, params, x)
    assert int(metrics["capacity"]) == 4
    np.testing.assert_allclose(metrics["dropped_fraction"], 0.5)
    np.testing.assert_array_equal(y[0, 4:], 0.0)
    # Kept tokens: gate of expert 0 = softmax([5, -5])_0 = 1/(1 + e^-10), not renormalised.
    gate = 1.0 / (1.0 + np.exp(-10.0))
    expert0 = jax.tree_util.tree_map(lambda a: a[0], params["Mlp"])
    direct = MlpBlock(8).apply({"params": expert0}, x[0, :4])
    np.testing.assert_allclose(y[0, :4], gate * direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K,C,bpr", [(1, 1.0, False), (2, 0.5, False), (2, 0.5, True)])
def test_sparse_dispatch_equals_dense_oracle(K, C, bpr):
    E, H = 4, 6
    x = jax.random.normal(jax.random.key(0), (4, 5, H))  # B=4, T=5
    moe = _moe(E=E, K=K, C=C, batch_priority=bpr)
    params = _init(moe, x)
    y, metrics = _apply(moe, params, x)

    # Oracle: same routing, every expert run on every token.
    def oracle(params, x):
        xg, _ = to_groups(x, 1, 2)  # (G=2, S=10, H)
        router = NoisyTopKRouter(
            subsets=(tuple(range(E)),), num_selected=K, noise_std=0.25, aux_weight=0.01
        )
        routing, _ = router.apply({"params": params["Router"]}, xg)
        capacity = compute_capacity(10, K, E, C)
        prio = routing.priority if bpr else None
        positions = jax.vmap(
            lambda i, p: buffer_positions(i, E, p), in_axes=(0, 0 if bpr else None)
        )(routing.expert_index, prio)
        return dense_moe_reference(params["Mlp"], 8, xg, routing, positions < capacity)

    expected = oracle(params, x)
    np.testing.assert_allclose(y, from_groups(expected, 1, 5), rtol=1e-5, atol=1e-6)
    if C < 1:
        assert 0 < float(metrics["dropped_fraction"]) < 1  # the case exercises dropping


def test_multipred_keeps_selections_apart():
    # keep_selections_apart: (B, T, H) -> (B·K, T, H), row b·K + k = the k-th weighted expert
    # output; their sum is the ordinary MoE output.
    x = jax.random.normal(jax.random.key(0), (2, 5, 6))
    summed, apart = _moe(K=2, C=2.0), _moe(K=2, C=2.0, keep_selections_apart=True)
    params = _init(summed, x)
    y_sum, _ = _apply(summed, params, x)
    y_apart, _ = _apply(apart, params, x)
    assert y_apart.shape == (4, 5, 6)
    np.testing.assert_allclose(y_apart.reshape(2, 2, 5, 6).sum(1), y_sum, rtol=1e-5, atol=1e-6)
    assert not np.allclose(y_apart[0], y_apart[1])


def _flops(E, K, C):
    moe = _moe(E=E, K=K, C=C, mlp_dim=256)
    x = jnp.ones((2, 256, 16))  # one group, S = 2·256 = 512
    params = jax.eval_shape(lambda k: moe.init({"params": k}, x), jax.random.key(0))
    compiled = jax.jit(lambda p, x: moe.apply(p, x)[0]).lower(params, x).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def test_expert_compute_grows_with_k_and_capacity_not_with_e():
    # Expert MLP rows per group = E·C ≈ S·K·C_f: independent of E, proportional to K and C_f
    # (S=512 is large enough that rounding C up to a multiple of 4 does not matter:
    # E=4 -> C=128, E=32 -> C=16, both 512 rows).
    base = _flops(E=4, K=1, C=1.0)
    assert _flops(E=32, K=1, C=1.0) / base < 1.3
    assert _flops(E=4, K=2, C=1.0) / base > 1.7
    assert _flops(E=4, K=1, C=2.0) / base > 1.7


def test_eval_capacity_factor_applies_only_at_evaluation():
    # S = 2 images · 4 tokens = 8, K=1, E=2: C_f=0.5 -> ceil(2) -> 4; C_f=2 -> ceil(8) -> 8.
    x = jax.random.normal(jax.random.key(0), (2, 4, 4))
    moe = _moe(E=2, C=0.5, eval_capacity_factor=2.0)
    params = _init(moe, x)
    _, train_metrics = moe.apply(
        {"params": params},
        x,
        train=True,
        rngs={"gating": jax.random.key(1), "dropout": jax.random.key(2)},
    )
    _, eval_metrics = moe.apply({"params": params}, x, train=False)
    assert int(train_metrics["capacity"]) == 4
    assert int(eval_metrics["capacity"]) == 8


def test_gradients_reach_router_and_experts():
    # E³-style layer (two member routers over {0,1} and {2,3}, M=2 rows per image), training
    # mode: the loss depends on the router through the gates and the aux loss, and on every
    # expert that received tokens.
    x = jax.random.normal(jax.random.key(0), (4, 5, 6))  # B=2 images, M=2
    moe = _moe(E=4, K=1, C=2.0, ensemble_size=2, subsets=((0, 1), (2, 3)))
    params = _init(moe, x)

    @jax.jit
    @jax.grad
    def grads(p):
        y, metrics = moe.apply(
            {"params": p},
            x,
            train=True,
            rngs={"gating": jax.random.key(1), "dropout": jax.random.key(2)},
        )
        return jnp.sum(y**2) + metrics["aux_loss"]

    g = grads(params)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))
    assert float(jnp.abs(g["Router"]["kernel"][:, 0]).sum()) > 0  # member 0's router
    assert float(jnp.abs(g["Router"]["kernel"][:, 1]).sum()) > 0  # member 1's router
    assert float(jnp.abs(g["Mlp"]["Dense_1"]["bias"]).sum()) > 0


def test_expert_dropout_only_in_training():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4))
    moe = _moe(E=2, C=2.0, expert_dropout=0.5)
    params = _init(moe, x)
    run = lambda key: moe.apply(
        {"params": params},
        x,
        train=True,  # noqa: E731
        rngs={"gating": jax.random.key(1), "dropout": key},
    )[0]
    assert not np.allclose(run(jax.random.key(2)), run(jax.random.key(3)))
    # Evaluation: the same output as the model without expert dropout.
    no_dropout = _moe(E=2, C=2.0)
    np.testing.assert_array_equal(
        moe.apply({"params": params}, x)[0], no_dropout.apply({"params": params}, x)[0]
    )


def _global_scatter_dispatch(x, routing, positions, E, C):
    """The former single-scatter dispatch + gather combine of the whole (G, S) batch at
    once (the per-group dispatch must give the same numbers)."""
    G, S, H = x.shape
    kept = positions < C
    slot = jnp.where(kept, positions, C)
    group = jnp.broadcast_to(jnp.arange(G)[:, None, None], slot.shape)
    updates = jnp.broadcast_to(x[:, :, None, :], slot.shape + (H,))
    buffers = (
        jnp.zeros((E, G, C, H)).at[routing.expert_index, group, slot].set(updates, mode="drop")
    )
    return buffers, kept, group


def test_per_group_dispatch_and_combine_equal_one_scatter_over_the_batch():
    from e3lib.models.moe import combine, dispatch

    rng = np.random.default_rng(0)
    G, S, H, E, K, C = 3, 10, 4, 4, 2, 4  # 20 selections for 16 slots: some dropped
    x = jnp.asarray(rng.normal(size=(G, S, H)), jnp.float32)
    gates = jnp.asarray(rng.random((G, S, K)), jnp.float32)
    index = jnp.asarray(
        np.stack([np.stack([rng.permutation(E)[:K] for _ in range(S)]) for _ in range(G)]),
        jnp.int32,
    )  # (G, S, K) distinct experts per token
    routing = Routing(index, gates, gates[..., 0])
    positions = jax.vmap(lambda i: buffer_positions(i, E))(index)
    buffers, kept = dispatch(x, routing, positions, E, C)
    want, want_kept, group = _global_scatter_dispatch(x, routing, positions, E, C)
    assert buffers.shape == (E, G, C, H) and not bool(kept.all())
    np.testing.assert_array_equal(buffers, want)
    np.testing.assert_array_equal(kept, want_kept)
    out = buffers * 2.0 - 1.0  # any per-slot expert function
    y = combine(out, routing, positions, kept)
    picked = out[index, group, jnp.clip(positions, 0, C - 1)]  # (G, S, K, H)
    y_want = jnp.sum(picked * jnp.where(kept, gates, 0.0)[..., None], axis=2)
    np.testing.assert_allclose(y, y_want, rtol=1e-6, atol=1e-6)


def test_bfloat16_dispatch_moves_bfloat16_buffers_and_keeps_float32_gates():
    x = jax.random.normal(jax.random.key(2), (4, 6, 8))  # B=4, T=6, H=8
    f32, bf16 = _moe(E=4, K=2, C=1.5), _moe(E=4, K=2, C=1.5, dispatch_dtype=jnp.bfloat16)
    params = _init(f32, x)
    y32, m32 = _apply(f32, params, x)
    y16, m16 = _apply(bf16, params, x)
    # routing and its losses are computed in float32 before the dispatch: identical
    for k in ("aux_loss", "importance_loss", "load_loss", "dropped_fraction"):
        assert float(m16[k]) == float(m32[k]), k
    assert y16.dtype == jnp.float32
    # inputs and outputs rounded to bfloat16 once each (relative error 2^-9 per rounding)
    scale = float(jnp.max(jnp.abs(y32)))
    np.testing.assert_allclose(y16, y32, atol=2 * 2.0**-8 * scale)
    assert float(jnp.max(jnp.abs(y16 - y32))) > 0  # it did round
    # G = 4/2 groups, E = 4, C = roundup4(ceil(12·2·1.5/4)) = 12, H = 8: the (G, E, C, H)
    # buffers are scattered, and the (G, S, K, H) outputs gathered, in bfloat16 only
    jaxpr = str(jax.make_jaxpr(lambda p: _apply(bf16, p, x))(params))
    assert "bf16[2,4,12,8] = scatter" in jaxpr and "f32[2,4,12,8] = scatter" not in jaxpr
    assert "bf16[2,12,2,8] = gather" in jaxpr and "f32[2,12,2,8] = gather" not in jaxpr
