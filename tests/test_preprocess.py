"""Preprocessing ops (e3lib.data.preprocess) and RandAugment (e3lib.data.randaugment)
against hand-derived outputs on tiny images."""

from __future__ import annotations

import numpy as np
import pytest

from e3lib.data import randaugment as ra
from e3lib.data.preprocess import (
    Preprocess,
    crop_box,
    flip_lr,
    inception_crop,
    parse_pp,
    resize,
    resize_weights,
    value_range,
)
from e3lib.data.suite import to_float
from e3lib.errors import ConfigError


def rgb(values) -> np.ndarray:
    """(H, W) values → (H, W, 3) uint8 with the same value in every channel."""
    v = np.asarray(values, np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def coords(h: int = 5, w: int = 5) -> np.ndarray:
    return rgb(10 * np.arange(h)[:, None] + np.arange(w)[None, :])  # pixel (r, c) = 10r + c


# ---------------------------------------------------------------- inception crop


def test_crop_boxes_respect_area_aspect_and_bounds():
    rng = np.random.default_rng(0)
    height, width = 40, 50
    for _ in range(500):
        y, x, h, w = crop_box(height, width, rng)
        # area in [5%, 100%] of the image (the reference's area_min=5, area_max=100)
        assert 0.05 * height * width <= h * w <= height * width
        # aspect w/h in [0.75, 1.33] up to the rounding of w = rint(h·r)
        assert 0.75 - 0.5 / h <= w / h <= 1.33 + 0.5 / h
        # inside the image; offsets are drawn from [0, H − h) (TF's Uniform(H − h))
        assert 0 <= y and y + h <= height and 0 <= x and x + w <= width
        assert y + h < height or h == height
        assert x + w < width or w == width


def test_crop_box_full_area_square_and_fallback():
    rng = np.random.default_rng(1)
    # area 100% of a 20×20 image: only h = w = 20 fits, whatever ratio succeeds
    assert crop_box(20, 20, rng, area_min=1.0) == (0, 0, 20, 20)
    # 100% of a 10×20 image needs w/h = 2 ∉ [0.75, 1.33]: all 100 attempts fail and the
    # whole image is returned (use_image_if_no_bounding_boxes)
    assert crop_box(10, 20, rng, area_min=1.0) == (0, 0, 10, 20)


def test_inception_crop_resizes_and_is_seeded():
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    a = inception_crop(image, np.random.default_rng(5), 8)
    b = inception_crop(image, np.random.default_rng(5), 8)
    assert a.shape == (8, 8, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # the crop is a sub-window: with area 100% it is the whole image, just resized
    full = inception_crop(image[:20, :20], np.random.default_rng(0), 20, area_min=100)
    np.testing.assert_array_equal(full, image[:20, :20])


# ---------------------------------------------------------------- resize, flip, value range


def test_resize_half_pixel_hand_values():
    # 2 → 4: positions (i + ½)/2 − ½ = −¼, ¼, ¾, 5/4 → clamped: [0, 10, 30, 40]
    np.testing.assert_allclose(resize_weights(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    row = rgb([[0, 40]])
    assert resize(row, 1, 4)[0, :, 0].tolist() == [0, 10, 30, 40]
    # 4 → 2: positions ½ and 5/2, means of pixel pairs (rounded to nearest)
    assert resize(rgb([[0, 11, 20, 30]]), 1, 2)[0, :, 0].tolist() == [6, 25]
    const = rgb(np.full((7, 9), 255))
    assert (resize(const, 13) == 255).all()


def test_flip_lr_is_a_fair_coin_from_the_rng():
    image = coords(2, 3)
    flips = []
    for seed in range(40):
        out = flip_lr(image, np.random.default_rng(seed))
        flipped = np.random.default_rng(seed).random() < 0.5
        np.testing.assert_array_equal(out, image[:, ::-1] if flipped else image)
        flips.append(flipped)
    assert 0 < sum(flips) < 40


def test_value_range_ends_and_bit_identity_with_to_float():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    out = value_range(x, -1, 1)
    assert out.dtype == np.float32 and out[0, 0, 0] == -1.0 and out[-1, -1, 0] == 1.0
    np.testing.assert_array_equal(out, to_float(x))
    np.testing.assert_allclose(
        value_range(x, 0, 1)[..., 0].reshape(-1), np.arange(256) / 255, atol=1e-7
    )
    assert value_range(x, -1, 1, in_max=127, clip=True).max() == 1.0


def test_parse_pp_reference_strings_and_errors():
    assert parse_pp("decode_jpeg_and_inception_crop(384)|flip_lr|value_range(-1,1)") == [
        ("decode_jpeg_and_inception_crop", (384,), {}),
        ("flip_lr", (), {}),
        ("value_range", (-1, 1), {}),
    ]
    assert parse_pp("decode|resize(384)|value_range(-1, 1)|randaug(2, 15)")[-1] == (
        "randaug",
        (2, 15),
        {},
    )
    assert parse_pp("inception_crop(8, area_min=50)") == [
        ("inception_crop", (8,), {"area_min": 50})
    ]
    with pytest.raises(ConfigError, match="unknown op 'blur'.*allowed"):
        parse_pp("decode|blur(3)")
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_pp("resize(__import__('os'))")
    with pytest.raises(ValueError, match="needs an rng"):
        Preprocess("flip_lr")(coords())


def test_pp_chain_is_deterministic_per_rng():
    pp = Preprocess("inception_crop(6)|flip_lr|randaug(2,15)|value_range(-1,1)")
    image = np.random.default_rng(0).integers(0, 256, (12, 10, 3)).astype(np.uint8)
    a = pp(image, np.random.default_rng([3, 7]))
    np.testing.assert_array_equal(a, pp(image, np.random.default_rng([3, 7])))
    assert a.shape == (6, 6, 3) and a.dtype == np.float32 and -1 <= a.min() <= a.max() <= 1


# ---------------------------------------------------------------- RandAugment ops


def op(image, name, level, seed=0):
    return ra.apply_op(image, name, level, np.random.default_rng(seed))


def test_level_free_ops():
    image = rgb([[50, 100], [150, 100]])
    # AutoContrast: [50, 150] → [0, 255], 100 → 127.5 truncated
    assert op(image, "AutoContrast", 0)[..., 0].tolist() == [[0, 127], [255, 127]]
    assert (op(image, "Invert", 10) == 255 - image).all()
    # Equalize, 32×32, half 10s, half 20s: step = (1024 − 512)//255 = 2,
    # lut[v] = (cumsum[v − 1] + 1)//2: 10 → 0, 20 → min(513//2, 255) = 255
    eq = rgb(np.r_[np.full(512, 10), np.full(512, 20)].reshape(32, 32))
    out = op(eq, "Equalize", 5)[..., 0]
    assert set(out[eq[..., 0] == 10].tolist()) == {0} and set(out[eq[..., 0] == 20].tolist()) == {
        255
    }
    # few pixels: step = 0 → unchanged
    assert (op(image, "Equalize", 10) == image).all()


@pytest.mark.parametrize(
    "level, expected",
    [
        (0, [[0, 128], [128, 0]]),  # bits 0 → shift clamped to 7: top bit only
        (10, [[0x70, 0x80], [0xF0, 0x00]]),  # bits 4: x & 0xF0
        (15, [[0x7C, 0x80], [0xFC, 0x04]]),  # bits int(6.0) = 6: x & 0xFC
    ],
)
def test_posterize(level, expected):
    image = rgb([[0x7F, 0x80], [0xFF, 0x07]])
    assert op(image, "Posterize", level)[..., 0].tolist() == expected


def test_solarize_and_solarize_add():
    image = rgb([[20, 127], [128, 250]])
    assert (op(image, "Solarize", 0) == 255 - image).all()  # threshold 0: all invert
    assert (op(image, "Solarize", 10) == image).all()  # threshold 256: none
    assert (op(image, "SolarizeAdd", 0) == image).all()  # addition 0
    assert op(image, "SolarizeAdd", 10)[..., 0].tolist() == [[130, 237], [128, 250]]
    assert op(image, "SolarizeAdd", 15)[..., 0].tolist() == [[185, 255], [128, 250]]


def test_color_contrast_brightness():
    px = np.array([[[200, 100, 0]]], np.uint8)
    # grey = trunc(255.5·(0.2989·200 + 0.5870·100)/255) = trunc(118.71) = 118
    assert op(px, "Color", 0)[0, 0].tolist() == [126, 116, 106]  # 118 + 0.1·(x − 118)
    assert op(px, "Color", 10)[0, 0].tolist() == [255, 83, 0]  # 118 + 1.9·(x − 118)
    image = rgb([[51, 101], [200, 0]])
    assert op(image, "Brightness", 0)[..., 0].tolist() == [[5, 10], [20, 0]]
    assert op(image, "Brightness", 10)[..., 0].tolist() == [[96, 191], [255, 0]]
    assert op(image, "Brightness", 15)[..., 0].tolist() == [[142, 255], [255, 0]]
    # Contrast blends with the constant H·W/256: 0 for 2×2 (= Brightness), 4 for 32×32
    assert (op(image, "Contrast", 0) == op(image, "Brightness", 0)).all()
    big = rgb(np.full((32, 32), 200))
    assert set(op(big, "Contrast", 0)[..., 0].reshape(-1).tolist()) == {23}  # 4 + 19.6


def test_sharpness():
    image = rgb([[0, 0, 0], [0, 143, 0], [0, 0, 0]])
    # smoothed centre 5·143/13 = 55; borders keep the original
    assert op(image, "Sharpness", 0)[..., 0].tolist() == [[0, 0, 0], [0, 63, 0], [0, 0, 0]]
    assert op(image, "Sharpness", 10)[..., 0].tolist() == [[0, 0, 0], [0, 222, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout"]
)
def test_geometric_ops_identity_at_level_0(name):
    image = coords()
    assert (op(image, name, 0) == image).all()


def test_rotate():
    image = coords(3, 3)
    np.testing.assert_array_equal(ra.rotate(image, 90.0), np.rot90(image))  # counter-clockwise
    five = coords()
    for seed in range(4):
        out = op(five, "Rotate", 10, seed)[..., 0]
        assert out[2, 2] == 22 and out[0, 0] == 128  # centre kept, corner left the image
        # +30°: output (0, 2) samples column 2 + ½·2 = 3, row 2 − 0.866·2 = 0.27 → 0
        assert out[0, 2] in (3, 1)  # −30° samples column 1
        assert (out == ra.rotate(five, 30)[..., 0]).all() or (
            out == ra.rotate(five, -30)[..., 0]
        ).all()


def test_shear_and_translate():
    image = coords(4, 4)
    # ShearX 0.3: column x + 0.3·y, rounded: rows 0, 1 unchanged, rows 2, 3 shift by 1
    out = ra.shear_x(image, 0.3)[..., 0]
    assert out.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13], [21, 22, 23, 128], [31, 32, 33, 128]]
    # ShearY 0.3: row y + 0.3·x: column 2 samples row y + 1
    assert ra.shear_y(image, 0.3)[..., 0][:, 2].tolist() == [12, 22, 32, 128]
    sheared = [op(image, "ShearX", 10, s)[..., 0] for s in range(8)]
    assert any((s == out).all() for s in sheared) and any(s[2, 0] == 128 for s in sheared)
    # Translate at level 0.1: ±1 pixel; output column x = input column x ± 1
    moved = [op(image, "TranslateX", 0.1, s)[..., 0] for s in range(8)]
    left = [[1, 2, 3, 128], [11, 12, 13, 128], [21, 22, 23, 128], [31, 32, 33, 128]]
    assert all(m.tolist() == left or m[:, 1:].tolist() == image[:, :3, 0].tolist() for m in moved)
    # at level 10 (±100 pixels) and 15 (±150) a 4×4 image leaves entirely
    assert (op(image, "TranslateY", 10) == 128).all() and (op(image, "TranslateX", 15) == 128).all()


def test_cutout():
    image = coords(4, 4)
    assert (op(image, "Cutout", 10) == 128).all()  # half-size 40 covers 4×4
    out = op(image, "Cutout", 0.5, seed=3)[..., 0]  # half-size int(2.0) = 2
    rng = np.random.default_rng(3)
    cy, cx = int(rng.integers(4)), int(rng.integers(4))
    mask = np.zeros((4, 4), bool)
    mask[max(0, cy - 2) : cy + 2, max(0, cx - 2) : cx + 2] = True
    assert (out[mask] == 128).all() and (out[~mask] == image[..., 0][~mask]).all()


def test_randaugment_layers_and_determinism():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    assert (ra.randaugment(image, 0, 15, np.random.default_rng(0)) == image).all()
    a = ra.randaugment(image, 2, 15, np.random.default_rng(9))
    np.testing.assert_array_equal(a, ra.randaugment(image, 2, 15, np.random.default_rng(9)))
    # one layer = the op drawn first, applied with the same generator
    rng = np.random.default_rng(4)
    expect_rng = np.random.default_rng(4)
    name = ra.OPS[int(expect_rng.integers(len(ra.OPS)))]
    np.testing.assert_array_equal(
        ra.randaugment(image, 1, 10, rng), ra.apply_op(image, name, 10.0, expect_rng)
    )
    with pytest.raises(ValueError, match="uint8"):
        ra.randaugment(image.astype(np.float32), 1, 10, rng)


def test_pp_recipes_by_name_at_the_run_image_size():
    from e3lib.config import resolve
    from e3lib.errors import ConfigError
    from e3lib.ppspec import pp_string

    assert (
        pp_string("paper", 384, "train")
        == "decode_jpeg_and_inception_crop(384)|flip_lr|value_range(-1,1)"
    )
    assert pp_string("paper", 384, "eval") == "decode|resize(384)|value_range(-1,1)"
    assert (
        pp_string("medium2", 128, "train")
        == "decode_jpeg_and_inception_crop(128)|flip_lr|randaug(2,15)|value_range(-1,1)"
    )
    assert pp_string(None, 32, "train") == "decode|resize(32)|value_range(-1,1)"
    assert pp_string("flip_lr", 32, "train") == "flip_lr"  # a string is kept as given
    resolve({"data": {"pp_train": "medium2", "pp_eval": "paper"}})
    with pytest.raises(ConfigError, match="data.pp_train.*unknown op 'papr'"):
        resolve({"data": {"pp_train": "papr"}})
