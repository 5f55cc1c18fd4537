"""Faithful adaptation of published checkpoints (e3lib.upstreams.adapt) and the
corner-aligned position-embedding zoom (e3lib.models.convert.resize_posemb)."""

import jax
import numpy as np
import pytest
from flax import traverse_util
from model_helpers import random_params
from published_writers import e3_to_vmoe, write_vit_npz, write_vmoe_sharded

from e3lib.config import resolve
from e3lib.models import build_model
from e3lib.models.convert import ConversionError, convert_params, resize_posemb
from e3lib.upstreams.adapt import AdaptationError, adapt_published
from e3lib.upstreams.source import open_published

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
ROUTER = "Encoder/encoderblock_3/Moe/Router/kernel"


def _cfg(method, fresh=("head",), **model):
    return resolve({"method": method, "model": model, "upstream": {"fresh": list(fresh)}})


def _flat(params):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}


def _params(cfg, seed):
    return random_params(build_model(cfg, 5), IMAGES, seed=seed)


@pytest.fixture(scope="module")
def vmoe_ckpt(tmp_path_factory):
    """A V-MoE E=8 checkpoint in the reference sharded format; router stored (H, E)."""
    up = _flat(_params(_cfg("vmoe", num_experts=8, num_selected=2), seed=1))
    up[ROUTER] = up[ROUTER].reshape(32, 8)
    up["Encoder/encoderblock_1/Moe/Router/kernel"] = up[
        "Encoder/encoderblock_1/Moe/Router/kernel"
    ].reshape(32, 8)
    prefix = str(tmp_path_factory.mktemp("ck") / "vmoe_e8")
    write_vmoe_sharded(prefix, {e3_to_vmoe(k): v for k, v in up.items()}, shard_count=3)
    return prefix, up


def test_vmoe_to_e3_router_slices_are_the_original_columns(vmoe_ckpt):
    prefix, up = vmoe_ckpt
    cfg = _cfg("e3", num_experts=8, ensemble_size=2, num_selected=1)  # K, M differ upstream
    target = _params(cfg, seed=2)
    out = _flat(adapt_published(open_published(prefix), target, cfg))
    W = up[ROUTER]  # (H, E) = (32, 8)
    assert out[ROUTER].shape == (32, 2, 4)
    for m in range(2):
        for j in range(4):
            np.testing.assert_array_equal(out[ROUTER][:, m, j], W[:, 4 * m + j])
    np.testing.assert_array_equal(out["head/kernel"], _flat(target)["head/kernel"])  # fresh
    experts = "Encoder/encoderblock_3/Moe/Mlp/Dense_0/kernel"
    np.testing.assert_array_equal(out[experts], up[experts])


def test_overlap_copies_shared_columns_into_every_member(vmoe_ckpt):
    prefix, up = vmoe_ckpt
    cfg = _cfg("e3", num_experts=8, ensemble_size=2, overlap=2)
    out = _flat(adapt_published(open_published(prefix), _params(cfg, seed=2), cfg))
    W = up[ROUTER]
    # (E - o)/M = 3 own experts per member, then the o = 2 shared experts 6, 7.
    assert out[ROUTER].shape == (32, 2, 5)
    np.testing.assert_array_equal(out[ROUTER][:, 0], W[:, [0, 1, 2, 6, 7]])
    np.testing.assert_array_equal(out[ROUTER][:, 1], W[:, [3, 4, 5, 6, 7]])


def test_posemb_zoom_2x2_to_3x3_by_hand():
    a, b, c, d = 1.0, 3.0, 5.0, 11.0
    posemb = np.array([[[7.0], [a], [b], [c], [d]]], np.float32)  # (1, 1 + 2·2, 1)
    out = np.asarray(resize_posemb(posemb, 10))[0, :, 0]
    # corner-aligned: output cells sample input coordinates 0, 1/2, 1 on each axis
    want = [
        [a, (a + b) / 2, b],
        [(a + c) / 2, (a + b + c + d) / 4, (b + d) / 2],
        [c, (c + d) / 2, d],
    ]
    assert out[0] == 7.0  # class token kept
    np.testing.assert_allclose(out[1:].reshape(3, 3), want, rtol=1e-6)


def test_posemb_zoom_4x4_to_2x2_by_hand():
    grid = np.arange(16, dtype=np.float32).reshape(4, 4) ** 2  # g[i, j] = (4i + j)²
    posemb = np.concatenate([[[-1.0]], grid.reshape(16, 1)])[None]  # (1, 17, 1)
    out = np.asarray(resize_posemb(posemb, 5))[0, :, 0]
    # 2 output cells sample input coordinates 0 and 3: the four corners, no averaging
    np.testing.assert_array_equal(out, [-1.0, 0.0, 9.0, 144.0, 225.0])


