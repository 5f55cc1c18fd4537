"""The model contract of docs/architecture.md for every built method, on the tiny size."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import param_structure, random_params

from e3lib.config import ConfigError, resolve
from e3lib.models import build_model
from e3lib.models.registry import predictions_per_image

IMAGES = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
CASES = [
    ("vit", {}),
    ("vmoe", {"num_selected": 2}),
    ("e3", {"ensemble_size": 2}),
    ("e3", {"ensemble_size": 2, "overlap": 2, "num_selected": 2}),
    ("tiling", {"ensemble_size": 2, "noise_mult": 2.0}),
    ("partitioning", {"ensemble_size": 2}),
    ("multipred", {"num_selected": 2, "num_predictions": 2}),
]


@pytest.mark.parametrize("method,model", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_contract_shapes(method, model):
    # Shapes only (jax.eval_shape traces init and apply without running them).
    cfg = resolve({"method": method, "model": model})
    net = build_model(cfg, num_classes=5)

    def forward():
        variables = net.init({"params": jax.random.key(1)}, IMAGES, train=False)
        return net.apply(
            variables,
            IMAGES,
            train=True,
            rngs={"dropout": jax.random.key(2), "gating": jax.random.key(3)},
        )

    logits, aux = jax.eval_shape(forward)
    predictions = predictions_per_image(cfg)
    assert logits.shape == (4, predictions, 5)
    assert aux["features"].shape == (4, predictions, 32)
    assert aux["aux_loss"].shape == ()
    expected_layers = [] if method == "vit" else ["encoderblock_1", "encoderblock_3"]
    assert sorted(aux["router"]) == expected_layers


def test_initial_model_values():
    cfg = resolve({"method": "e3", "model": {"ensemble_size": 2}})
    net = build_model(cfg, num_classes=5)
    # One compiled program for init + forward (cheaper than running init op by op).
    (logits, aux), variables = jax.jit(
        lambda k: net.init_with_output(
            {"params": k, "dropout": jax.random.key(2), "gating": jax.random.key(3)},
            IMAGES,
            train=True,
        )
    )(jax.random.key(1))
    # Zero-initialised head: every logit equals the head bias -log(5).
    np.testing.assert_allclose(logits, -np.log(5.0), rtol=1e-6)
    # aux loss = Σ over the MoE layers of their (positive) aux losses.
    total = sum(float(m["aux_loss"]) for m in aux["router"].values())
    np.testing.assert_allclose(float(aux["aux_loss"]), total, rtol=1e-6)
    assert float(aux["aux_loss"]) > 0
    params = variables["params"]
    np.testing.assert_array_equal(params["cls"], 0.0)
    assert float(jnp.std(params["Encoder"]["posembed_input"])) == pytest.approx(0.02, rel=0.2)


def test_unknown_size_is_rejected_where_the_config_enters():
    with pytest.raises(ConfigError, match="model.size='XL/8'.*allowed"):
        resolve({"method": "vmoe", "model": {"size": "XL/8"}})


@pytest.mark.parametrize(
    "model,field",
    [
        ({"ensemble_size": 2, "num_selected": 5}, "model.num_selected"),  # K=5 > E/M=4
        ({"ensemble_size": 3}, "model.ensemble_size"),  # 8 % 3 != 0
        ({"ensemble_size": 2, "overlap": 9}, "model.overlap"),  # o > E
        ({"ensemble_size": 4, "overlap": 2}, "model.ensemble_size"),  # (8-2) % 4 != 0
    ],
)
def test_invalid_e3_combinations_name_values_and_rule(model, field):
    with pytest.raises(ConfigError) as err:
        resolve({"method": "e3", "model": model})
    assert err.value.field == field
    assert str(model[field.split(".")[1]]) in str(err.value)


def test_builders_trust_the_resolved_config():
    # Validation happens once, in resolve; build_model does not re-check the fields
    # (a negative λ slipped past resolve would reach the router unchanged).
    cfg = resolve({"method": "vmoe"})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, aux_weight=-1.0))
    net = build_model(cfg, 10)
    variables = jax.eval_shape(lambda: net.init({"params": jax.random.key(0)}, IMAGES))
    assert "Encoder" in variables["params"]


@pytest.mark.parametrize("method,model", [CASES[0], CASES[2]], ids=["vit", "e3"])
def test_bfloat16_compute_keeps_float32_params_routing_and_gradients(method, model):
    nets = {
        d: build_model(resolve({"method": method, "model": dict(model, dtype=d)}), 5)
        for d in ("float32", "bfloat16")
    }
    params = random_params(nets["float32"], IMAGES, train=False)
    # One parameter tree serves both: parameters are float32 whatever the compute dtype.
    leaves16 = jax.tree_util.tree_leaves(param_structure(nets["bfloat16"], IMAGES, train=False))
    assert {leaf.dtype for leaf in leaves16} == {jnp.dtype("float32")}
    forward = {
        d: (lambda p, net=net: net.apply({"params": p}, IMAGES, train=False))
        for d, net in nets.items()
    }
    # The backbone's matmuls do run in bfloat16 ...
    assert "bf16[" in str(jax.make_jaxpr(forward["bfloat16"])(params))
    assert "bf16[" not in str(jax.make_jaxpr(forward["float32"])(params))
    (l16, a16), (l32, a32) = [jax.jit(forward[d])(params) for d in ("bfloat16", "float32")]
    # ... and the outputs stay close: bf16 keeps 8 mantissa bits (relative step 2^-8 ≈
    # 0.4%), so O(1) logits move by ~1e-2 at most and probabilities by less.
    p16 = jax.nn.softmax(l16.astype(jnp.float32))
    assert float(jnp.abs(p16 - jax.nn.softmax(l32)).max()) < 1e-2
    # Routing and its losses stay in float32.
    assert a16["aux_loss"].dtype == jnp.float32
    for metrics in a16.get("router", {}).values():
        assert metrics["aux_loss"].dtype == jnp.float32

    def loss(p):
        logits, aux = nets["bfloat16"].apply(
            {"params": p},
            IMAGES,
            train=True,
            rngs={"dropout": jax.random.key(1), "gating": jax.random.key(2)},
        )
        return -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[..., 0]) + aux["aux_loss"]

    grads = jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(params))
    assert {g.dtype for g in grads} == {jnp.dtype("float32")}
    assert all(bool(jnp.isfinite(g).all()) for g in grads)
