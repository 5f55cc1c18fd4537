"""Efficient-ensemble baselines of App. G: BatchEnsemble ViT, MC-Dropout V-MoE, MIMO V-MoE.

Tiny models on 8×8 images: size ``tiny`` has P=4, H=32, Q=64, L=4 blocks, 2 heads; the
"last-2" blocks (1, 3) hold the BatchEnsemble / MoE MLPs; 8 px -> N=4 patches, T=5 tokens.
To keep the file fast, parameters are random draws on the shapes of ``model.init`` (no
compiled init) and each model's evaluation is compiled once and shared between tests.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from e3lib.config import ConfigError, resolve
from e3lib.models import build_model
from e3lib.models.batchensemble import (
    fast_weight_init,
    fast_weight_mask,
    param_labels,
    with_fast_weight_lr_scale,
)
from e3lib.models.convert import convert_for_config
from e3lib.models.mimo import member_positions, shuffled_rows, unshuffle
from e3lib.models.params import count_tree
from e3lib.run_config import RunConfig

IMAGE, CLASSES, BATCH = 8, 3, 4
RNGS = {"dropout": jax.random.key(7), "gating": jax.random.key(8)}


def cfg_of(method: str, **model) -> RunConfig:
    return resolve({"method": method, "model": model, "data": {"image_size": IMAGE}})


def images(batch: int = BATCH, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, IMAGE, IMAGE, 3))


def shapes(cfg: RunConfig):
    net = build_model(cfg, CLASSES)
    return jax.eval_shape(lambda: net.init({"params": jax.random.key(0)}, images(), train=False))[
        "params"
    ]


def init(cfg: dict, seed: int = 1):
    """The model and random parameters of its shapes: N(0, 0.3²), LayerNorm scales around 1,
    fast weights random signs (the ``be_init`` default)."""
    net = build_model(cfg, CLASSES)
    flat = traverse_util.flatten_dict(shapes(cfg), sep="/")
    keys = jax.random.split(jax.random.key(seed), len(flat))
    params = {}
    for key, (path, leaf) in zip(keys, sorted(flat.items())):
        value = 0.3 * jax.random.normal(key, leaf.shape, leaf.dtype)
        if (
            path.endswith("LayerNorm_0/scale")
            or path.endswith("norm/scale")
            or path.endswith("LayerNorm_1/scale")
        ):
            value = 1.0 + value
        if path.rsplit("/", 1)[-1] in ("fast_in", "fast_out"):
            value = fast_weight_init("random_sign")(key, leaf.shape)
        params[path] = value
    return net, traverse_util.unflatten_dict(params, sep="/")


@functools.cache
def _compiled_eval(cfg_json: str):
    net = build_model(resolve(json.loads(cfg_json)), CLASSES)
    return jax.jit(lambda p, x: net.apply({"params": p}, x, train=False))


def evaluate(cfg, params, x):
    """Evaluation-mode (logits, aux) of ``cfg``'s model; one compilation per config."""
    return _compiled_eval(json.dumps(cfg.to_dict(), sort_keys=True))(params, x)


# ----------------------------------------------------------------------------------------
# BatchEnsemble ViT

# Hand count of the tiny ViT at 8 px, C=3: embedding 4·4·3·32 + 32 = 1,568; cls 32;
# posemb 5·32 = 160; per block LN 4·32 = 128 + attention 4·32² + 4·32 = 4,224 + MLP
# 2·32·64 + 64 + 32 = 4,192 -> 8,544, ×4 = 34,176; encoder norm 64; pre_logits 32² + 32 =
# 1,056; head 32·3 + 3 = 99.  Total 37,155.
VIT_TINY_8PX = 1_568 + 32 + 160 + 4 * 8_544 + 64 + 1_056 + 99


