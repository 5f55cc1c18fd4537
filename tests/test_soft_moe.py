"""Soft MoE (e3lib/models/soft_moe.py) and its E³ ensemble, against hand-derived values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3lib import sweep as S
from e3lib.config import ConfigError, resolve
from e3lib.cost.analytic import analytic_gflops, analytic_params
from e3lib.cost.xla import xla_cost
from e3lib.models import build_model
from e3lib.models.convert import convert_for_config
from e3lib.models.params import count_params
from e3lib.models.registry import predictions_per_image
from e3lib.models.soft_moe import SoftMoeMlp, soft_weights
from e3lib.models.vit import MlpBlock

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def test_one_slot_per_token_with_identity_weights_is_a_dense_mlp_per_token():
    # T = 4 tokens, H = 4, E = 2 experts with n = 2 slots each: P = 4 slots, one per token.
    # X = 30·I and Φ = I give logits 30·I: each slot's softmax over tokens puts weight
    # 1 − O(3e-13) on token p, each token's softmax over slots on slot t. So slot t's input
    # is x_t, expert t // 2 runs on it, and token t gets it back: y_t = MLP_{t//2}(x_t).
    x = 30.0 * jnp.eye(4)[None]  # (B=1, T=4, H=4)
    layer = SoftMoeMlp(num_experts=2, mlp_dim=8, subsets=((0, 1),), slots_per_expert=2)
    params = layer.init(jax.random.key(1), x)["params"]
    params = dict(params, slots=jnp.eye(4)[:, None, :])  # Φ (H, R=1, P)
    # distinct experts: the second one's kernels are scaled
    params["Mlp"] = jax.tree_util.tree_map(lambda p: p.at[1].multiply(1.7), params["Mlp"])
    y, metrics = layer.apply({"params": params}, x)
    expert = lambda e: jax.tree_util.tree_map(lambda p: p[e], params["Mlp"])  # noqa: E731
    for t in range(4):
        dense = MlpBlock(8).apply({"params": expert(t // 2)}, x[0, t])
        np.testing.assert_allclose(y[0, t], dense, rtol=1e-5, atol=1e-6)
    assert float(metrics["aux_loss"]) == 0.0


def test_dispatch_sums_to_one_over_tokens_and_combine_over_slots():
    kx, kp = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (3, 2, 5, 4))  # (B, M, T, H)
    phi = jax.random.normal(kp, (4, 2, 6))  # (H, M, P)
    dispatch, combine = soft_weights(x, phi)
    np.testing.assert_allclose(dispatch.sum(axis=2), 1.0, rtol=1e-6)  # over T, per slot
    np.testing.assert_allclose(combine.sum(axis=3), 1.0, rtol=1e-6)  # over P, per token
    # the two are softmaxes of the same logits along different axes
    logits = np.einsum("bmth,hmp->bmtp", x, phi)
    np.testing.assert_allclose(
        combine[0, 0, 0], np.exp(logits[0, 0, 0]) / np.exp(logits[0, 0, 0]).sum(), rtol=1e-5
    )


@pytest.mark.parametrize("model", [{}, {"slots_per_expert": 2, "soft_moe_normalize": True}])
def test_soft_moe_model_contract_and_weights_in_the_model(model):
    cfg = resolve({"method": "soft_moe", "model": model})
    net = build_model(cfg, 5)
    variables = net.init({"params": jax.random.key(1)}, IMAGES)
    (logits, aux), state = net.apply(variables, IMAGES, mutable=["intermediates"])
    assert logits.shape == (2, predictions_per_image(cfg), 5) == (2, 1, 5)
    moe = state["intermediates"]["Encoder"]["encoderblock_3"]["Moe"]
    P = 8 * cfg.model.slots_per_expert  # E·n slots
    assert moe["dispatch"][0].shape == (2, 1, 17, P)  # (B, M, T, P)
    np.testing.assert_allclose(moe["dispatch"][0].sum(axis=2), 1.0, rtol=1e-5)
    np.testing.assert_allclose(moe["combine"][0].sum(axis=3), 1.0, rtol=1e-5)
    assert sorted(aux["router"]) == ["encoderblock_1", "encoderblock_3"]


def test_soft_e3_members_use_only_their_experts():
    # E = 8, M = 2: member m's slots belong to experts [4m, 4m + 4). Zeroing member 1's
    # experts changes member 1's prediction only; member 0's stays bit for bit.
    cfg = resolve(
        {
            "method": "soft_e3",
            "model": {"ensemble_size": 2, "representation": False, "head_bias_init": 0.0},
        }
    )
    net = build_model(cfg, 5)
    params = net.init({"params": jax.random.key(1)}, IMAGES)["params"]
    head = params["head"]
    params["head"] = dict(head, kernel=jax.random.normal(jax.random.key(3), head["kernel"].shape))
    before, _ = net.apply({"params": params}, IMAGES)
    moe = params["Encoder"]["encoderblock_3"]["Moe"]["Mlp"]
    moe = jax.tree_util.tree_map(lambda p: p.at[4:].set(0.0), moe)
    params["Encoder"]["encoderblock_3"]["Moe"]["Mlp"] = moe
    after, _ = net.apply({"params": params}, IMAGES)
    assert before.shape == (2, 2, 5)
    np.testing.assert_array_equal(before[:, 0], after[:, 0])
    assert not np.allclose(before[:, 1], after[:, 1])


@pytest.mark.parametrize(
    "method,model",
    [
        ("soft_moe", {}),
        ("soft_e3", {"ensemble_size": 2}),
        ("soft_moe", {"slots_per_expert": 4, "soft_moe_normalize": True}),
    ],
)
def test_analytic_flops_match_xla_and_params_match_shapes(method, model):
    cfg = resolve({"method": method, "model": model})
    xla = xla_cost(cfg, 10)["gflops"]
    assert analytic_gflops(cfg, 10) == pytest.approx(xla, rel=0.03)
    assert analytic_params(cfg, 10) == count_params(cfg, 10)


def test_soft_moe_params_by_hand():
    # tiny: H=32, Q=64, E=8, n=2, 16 px / 4 = 16 patches + cls = 17 tokens, 10 classes.
    # dense block 4H + 4H² + 4H + 2HQ + Q + H = 8,544; MoE block: 4H + 4H² + 4H = 4,352,
    # E·(2HQ + Q + H) = 8·4,192 = 33,536, Φ H·E·n = 512 -> 38,400.
    # embedding 4·4·3·32 + 32 = 1,568; cls 32; posemb 17·32 = 544; final LayerNorm 64;
    # representation 32² + 32 = 1,056; head 32·10 + 10 = 330.
    cfg = resolve({"method": "soft_moe", "model": {"slots_per_expert": 2}})
    expected = 1_568 + 32 + 544 + 2 * 8_544 + 2 * 38_400 + 64 + 1_056 + 330
    assert analytic_params(cfg, 10) == expected == 97_482


def test_converts_from_a_vmoe_upstream_with_fresh_slots():
    vmoe = build_model(resolve({"method": "vmoe"}), 5)
    upstream = vmoe.init({"params": jax.random.key(4)}, IMAGES)["params"]
    cfg = resolve({"method": "soft_moe"})
    fresh = build_model(cfg, 5).init({"params": jax.random.key(5)}, IMAGES)["params"]
    out = convert_for_config(upstream, fresh, cfg)
    moe = lambda tree: tree["Encoder"]["encoderblock_1"]["Moe"]  # noqa: E731
    np.testing.assert_array_equal(
        moe(out)["Mlp"]["Dense_0"]["kernel"], moe(upstream)["Mlp"]["Dense_0"]["kernel"]
    )  # experts: V-MoE's
    np.testing.assert_array_equal(moe(out)["slots"], moe(fresh)["slots"])  # Φ: fresh


def test_selectable_in_a_sweep_and_checked():
    doc = {
        "title": "soft",
        "reproduces": ["demo"],
        "base": {"method": "soft_e3", "model": {"ensemble_size": 2}},
        "axes": [{"name": "model.slots_per_expert", "values": [1, 2]}],
    }
    runs = S.expand_doc(doc, "sweeps/soft.yaml", "small")
    assert runs
    with pytest.raises(ConfigError, match="model.slots_per_expert"):
        resolve({"method": "soft_moe", "model": {"slots_per_expert": 0}})
    with pytest.raises(ConfigError, match="model.ensemble_size"):
        resolve({"method": "soft_e3", "model": {"ensemble_size": 3}})
