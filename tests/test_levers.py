"""Precision and memory levers (docs/training.md, "Memory levers"): bfloat16 compute with
float32 master weights, bfloat16 momentum, per-block rematerialisation and micro-steps give
the plain float32 result within stated tolerances; their config rules and run ids.

Tiny models at 8 px (4 patches + the class token), B = 8, parameters drawn by
``model_helpers.random_params`` (the zero-initialised head of ``init`` would make every
gradient below it 0). Each compiled step is built once per module (``_run``)."""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from model_helpers import random_params  # noqa: E402

from e3lib.config import resolve, run_id, upstream_id  # noqa: E402
from e3lib.errors import ConfigError  # noqa: E402
from e3lib.models import build_model  # noqa: E402
from e3lib.models.registry import METHODS, routing_group_images  # noqa: E402
from e3lib.train.loop import Job, initial_state, make_train_step  # noqa: E402
from e3lib.train.micro import check_micro_batches, micro_batches  # noqa: E402
from e3lib.train.optim import finetune_optimizer  # noqa: E402

B, SIZE, C = 8, 8, 10
F32, BF16 = np.dtype("float32"), np.dtype(jnp.bfloat16)
# lr 1 with no warmup: the first update is minus the (clipped) gradient itself, so updated
# parameters compare gradients at the parameters' own float resolution.
STEP = {"batch_size": B, "steps": 10, "warmup": 0, "lr": 1.0, "end_lr": 1.0, "grad_clip": 0.0}
MODELS = {
    "vit": {"method": "vit", "model": {"size": "tiny"}},
    "vmoe": {"method": "vmoe", "model": {"num_experts": 4, "num_selected": 2, "moe_n": 1}},
    "e3": {"method": "e3", "model": {"num_experts": 4, "ensemble_size": 2, "moe_n": 1}},
}


def config(name: str, model=None, finetune=None):
    base = MODELS[name]
    return resolve(
        {
            "method": base["method"],
            # no router noise: micro-batches draw their own (e3lib.train.micro)
            "model": {"group_images": 2, "noise_mult": 0.0, **base["model"], **(model or {})},
            "data": {"image_size": SIZE},
            "finetune": {**STEP, **(finetune or {})},
        }
    )


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(B, SIZE, SIZE, 3)), jnp.float32)
    return images, jnp.asarray(rng.integers(0, C, B), jnp.int32)


def job_of(cfg, model):
    ft = cfg.finetune
    return Job(
        model=model,
        optimizer=finetune_optimizer(ft),
        num_classes=C,
        images=None,
        labels=None,
        batch_size=B,
        steps=ft.steps,
        seeds=(0,),
        microsteps=ft.microsteps,
        group_images=routing_group_images(cfg),
    )


def start(cfg):
    model = build_model(cfg, C)
    job = job_of(cfg, model)
    params = random_params(model, jnp.zeros((1, SIZE, SIZE, 3)))
    return job, initial_state(job.optimizer, params, 0, cfg.model.param_dtype)


@functools.cache
def _run(name: str, steps: int = 1, **fields):
    """(states, per-step metrics) of ``steps`` train steps: the state before each step and
    after the last, on the host; ``fields``: ``section__field=value`` overrides."""
    over: dict = {"model": {}, "finetune": {}}
    for key, value in fields.items():
        section, field = key.split("__")
        over[section][field] = value
    job, state = start(config(name, over["model"], over["finetune"]))
    states = [jax.tree_util.tree_map(np.asarray, state)]
    step = make_train_step(job)
    metrics = []
    for t in range(steps):
        state, m = step(state, *batch(t))
        states.append(jax.tree_util.tree_map(np.asarray, state))
        metrics.append({k: float(v) for k, v in m.items()})
    return states, metrics


def max_abs_diff(a, b) -> float:
    diffs = jax.tree_util.tree_map(lambda x, y: np.max(np.abs(x - y)), a, b)
    return float(max(jax.tree_util.tree_leaves(diffs)))