def test_batchensemble_shapes_and_parameter_count():
    M = 2
    cfg = cfg_of("batchensemble", ensemble_size=M)
    net, params = build_model(cfg, CLASSES), shapes(cfg)
    dense0 = params["Encoder"]["encoderblock_3"]["Mlp"]["MlpBlock"]["Dense_0"]
    assert {k: v.shape for k, v in dense0.items()} == {
        "kernel": (32, 64),
        "bias": (M, 64),
        "fast_in": (M, 32),
        "fast_out": (M, 64),
    }
    assert "fast_in" not in params["Encoder"]["encoderblock_2"]["Mlp"]["MlpBlock"]["Dense_0"]
    # Per BatchEnsemble MLP: fast weights 2·M·(H + Q) = 4·96 = 384 and M − 1 more bias
    # copies (H + Q) = 96 -> 480; two such blocks -> 960 on top of the ViT.
    assert count_tree(params) == VIT_TINY_8PX + 2 * 480 == 38_115
    assert count_tree(shapes(cfg_of("vit"))) == VIT_TINY_8PX
    logits, aux = jax.eval_shape(
        lambda p, x: net.apply({"params": p}, x, train=True, rngs=RNGS), params, images()
    )
    assert logits.shape == (BATCH, M, CLASSES) and aux["features"].shape == (BATCH, M, 32)
    assert aux["aux_loss"].shape == () and aux["router"] == {}