def test_posemb_zoom_equals_scipy_corner_aligned_zoom():
    import scipy.ndimage

    grid = np.random.default_rng(0).normal(size=(5, 5, 3)).astype(np.float32)
    posemb = np.concatenate([np.ones((1, 3), np.float32), grid.reshape(25, 3)])[None]
    for new in (2, 3, 7, 12):
        want = scipy.ndimage.zoom(grid, (new / 5, new / 5, 1), order=1)  # the reference
        out = np.asarray(resize_posemb(posemb, 1 + new * new))
        np.testing.assert_allclose(out[0, 1:].reshape(new, new, 3), want, rtol=1e-5, atol=1e-6)


def test_vit_npz_into_batchensemble_through_the_registry_hook(tmp_path):
    vit = _flat(_params(_cfg("vit"), seed=1))
    path = str(tmp_path / "ViT.npz")
    write_vit_npz(path, vit, era="linen")
    cfg = _cfg("batchensemble", ensemble_size=2)
    target = _params(cfg, seed=2)
    out = _flat(adapt_published(open_published(path), target, cfg))
    fresh = _flat(target)
    for name, value in out.items():
        if name in vit and vit[name].shape == value.shape and not name.startswith("head"):
            np.testing.assert_array_equal(value, vit[name])
    bias = "Encoder/encoderblock_3/Mlp/MlpBlock/Dense_0/bias"
    assert out[bias].shape == (2,) + vit[bias].shape  # (M, D) member biases
    np.testing.assert_array_equal(out[bias], np.stack([vit[bias]] * 2))
    fast = [n for n in out if n not in vit and not n.endswith("bias")]
    assert fast and all(np.array_equal(out[n], fresh[n]) for n in fast)  # fast weights: init


def test_silent_router_is_an_error_naming_the_leaf(tmp_path):
    vit = _flat(_params(_cfg("vit"), seed=1))
    path = str(tmp_path / "ViT.npz")
    write_vit_npz(path, vit)
    cfg = _cfg("vmoe", num_experts=4)  # router absent upstream
    with pytest.raises(AdaptationError, match=r"encoderblock_1/Moe/Router/kernel \(32, 1, 4\)"):
        adapt_published(open_published(path), _params(cfg, seed=2), cfg)
    # listed as intentionally fresh, it starts from its init; experts are the tiled dense MLP
    ok = _cfg("vmoe", fresh=("head", "Router"), num_experts=4)
    target = _params(ok, seed=2)
    out = _flat(adapt_published(open_published(path), target, ok))
    np.testing.assert_array_equal(out[ROUTER], _flat(target)[ROUTER])
    dense = vit["Encoder/encoderblock_3/Mlp/MlpBlock/Dense_0/kernel"]
    for e in range(4):
        np.testing.assert_array_equal(
            out["Encoder/encoderblock_3/Moe/Mlp/Dense_0/kernel"][e], dense
        )
    # the same rule in models.convert (own checkpoints)
    with pytest.raises(ConversionError, match=r"encoderblock_1/Moe/Router/kernel \(32, 1, 4\)"):
        convert_params(_params(_cfg("vit"), seed=1), target)


def test_unused_source_leaf_is_an_error_naming_both_sides(tmp_path, vmoe_ckpt):
    _, up = vmoe_ckpt
    stored = {e3_to_vmoe(k): v for k, v in up.items()}
    stored["Encoder/encoderblock_3/Moe/extra/kernel"] = np.zeros((3, 2), np.float32)
    prefix = str(tmp_path / "extra")
    write_vmoe_sharded(prefix, stored, shard_count=2)
    cfg = _cfg("vmoe", num_experts=8)
    unused = r"no downstream leaf uses:\n    Encoder/encoderblock_3/Moe/extra/kernel \(3, 2\)"
    with pytest.raises(AdaptationError, match=unused):
        adapt_published(open_published(prefix), _params(cfg, seed=2), cfg)
    # a target leaf with no source names the target side with its shape
    small = {k: v for k, v in stored.items() if "encoder_norm/scale" not in k}
    prefix2 = str(tmp_path / "missing")
    write_vmoe_sharded(prefix2, small, shard_count=2)
    with pytest.raises(AdaptationError, match=r"Encoder/encoder_norm/scale \(32,\)"):
        adapt_published(open_published(prefix2), _params(cfg, seed=2), cfg)