# -- micro-steps -------------------------------------------------------------------------


def test_micro_batches_keep_each_devices_rows_together():
    # B = 8 on D = 2 devices (rows 0-3 and 4-7), μ = 2: micro-batch i takes the i-th pair
    # of each device's rows.
    rows = jnp.arange(8)
    assert micro_batches(rows, 2, 2).tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert micro_batches(rows, 4, 1).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert micro_batches(jnp.zeros((8, 3, 5)), 2, 2).shape == (2, 4, 3, 5)


@pytest.mark.parametrize(("name", "micro"), [("vit", 4), ("vmoe", 2), ("e3", 2), ("e3", 4)])
def test_microsteps_give_the_full_batch_update(name, micro):
    """One step in μ micro-batches: the same loss terms and updated parameters (= minus
    the gradient, lr 1) as the full batch, to 1e-6 (float32 sums in another order: ~1e-7
    relative per sum, gradients and parameters of order 1)."""
    (first, full), m_full = _run(name)
    (_, split), m_split = _run(name, finetune__microsteps=micro)
    assert max_abs_diff(first["params"], full["params"]) > 1e-3  # the step moved them
    assert max_abs_diff(full["params"], split["params"]) < 1e-6
    for key in ("loss", "ce", "aux_loss", "grad_norm"):
        assert m_split[0][key] == pytest.approx(m_full[0][key], rel=1e-6, abs=1e-9), key
    if name != "vit":
        assert m_full[0]["aux_loss"] > 0  # the routing groups' losses are compared too


def test_microsteps_must_keep_routing_groups_whole():
    # B = 8, 2 images per routing group: μ = 8 would cut groups in half.
    with pytest.raises(ConfigError, match=r"finetune.microsteps.*allowed: \[1, 2, 4\]"):
        config("e3", finetune={"microsteps": 8})
    with pytest.raises(ConfigError, match=r"finetune.microsteps.*allowed: \[1, 2, 4, 8\]"):
        config("vit", finetune={"microsteps": 3})  # no routing groups: divisors of 8
    config("vit", finetune={"microsteps": 8})
    with pytest.raises(ConfigError, match=r"upstream.microsteps.*allowed: \[1, 2, 4, 8\]"):
        resolve({"upstream": {"batch_size": 64, "microsteps": 16}})  # 8 images per group
    # On 4 devices each holds 2 of the 8 rows, one routing group: μ = 2 would cut it.
    with pytest.raises(ConfigError, match=r"finetune.microsteps.*4 devices.*allowed: \[1\]"):
        check_micro_batches(8, 2, 4, 2, "finetune.microsteps")
    check_micro_batches(16, 2, 4, 2, "finetune.microsteps")


# -- momentum dtype ------------------------------------------------------------------


def test_bfloat16_momentum_is_the_float32_result_within_its_rounding():
    """SGD momentum 0.9 held in bfloat16 (unit roundoff u = 2^-9) over 3 steps, gradients
    clipped to norm 1, lr 0.5. The stored trace t_k gains a relative error ≤ u on top of 0.9
    × the previous error: |Δt_1| ≤ u|t_1|, |Δt_2| ≤ u(|t_2| + 0.9|t_1|), |Δt_3| ≤
    u(|t_3| + 0.9|t_2| + 0.81|t_1|), so the parameters differ by lr·Σ|Δt_k| ≤ 2.71u·Σ_k|u_k|
    (u_k = lr·t_k the float32 updates), to first order; the gradients' change at the
    perturbed parameters is second order. Stated tolerance, per parameter array:
    8u × the largest Σ_k|u_k| of that array."""
    clip = {"finetune__grad_clip": 1.0, "finetune__lr": 0.5, "finetune__end_lr": 0.5}
    ref, m_ref = _run("vit", 3, **clip)
    half, m_half = _run("vit", 3, finetune__momentum_dtype="bfloat16", **clip)
    trace = jax.tree_util.tree_leaves(half[-1]["opt_state"])
    assert {x.dtype for x in trace if x.ndim} == {BF16}
    assert {x.dtype for x in jax.tree_util.tree_leaves(half[-1]["params"])} == {F32}
    leaves = [jax.tree_util.tree_leaves(s["params"]) for s in ref]
    travelled = [sum(np.abs(b - a) for a, b in zip(p, p[1:])) for p in zip(*leaves)]
    got = jax.tree_util.tree_leaves(half[-1]["params"])
    for path_sum, want, have in zip(travelled, leaves[-1], got):
        assert np.max(np.abs(want - have)) <= 8 * 2**-9 * np.max(path_sum)
    assert max_abs_diff(ref[-1]["params"], half[-1]["params"]) > 0  # the lever does act
    assert m_half[-1]["loss"] == pytest.approx(m_ref[-1]["loss"], rel=1e-2)