def test_batchensemble_with_unit_fast_weights_is_the_vit_member_by_member():
    vit_cfg = cfg_of("vit")
    _, vit_params = init(vit_cfg, seed=1)
    be_cfg = cfg_of("batchensemble", ensemble_size=3)
    _, fresh = init(be_cfg, seed=2)
    converted = convert_for_config(vit_params, fresh, be_cfg, keep_head=True)
    x = images()
    ref, ref_aux = evaluate(vit_cfg, vit_params, x)  # (B, 1, C)
    # Random-sign fast weights: members differ from the ViT (the check below can fail).
    signed, _ = evaluate(be_cfg, converted, x)
    assert np.abs(np.asarray(signed) - np.asarray(ref)).max() > 1e-3
    # r_m = s_m = 1 and b_m = the ViT bias: U ∘ (1 1ᵀ) = U, so each member is the ViT.
    ones = jax.tree_util.tree_map(
        lambda leaf, fast: jnp.ones_like(leaf) if fast else leaf,
        converted,
        fast_weight_mask(converted),
    )
    logits, aux = evaluate(be_cfg, ones, x)  # (B, 3, C)
    # Equal up to float32 summation order (XLA compiles the 3·B-row blocks after tiling
    # differently from the B-row ones; the layer itself is exact, see the next test).
    for m in range(3):
        np.testing.assert_allclose(logits[:, m], ref[:, 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            aux["features"][:, m], ref_aux["features"][:, 0], rtol=1e-5, atol=1e-5
        )


def test_batchensemble_dense_with_unit_fast_weights_is_the_dense_layer_bitwise():
    import flax.linen as nn

    from e3lib.models.batchensemble import BatchEnsembleDense

    x = jax.random.normal(jax.random.key(0), (6, 5, 32))  # (B·M = 3·2, T, D_in)
    layer = BatchEnsembleDense(features=64, ensemble_size=2)
    params = layer.init(jax.random.key(1), x)["params"]
    dense = {"kernel": params["kernel"], "bias": params["bias"][0]}
    params = dict(
        params,
        fast_in=jnp.ones((2, 32)),
        fast_out=jnp.ones((2, 64)),
        bias=jnp.stack([dense["bias"]] * 2),
    )
    np.testing.assert_array_equal(
        layer.apply({"params": params}, x), nn.Dense(64).apply({"params": dense}, x)
    )
    # Member m's rows (b·M + m) use r_m, s_m and b_m: scale member 1's s by 2 -> its rows
    # double (minus the bias), member 0's rows are unchanged.
    params["fast_out"] = params["fast_out"].at[1].set(2.0)
    y = layer.apply({"params": params}, x)
    ref = nn.Dense(64).apply({"params": dense}, x)
    np.testing.assert_array_equal(y[0::2], ref[0::2])
    np.testing.assert_allclose(
        y[1::2], 2 * (ref[1::2] - dense["bias"]) + dense["bias"], rtol=1e-5, atol=1e-6
    )


def test_fast_weight_initialisations():
    signs = fast_weight_init("random_sign")(jax.random.key(0), (4000,))
    assert set(np.unique(np.asarray(signs)).tolist()) == {-1.0, 1.0}
    assert abs(float(jnp.mean(signs))) < 0.1  # P(+1) = 1/2: mean 0 ± 0.016
    normal = fast_weight_init("normal")(jax.random.key(0), (4000,))
    assert abs(float(jnp.mean(normal)) - 1.0) < 0.05  # N(1, 0.5²): mean 1 ± 0.008
    assert abs(float(jnp.std(normal)) - 0.5) < 0.05
    with pytest.raises(ValueError, match="random_sign"):
        fast_weight_init("uniform")


def test_fast_weight_learning_rate_scale():
    params = {
        "Dense_0": {
            "kernel": jnp.ones(2),
            "bias": jnp.ones(2),
            "fast_in": jnp.ones(2),
            "fast_out": jnp.ones(2),
        }
    }
    assert param_labels(params) == {
        "Dense_0": {"kernel": "slow", "bias": "slow", "fast_in": "fast", "fast_out": "fast"}
    }
    cfg = cfg_of("batchensemble", ensemble_size=2, be_lr_scale=2.0)
    sgd = optax.sgd(0.1, momentum=0.9)
    opt = with_fast_weight_lr_scale(sgd, cfg)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = opt.init(params)
    # Step 1: trace = g = 1 -> slow update −0.1·1 = −0.1, fast −0.1·2 = −0.2.
    # Step 2: trace = 0.9·1 + 1 = 1.9 -> slow −0.19, fast −0.38.
    for expected_slow in (-0.1, -0.19):
        updates, state = opt.update(grads, state, params)
        np.testing.assert_allclose(updates["Dense_0"]["kernel"], expected_slow, rtol=1e-6)
        np.testing.assert_allclose(updates["Dense_0"]["bias"], expected_slow, rtol=1e-6)
        np.testing.assert_allclose(updates["Dense_0"]["fast_in"], 2 * expected_slow, rtol=1e-6)
        np.testing.assert_allclose(updates["Dense_0"]["fast_out"], 2 * expected_slow, rtol=1e-6)
    assert with_fast_weight_lr_scale(sgd, cfg_of("batchensemble", be_lr_scale=1.0)) is sgd
    assert with_fast_weight_lr_scale(sgd, cfg_of("vmoe")) is sgd


# ----------------------------------------------------------------------------------------
# MC-Dropout V-MoE and MIMO V-MoE, compared with this V-MoE (large capacity: no token is
# dropped, whatever the rows per group, so outputs can be compared across models).

VMOE = cfg_of("vmoe", num_selected=2, capacity_factor=8.0)


def test_mc_dropout_shapes_count_and_sampling():
    # Large capacity: no token is dropped, tiled or not, so the samples can be compared
    # with the V-MoE itself.
    model = dict(num_selected=2, ensemble_size=3, capacity_factor=8.0)
    _, params = init(VMOE)
    x = images()
    ref, _ = evaluate(VMOE, params, x)  # (B, 1, C)

    zero_cfg = cfg_of("mc_dropout", expert_dropout=0.0, **model)
    zero_shapes = shapes(zero_cfg)
    assert count_tree(zero_shapes) == count_tree(params)  # the V-MoE's tree
    assert jax.tree_util.tree_structure(zero_shapes) == jax.tree_util.tree_structure(params)
    logits, aux = evaluate(zero_cfg, params, x)  # (B, M, C), no rng given
    assert logits.shape == (BATCH, 3, CLASSES) and aux["features"].shape == (BATCH, 3, 32)
    # Rate 0: every sample is the same network, the V-MoE.
    for m in range(3):
        np.testing.assert_array_equal(logits[:, m], logits[:, 0])
        np.testing.assert_allclose(logits[:, m], ref[:, 0], rtol=0, atol=1e-5)

    drop_cfg = cfg_of("mc_dropout", expert_dropout=0.5, **model)
    sampled, _ = evaluate(drop_cfg, params, x)
    assert np.abs(np.asarray(sampled[:, 1]) - np.asarray(sampled[:, 0])).max() > 1e-4
    again, _ = evaluate(drop_cfg, params, x)
    np.testing.assert_array_equal(sampled, again)  # seeded: reproducible
    drop = build_model(drop_cfg, CLASSES)
    train_logits, _ = jax.eval_shape(
        lambda p: drop.apply({"params": p}, x, train=True, rngs=RNGS), params
    )
    assert train_logits.shape == (BATCH, 1, CLASSES)  # V-MoE fine-tuning


# ----------------------------------------------------------------------------------------
# MIMO V-MoE


def test_member_positions_input_repetition():
    key = jax.random.key(0)
    # ρ = 1: no row is shuffled per member, every member reads the same positions.
    p = np.asarray(member_positions(key, 8, 3, 1.0, 1))
    assert p.shape == (3, 8) and (p == p[0]).all()
    # ρ = 0.5, N = 8·2 = 16: the first ⌊16·0.5⌋ = 8 rows are shuffled per member, the
    # last 8 are shared; every member's row is a permutation of the 16 positions.
    p = np.asarray(member_positions(key, 8, 3, 0.5, 2))
    assert shuffled_rows(16, 0.5) == 8
    assert (p[:, 8:] == p[0, 8:]).all()
    assert not (p[:, :8] == p[0, :8]).all()
    for row in p:
        assert sorted(row.tolist()) == list(range(16))


def test_unshuffle_returns_each_members_output_to_its_image():
    B, M, R = 4, 3, 2
    p = member_positions(jax.random.key(1), B, M, 0.0, R)  # (M, N=8)
    # A perfect "model": member m's output in row i is the image it read, P[m, i] // R.
    outputs = (p // R).T[..., None].astype(jnp.float32)  # (N, M, 1)
    back = np.asarray(unshuffle(outputs, p, R))  # (B, R·M, 1)
    assert back.shape == (B, R * M, 1)
    assert (back[..., 0] == np.arange(B)[:, None]).all()


MIMO = cfg_of(
    "mimo",
    ensemble_size=2,
    num_selected=2,
    capacity_factor=8.0,
    mimo_input_repetition=1.0,
    mimo_batch_repetition=2,
)


def test_mimo_inputs_shapes_and_count():
    M = 2
    cfg = MIMO
    net, params = init(cfg)
    assert params["embedding"]["kernel"].shape == (4, 4, 3 * M, 32)
    assert params["head"]["kernel"].shape == (32, M * CLASSES)
    # M − 1 more input channel sets (4·4·3·32 = 1,536) and heads (32·3 + 3 = 99).
    assert count_tree(params) == count_tree(shapes(VMOE)) + (M - 1) * (1_536 + 99)
    x = images(8)
    train_fn = jax.jit(
        lambda p, x: net.apply({"params": p}, x, train=True, rngs=RNGS, mutable=["intermediates"])
    )
    (logits, aux), state = train_fn(params, x)
    assert logits.shape == (8, 2 * M, CLASSES)  # (B, R·M, C)
    assert aux["features"].shape == (8, 2 * M, 32)
    fed = np.asarray(state["intermediates"]["member_inputs"][0])  # (N=16, 8, 8, 3·M)
    assert fed.shape == (16, IMAGE, IMAGE, 3 * M)
    np.testing.assert_array_equal(fed[..., :3], fed[..., 3:])  # ρ = 1: same images
    # ... and the 16 rows are the 8 images twice, in shuffled order.
    seen = sorted(
        int(np.flatnonzero((np.asarray(x) == row[..., :3]).all(axis=(1, 2, 3)))[0]) for row in fed
    )
    assert seen == sorted(list(range(8)) * 2)
    logits, aux = evaluate(cfg, params, x)
    assert logits.shape == (8, M, CLASSES) and aux["features"].shape == (8, M, 32)


def test_mimo_from_vmoe_checkpoint_keeps_the_vmoe_function():
    M = 2
    _, vmoe_params = init(VMOE, seed=1)
    cfg = MIMO
    _, fresh = init(cfg, seed=2)
    converted = convert_for_config(vmoe_params, fresh, cfg, keep_head=True)
    np.testing.assert_allclose(
        converted["embedding"]["kernel"][:, :, 3:],
        vmoe_params["embedding"]["kernel"] / M,
        rtol=1e-6,
    )
    x = images()
    ref, _ = evaluate(VMOE, vmoe_params, x)  # W h + b
    logits, _ = evaluate(cfg, converted, x)
    # Same image in all M channel groups: Σ_m (W_in/M) x = W_in x, so the representation h
    # is the V-MoE's; the head (W/M, b) gives each member W h / M + b = (ref − b)/M + b.
    bias = vmoe_params["head"]["bias"]
    expected = (ref[:, 0] - bias) / M + bias
    for m in range(M):
        np.testing.assert_allclose(logits[:, m], expected, rtol=0, atol=1e-5)
    new_head = convert_for_config(vmoe_params, fresh, cfg)  # the downstream head
    np.testing.assert_array_equal(new_head["head"]["kernel"], fresh["head"]["kernel"])


# ----------------------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
    "method,model,field",
    [
        ("mimo", {"mimo_input_repetition": 1.5}, "model.mimo_input_repetition"),
        ("mimo", {"mimo_batch_repetition": 0}, "model.mimo_batch_repetition"),
        ("mimo", {"num_selected": 9}, "model.num_selected"),
        ("mc_dropout", {"expert_dropout": 1.0}, "model.expert_dropout"),
        ("mc_dropout", {"moe_n": 0}, "model.moe_n"),
        ("batchensemble", {"be_lr_scale": -1.0}, "model.be_lr_scale"),
        ("batchensemble", {"be_init": "uniform"}, "model.be_init"),
        ("batchensemble", {"moe_n": 0}, "model.moe_n"),
    ],
)
def test_invalid_baseline_configs_name_file_field_and_rule(method, model, field):
    with pytest.raises(ConfigError) as err:
        resolve({"method": method, "model": model}, source="sweeps/x.yaml")
    assert err.value.field == field
    assert str(err.value).startswith("sweeps/x.yaml: " + field)


def test_registry_builds_all_three_with_their_upstreams():
    from e3lib.config import upstream_config
    from e3lib.models.registry import METHODS, predictions_per_image

    for name, upstream in [("batchensemble", "vit"), ("mc_dropout", "vmoe"), ("mimo", "vmoe")]:
        cfg = cfg_of(name, ensemble_size=4)
        assert METHODS[name].build and predictions_per_image(cfg) == 4
        assert upstream_config(cfg)["method"] == upstream


def test_finetune_job_scales_fast_weight_updates():
    from types import SimpleNamespace

    from e3lib.train import finetune_job

    cfg = resolve(
        {
            "method": "batchensemble",
            "model": {"ensemble_size": 2, "be_lr_scale": 0.5},
            "finetune": {"lr": 0.1, "warmup": 1, "steps": 10, "grad_clip": 0.0},
        }
    )
    data = SimpleNamespace(
        images=np.zeros((1, IMAGE, IMAGE, 3), np.uint8), labels=np.zeros(1, np.int32)
    )
    job = finetune_job([cfg], SimpleNamespace(num_classes=CLASSES, train=data), model=None)
    params = {"kernel": jnp.ones(2), "fast_in": jnp.ones(2)}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = job.optimizer.init(params)
    _, state = job.optimizer.update(grads, state, params)  # step 0: warmup lr 0
    updates, _ = job.optimizer.update(grads, state, params)  # step 1: lr 0.1, trace 0.9+1
    # Slow weights: −0.1 · 1.9 = −0.19; fast weights at half the learning rate: −0.095.
    np.testing.assert_allclose(updates["kernel"], -0.19, rtol=1e-5)
    np.testing.assert_allclose(updates["fast_in"], -0.095, rtol=1e-5)
