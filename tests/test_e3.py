"""E³ and the ablations of §4.2: partition, overlap, per-member routers, Tiling, Multi-pred."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from e3lib.config import resolve
from e3lib.models import build_model
from e3lib.models.convert import convert_for_config
from e3lib.models.registry import moe_layout
from e3lib.models.routing import NoisyTopKRouter
from e3lib.models.sizes import size_spec

IMAGES = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
RNGS = {"dropout": jax.random.key(1), "gating": jax.random.key(2)}


def _cfg(method, **model):
    return resolve({"method": method, "model": model})


def _init(cfg, num_classes=5):
    """Model and random parameters (distinct experts, random head; see
    tests/model_helpers.py) of a config."""
    model = build_model(cfg, num_classes)
    return model, random_params(model, IMAGES, seed=3)


def _apply(model, params, train=True, rngs=RNGS):
    """(logits, aux), intermediates of one forward pass (eager: the tiny models share
    their compiled operations across tests, which is faster than compiling each model)."""
    return model.apply(
        {"params": params}, IMAGES, train=train, rngs=rngs, mutable=["intermediates"]
    )


def _decisive_router(params):
    """10× the router kernels, as after training, so that router noise rarely flips a
    selection."""
    return jax.tree_util.tree_map_with_path(
        lambda path, a: 10.0 * a if "Router" in str(path) else a, params
    )


def test_member_routers_aux_per_member_then_averaged():
    # Tiled router, R=2 members over subsets {0,1} and {2,3}, both kernels the identity, so
    # logits = x. Group of S=4 tokens s = t·2 + m:
    #   member 0: x=[ln 3, 0] -> gates [3/4, 1/4]; x=[ln 2, 0] -> [2/3, 1/3]
    #       importance [17/12, 7/12]: mean 1, std 5/12 -> CV² = 25/144
    #   member 1: x=[0, ln 3] twice -> [1/4, 3/4] twice
    #       importance [1/2, 3/2]: mean 1, std 1/2 -> CV² = 1/4
    # layer importance = (25/144 + 36/144)/2 = 61/288; evaluation aux = λ/2 · 61/288.
    ln2, ln3 = np.log(2.0), np.log(3.0)
    x = jnp.array([[[ln3, 0], [0, ln3], [ln2, 0], [0, ln3]]], jnp.float32)  # (G=1, S=4, H=2)
    kernel = jnp.stack([jnp.eye(2), jnp.eye(2)], axis=1)  # (H=2, R=2, E_r=2)
    router = NoisyTopKRouter(
        subsets=((0, 1), (2, 3)), num_selected=1, noise_std=0.5, aux_weight=0.01
    )
    routing, metrics = router.apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_allclose(metrics["importance_loss"], 61 / 288, rtol=1e-5)
    np.testing.assert_allclose(metrics["aux_loss"], 0.005 * 61 / 288, rtol=1e-5)
    # Member 0 picks local expert 0 = expert 0; member 1 local expert 1 = expert 3.
    np.testing.assert_array_equal(routing.expert_index[0, :, 0], [0, 3, 0, 3])
    np.testing.assert_allclose(routing.gates[0, :, 0], [3 / 4, 3 / 4, 2 / 3, 3 / 4], rtol=1e-6)


def test_noise_is_drawn_per_member():
    # Two members with identical kernels see identical token copies: equal gates without
    # noise, different gates in training (each member draws its own noise).
    kernel = jnp.repeat(jax.random.normal(jax.random.key(0), (4, 1, 4)), 2, axis=1)
    x = jnp.repeat(jax.random.normal(jax.random.key(1), (1, 8, 4)), 2, axis=1)  # s = t·2 + m
    kw = dict(subsets=((0, 1, 2, 3), (0, 1, 2, 3)), num_selected=1, noise_std=0.25, aux_weight=0.01)
    clean, _ = NoisyTopKRouter(**kw).apply({"params": {"kernel": kernel}}, x)
    noisy, _ = NoisyTopKRouter(**kw, deterministic=False).apply(
        {"params": {"kernel": kernel}}, x, rngs={"gating": jax.random.key(2)}
    )
    np.testing.assert_array_equal(clean.gates[0, 0::2], clean.gates[0, 1::2])
    assert not np.allclose(noisy.gates[0, 0::2], noisy.gates[0, 1::2])


@pytest.mark.parametrize("overlap,K", [(0, 2), (2, 2)])
def test_token_copy_of_member_m_only_reaches_subset_m(overlap, K):
    cfg = _cfg("e3", num_experts=8, ensemble_size=2, overlap=overlap, num_selected=K)
    subsets = moe_layout(cfg, size_spec(cfg)).subsets
    model, params = _init(cfg)
    kernel = params["Encoder"]["encoderblock_1"]["Moe"]["Router"]["kernel"]
    assert kernel.shape == (32, 2, len(subsets[0]))  # (H, M, (E-o)/M + o)
    (_, aux), state = _apply(model, params)
    for block in ("encoderblock_1", "encoderblock_3"):
        index = np.asarray(state["intermediates"]["Encoder"][block]["Moe"]["expert_index"][0])
        groups, tokens, selections = index.shape
        assert selections == K
        member = np.arange(tokens) % 2  # member-fast token layout
        for m in range(2):
            used = set(np.unique(index[:, member == m]))
            assert used <= set(subsets[m]), (block, m, used)
            assert len(used) > 1  # routing really varies
        assert float(aux["router"][block]["aux_loss"]) > 0


def test_tiling_members_near_identical_e3_members_distinct():
    # One V-MoE parameter set (distinct experts, random head, decisive router) converted
    # into Tiling (one router over all E) and E³ (router kernel reshaped (H, E) ->
    # (H, M, E/M)); same images.
    vmoe_cfg = _cfg("vmoe", num_experts=8, num_selected=2)
    _, upstream = _init(vmoe_cfg)
    upstream = _decisive_router(upstream)

    def member_gap(cfg, train):
        model = build_model(cfg, 5)
        target = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, IMAGES))
        params = convert_for_config(upstream, target["params"], cfg, keep_head=True)
        (logits, _), _ = _apply(model, params, train=train)
        probs = jax.nn.softmax(logits, axis=-1)  # (B, M, C)
        return float(jnp.mean(jnp.abs(probs[:, 0] - probs[:, 1])))

    tiling = _cfg("tiling", num_experts=8, num_selected=2, ensemble_size=2)
    e3 = _cfg("e3", num_experts=8, num_selected=2, ensemble_size=2)
    assert member_gap(tiling, train=False) == 0.0  # copies, one router, no noise
    gap_tiling, gap_e3 = member_gap(tiling, train=True), member_gap(e3, train=True)
    assert gap_e3 > 0.01
    assert gap_tiling < 0.1 * gap_e3, (gap_tiling, gap_e3)
    print(f"mean |p_member0 - p_member1|: Tiling {gap_tiling:.5f}, E3 {gap_e3:.5f}")


def test_multipred_yields_k_predictions():
    cfg = _cfg("multipred", num_experts=8, num_selected=2, num_predictions=2)
    model, params = _init(cfg, num_classes=7)
    (logits, aux), _ = _apply(model, params, train=False)
    assert logits.shape == (4, 2, 7)
    assert aux["features"].shape == (4, 2, 32)
    # The K predictions are the K selected experts' contributions: they differ.
    assert not np.allclose(logits[:, 0], logits[:, 1])
    # K=4 from shapes only.
    cfg4 = _cfg("multipred", num_experts=8, num_selected=4, num_predictions=4)
    model4 = build_model(cfg4, 7)
    out = jax.eval_shape(
        lambda: model4.init_with_output({"params": jax.random.key(0)}, IMAGES, train=False)[0]
    )
    assert out[0].shape == (4, 4, 7) and out[1]["features"].shape == (4, 4, 32)


def test_partitioning_one_prediction_k_times_m_experts_per_token():
    cfg = _cfg("partitioning", num_experts=8, num_selected=1, ensemble_size=2)
    model, params = _init(cfg)
    (logits, _), state = _apply(model, params)
    assert logits.shape == (4, 1, 5)
    index = np.asarray(
        state["intermediates"]["Encoder"]["encoderblock_3"]["Moe"]["expert_index"][0]
    )
    assert index.shape[-1] == 2  # K·M selections per token
    assert set(np.unique(index[..., 0])) <= {0, 1, 2, 3}  # one from each subset
    assert set(np.unique(index[..., 1])) <= {4, 5, 6, 7}