# -- compute and parameter dtypes ----------------------------------------------------


def test_bfloat16_compute_runs_bf16_dots_on_float32_master_weights():
    cfg = config("vit", model={"dtype": "bfloat16"})
    job, state = start(cfg)
    hlo = make_train_step(job).lower(state, *batch()).as_text(dialect="hlo")
    assert "bf16[" in hlo and any("bf16[" in line and " dot(" in line for line in hlo.splitlines())
    assert {x.dtype for x in jax.tree_util.tree_leaves(state["params"])} == {F32}
    # ... and the float32 run has no bf16 dot at all
    job32, state32 = start(config("vit"))
    hlo32 = make_train_step(job32).lower(state32, *batch()).as_text(dialect="hlo")
    assert not any("bf16[" in line and " dot(" in line for line in hlo32.splitlines())


def test_bfloat16_compute_is_the_float32_loss_within_bf16_rounding():
    """Inputs of each matmul rounded to bfloat16 (u = 2^-9), products accumulated in
    float32: ~2u relative per matmul, about 20 matmuls deep in the forward pass of this
    ViT (4 blocks: q, k, v, qk, av, out, 2 MLP), so 40u ≈ 0.08 relative on the logits at
    worst; the cross-entropy of near-uniform logits changes far less. Stated: 2e-2."""
    _, m32 = _run("vit")
    states, m16 = _run("vit", model__dtype="bfloat16")
    assert m16[0]["loss"] == pytest.approx(m32[0]["loss"], rel=2e-2)
    assert m16[0]["loss"] != m32[0]["loss"]
    assert {x.dtype for x in jax.tree_util.tree_leaves(states[-1]["params"])} == {F32}


def test_param_dtype_stores_the_parameters_and_momentum_dtype_the_momentum():
    job, state = start(config("e3", model={"param_dtype": "bfloat16"}))
    assert {x.dtype for x in jax.tree_util.tree_leaves(state["params"])} == {BF16}
    trace = [x for x in jax.tree_util.tree_leaves(state["opt_state"]) if x.ndim]
    assert {x.dtype for x in trace} == {F32}  # finetune.momentum_dtype's default
    out, _ = jax.eval_shape(make_train_step(job), state, *batch())
    assert {x.dtype for x in jax.tree_util.tree_leaves(out["params"])} == {BF16}
    assert {x.dtype for x in jax.tree_util.tree_leaves(out["opt_state"]) if x.ndim} == {F32}


# -- rematerialisation ---------------------------------------------------------------


def _grads(cfg, params, images, labels):
    model = build_model(cfg, C)

    def loss(p):
        logits, aux = model.apply(
            {"params": p},
            images,
            train=True,
            rngs={"dropout": jax.random.key(1), "gating": jax.random.key(2)},
        )
        targets = jax.nn.one_hot(labels, C)
        return (
            -jnp.mean(jnp.sum(targets[:, None] * jax.nn.log_softmax(logits), -1)) + aux["aux_loss"]
        )

    return jax.jit(jax.grad(loss))(params)


