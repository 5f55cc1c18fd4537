"""Upstream -> downstream parameter conversion (e3lib.models.convert)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import param_structure, random_params

from e3lib.config import resolve
from e3lib.models import build_model
from e3lib.models.convert import (
    ConversionError,
    convert_for_config,
    convert_params,
    expert_permutation,
    resize_posemb,
    restore_params,
    router_columns,
    router_kernel_for,
    save_params,
)
from e3lib.models.layout import expert_subsets

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
ROUTER = ("Encoder", "encoderblock_3", "Moe", "Router", "kernel")
EXPERT_KERNEL = ("Encoder", "encoderblock_3", "Moe", "Mlp", "Dense_0", "kernel")


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _cfg(method, image_size=16, **model):
    return resolve({"method": method, "model": model, "data": {"image_size": image_size}})


def _params(cfg, images=IMAGES, shapes_only=False, seed=1):
    """Model and random parameters (or their shapes); conversion does not depend on init."""
    model = build_model(cfg, 5)
    if shapes_only:
        return model, param_structure(model, images)
    return model, random_params(model, images, seed=seed)


def test_router_reshape_h_e_to_h_m_e_over_m():
    # Column e of the upstream (H, E) kernel scores expert e; E=8, M=2 -> member m gets
    # columns [4m, 4m+4): kernel[:, m, j] = column 4m + j.
    columns = jnp.arange(8.0)[None, :]  # (H=1, E=8)
    e3 = router_kernel_for(columns, expert_subsets(8, 2, 0))
    np.testing.assert_array_equal(e3, [[[0, 1, 2, 3], [4, 5, 6, 7]]])
    np.testing.assert_array_equal(e3, columns.reshape(1, 2, 4))  # a pure reshape
    # A (H, 1, E) V-MoE kernel and a (H, M, E/M) E³ kernel flatten back to the same columns.
    np.testing.assert_array_equal(router_columns(columns[:, None, :]), columns)
    np.testing.assert_array_equal(router_columns(e3), columns)
    # Overlap o=2: 3 unique experts each, shared experts 6, 7 copied into both routers.
    np.testing.assert_array_equal(
        router_kernel_for(columns, expert_subsets(8, 2, 2)), [[[0, 1, 2, 6, 7], [3, 4, 5, 6, 7]]]
    )


def test_vmoe_to_e3_with_other_k_and_m():
    # Upstream V-MoE E=8, K=2; downstream E³ with M=4, K=1 (Table 19 changes K and M).
    _, up = _params(_cfg("vmoe", num_experts=8, num_selected=2))
    cfg = _cfg("e3", num_experts=8, num_selected=1, ensemble_size=4)
    model, target = _params(cfg)
    params = convert_for_config(up, target, cfg)
    np.testing.assert_array_equal(
        _get(params, ROUTER), _get(up, ROUTER).reshape(32, 4, 2)
    )  # (H, M, E/M)
    np.testing.assert_array_equal(_get(params, EXPERT_KERNEL), _get(up, EXPERT_KERNEL))
    np.testing.assert_array_equal(params["head"]["kernel"], target["head"]["kernel"])  # new head
    logits, _ = jax.eval_shape(lambda p: model.apply({"params": p}, IMAGES), params)
    assert logits.shape == (2, 4, 5)  # the tree fits


def test_vit_to_vmoe_tiles_the_dense_mlp_into_identical_experts():
    _, up = _params(_cfg("vit"))
    cfg = _cfg("vmoe", num_experts=4)
    _, target = _params(cfg, seed=2)
    with pytest.raises(ConversionError, match=r"Moe/Router/kernel \(32, 1, 4\)"):  # never silent
        convert_for_config(up, target, cfg)
    cfg = resolve(
        {"method": "vmoe", "model": {"num_experts": 4}, "upstream": {"fresh": ["head", "Router"]}}
    )
    params = convert_for_config(up, target, cfg)
    dense = up["Encoder"]["encoderblock_3"]["Mlp"]["MlpBlock"]["Dense_0"]["kernel"]
    experts = _get(params, EXPERT_KERNEL)
    assert experts.shape == (4,) + dense.shape
    for e in range(4):
        np.testing.assert_array_equal(experts[e], dense)
    np.testing.assert_array_equal(_get(params, ROUTER), _get(target, ROUTER))  # fresh router
    np.testing.assert_array_equal(
        params["Encoder"]["encoderblock_0"]["LayerNorm_0"]["scale"],
        up["Encoder"]["encoderblock_0"]["LayerNorm_0"]["scale"],
    )


def test_expert_permutation_moves_experts_and_router_columns_together():
    cfg = _cfg("vmoe", num_experts=4, num_selected=2)
    model, up = _params(cfg)  # distinct experts
    perm = expert_permutation(4, seed=3)
    assert sorted(perm) == [0, 1, 2, 3] and list(perm) != [0, 1, 2, 3]
    params = convert_params(up, up, permutation=perm, keep_head=True)
    for i in range(4):
        np.testing.assert_array_equal(
            _get(params, EXPERT_KERNEL)[i], _get(up, EXPERT_KERNEL)[perm[i]]
        )
        np.testing.assert_array_equal(
            _get(params, ROUTER)[:, 0, i], _get(up, ROUTER)[:, 0, perm[i]]
        )
    # Permuting experts and router columns alike is a symmetry of V-MoE: same predictions.
    out_up, _ = model.apply({"params": up}, IMAGES)
    out_perm, _ = model.apply({"params": params}, IMAGES)
    np.testing.assert_allclose(out_perm, out_up, rtol=1e-5, atol=1e-6)


def test_permute_experts_config_is_seeded():
    cfg = _cfg("e3", num_experts=8, ensemble_size=2, permute_experts=True)
    _, up = _params(_cfg("vmoe", num_experts=8))
    _, target = _params(cfg, shapes_only=True)
    a = convert_for_config(up, target, cfg, keep_head=True)
    b = convert_for_config(up, target, cfg, keep_head=True)
    np.testing.assert_array_equal(_get(a, ROUTER), _get(b, ROUTER))
    perm = expert_permutation(8, cfg.seed)
    np.testing.assert_array_equal(_get(a, ROUTER), _get(up, ROUTER)[:, 0, perm].reshape(32, 2, 4))


def test_posemb_resize_hand_derived():
    # Old grid 2×2 (T=5) with value = column index j ∈ {0, 1}; the corner-aligned zoom to
    # 4×4 samples columns at j'·(2-1)/(4-1) = 0, 1/3, 2/3, 1.
    grid = jnp.tile(jnp.array([0.0, 1.0]), (2, 1))  # (2, 2)
    posemb = jnp.concatenate([jnp.full((1, 1, 1), 9.0), grid.reshape(1, 4, 1)], axis=1)
    out = resize_posemb(posemb, 17)
    assert out.shape == (1, 17, 1)
    assert float(out[0, 0, 0]) == 9.0  # class token kept
    np.testing.assert_allclose(
        out[0, 1:, 0].reshape(4, 4), np.tile([0, 1 / 3, 2 / 3, 1.0], (4, 1)), atol=1e-6
    )
    with pytest.raises(ConversionError, match="square"):
        resize_posemb(posemb, 11)  # 10 is not a square


def test_resolution_change_resizes_posemb_in_conversion():
    _, up = _params(_cfg("vmoe"))  # 16 px: T = 1 + 4·4
    cfg = _cfg("e3", image_size=32, ensemble_size=2)
    big = jnp.zeros((1, 32, 32, 3))
    _, target = _params(cfg, images=big, shapes_only=True)  # 32 px: T = 1 + 8·8
    params = convert_for_config(up, target, cfg, keep_head=True)
    assert params["Encoder"]["posembed_input"].shape == (1, 65, 32)


def test_shape_mismatch_names_the_leaf():
    _, up = _params(_cfg("vmoe"))
    _, target = _params(_cfg("vmoe", size="mini"), shapes_only=True)
    with pytest.raises(
        ConversionError,
        match=r"encoder_norm/bias: upstream shape \(32,\) "
        r"does not fit the downstream shape \(64,\)",
    ):
        convert_params(up, target)
    # A leaf kept from the downstream model (the new head) needs real values, not shapes.
    _, target = _params(_cfg("vmoe"), shapes_only=True)
    with pytest.raises(ConversionError, match="head/bias"):
        convert_params(up, target)


def test_unused_upstream_leaf_is_an_error_naming_it():
    _, up = _params(_cfg("vmoe"))
    up = dict(up, extra={"kernel": jnp.zeros((3, 2))})
    cfg = _cfg("vmoe")
    _, target = _params(cfg, seed=2)
    with pytest.raises(
        ConversionError, match=r"no downstream leaf uses:\n    extra/kernel \(3, 2\)"
    ):
        convert_for_config(up, target, cfg)
    listed = resolve({"method": "vmoe", "upstream": {"fresh": ["head", "extra"]}})
    assert "extra" not in convert_for_config(up, target, listed)  # dropped, as stated


def test_orbax_round_trip(tmp_path):
    _, up = _params(_cfg("vmoe"))
    save_params(tmp_path / "ckpt", {"params": up, "step": 3})
    restored = restore_params(tmp_path / "ckpt")
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, up)
    with pytest.raises(FileNotFoundError, match="missing"):
        restore_params(tmp_path / "missing")