def test_remat_gives_the_same_gradients_with_noise_and_dropout():
    """Remat recomputes the forward pass from the same rngs: router noise, dropout and
    expert dropout draw the same values, so gradients agree to 1e-6 (XLA may fuse the
    recomputed graph differently)."""
    noisy = {"noise_mult": 1.0, "dropout": 0.1, "expert_dropout": 0.1}
    cfg = config("e3", model=noisy)
    params = random_params(build_model(cfg, C), jnp.zeros((1, SIZE, SIZE, 3)))
    ref = _grads(cfg, params, *batch())
    for policy in ("full", "dots_saveable"):
        got = _grads(config("e3", model=dict(noisy, remat=policy)), params, *batch())
        assert max_abs_diff(ref, got) < 1e-6, policy
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(ref)) > 1e-3


# The methods whose blocks differ from the dense / MoE / tiled E³ ones checked above.
OTHER_BLOCKS = {
    "batchensemble": {"ensemble_size": 2},
    "mimo": {"ensemble_size": 2},
    "mc_dropout": {"ensemble_size": 2, "expert_dropout": 0.1},
    "multipred": {"num_selected": 2, "num_predictions": 2},
    "partitioning": {"ensemble_size": 2},
    "soft_e3": {"ensemble_size": 2},
}


def test_other_blocks_cover_every_method():
    assert set(OTHER_BLOCKS) | set(MODELS) | {"tiling", "soft_moe"} == set(METHODS)


@pytest.mark.parametrize("method", sorted(OTHER_BLOCKS))
def test_remat_keeps_every_methods_parameters_and_traces(method):
    """The other methods' blocks rematerialise: same parameter tree, a gradient that traces
    (Tiling's and Soft MoE's blocks are E³'s and Soft E³'s with one router)."""
    model = {"num_experts": 4, "group_images": 2, **OTHER_BLOCKS[method]}
    over = {"method": method, "data": {"image_size": SIZE}}
    plain = resolve(dict(over, model=model))
    cfg = resolve(dict(over, model=dict(model, remat="full")))
    x = jnp.zeros((B, SIZE, SIZE, 3))
    shapes = (
        lambda c: jax.eval_shape(  # noqa: E731
            lambda: build_model(c, C).init({"params": jax.random.key(0)}, x[:1])["params"]
        )
    )
    params = shapes(cfg)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes(plain))
    net = build_model(cfg, C)
    rngs = {"dropout": jax.random.key(1), "gating": jax.random.key(2)}
    loss = lambda p: jnp.sum(net.apply({"params": p}, x, train=True, rngs=rngs)[0])  # noqa
    grads = jax.eval_shape(jax.grad(loss), params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


# -- run ids ---------------------------------------------------------------------------


def test_which_levers_enter_the_run_id():
    base = resolve({"method": "e3"})
    assert run_id(resolve({"method": "e3", "model": {"remat": "dots_saveable"}})) == run_id(base)
    for changed in (
        {"model": {"dtype": "bfloat16"}},
        {"model": {"param_dtype": "bfloat16"}},
        {"finetune": {"momentum_dtype": "bfloat16"}},
        {"finetune": {"microsteps": 2}},
    ):
        cfg = resolve({"method": "e3", **changed})
        assert run_id(cfg) != run_id(base), changed
        assert upstream_id(cfg) == upstream_id(base), changed
    for changed in ({"momentum_dtype": "bfloat16"}, {"microsteps": 2}):
        cfg = resolve({"method": "e3", "upstream": changed})
        assert upstream_id(cfg) != upstream_id(base), changed
    with pytest.raises(ConfigError, match=r"model.remat.*allowed: \['none', 'full'"):
        resolve({"model": {"remat": "some"}})
