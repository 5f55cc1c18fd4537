"""Per-example preprocessing ops and the reference's pp strings.

Notation: H × W stored pixels, S pixels per side after resizing, 3 channels. Images are
uint8 (H, W, 3) until ``value_range`` turns them into float32. Random ops draw from an
explicit ``np.random.Generator`` (the stream seeds one per example from (seed, position)),
so an example's augmentation is reproducible and independent of worker and process count.

A pp string chains ops with ``|``, e.g. the reference's fine-tuning recipe
``decode_jpeg_and_inception_crop(384)|flip_lr|value_range(-1,1)`` and evaluation
``decode|resize(384)|value_range(-1,1)``. Ops (reference semantics, vmoe ``pp_ops.py``):

- ``decode``: encoded bytes → uint8 (H, W, 3) (PIL); arrays pass through.
- ``inception_crop(S, area_min=5, area_max=100)``: TF's ``sample_distorted_bounding_box``
  with area range [area_min, area_max] % of the image, aspect ratio (w/h) range
  [0.75, 1.33] (the TF op's default), 100 attempts, the whole image when all fail, then
  ``resize(S)``; ``decode_jpeg_and_inception_crop`` is ``decode`` then this op.
- ``resize(S)`` or ``resize(H, W)``: bilinear with half-pixel centres (``tf.image.resize``).
- ``central_crop(S)``; ``flip_lr``: left-right flip with probability ½.
- ``value_range(vmin, vmax, in_min=0, in_max=255, clip=False)``: float32 affine map.
- ``randaug(N, M)``: RandAugment (``e3lib.data.randaugment``).

Mixup is not a per-example op: it mixes images within a batch inside the train step
(``finetune.mixup``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from e3lib.data import randaugment
from e3lib.ppspec import OP_NAMES, parse_pp

ASPECT_RATIO_RANGE = (0.75, 1.33)
MAX_ATTEMPTS = 100


# ---------------------------------------------------------------------------- ops


def decode(image: Any) -> np.ndarray:
    if isinstance(image, (bytes, bytearray, memoryview)):
        from PIL import Image

        with Image.open(io.BytesIO(bytes(image))) as im:
            image = np.asarray(im.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    area_min: float = 0.05,
    area_max: float = 1.0,
    aspect_range: tuple[float, float] = ASPECT_RATIO_RANGE,
    max_attempts: int = MAX_ATTEMPTS,
) -> tuple[int, int, int, int]:
    """(y, x, h, w) of an inception crop of an H × W image (TF's algorithm: draw an
    aspect ratio r uniformly, then the crop height uniformly among the integer heights
    whose rint(h·r)·h area lies in [area_min, area_max]·H·W; offsets uniform in
    [0, H − h) and [0, W − w))."""
    min_area, max_area = area_min * width * height, area_max * width * height
    for _ in range(max_attempts):
        r = float(np.float32(rng.random() * (aspect_range[1] - aspect_range[0]) + aspect_range[0]))
        h = int(np.rint(math.sqrt(min_area / r)))
        max_h = int(np.rint(math.sqrt(max_area / r)))
        if np.rint(max_h * r) > width:
            max_h = int(math.floor((width + 0.5 - 1e-7) / r))
            if np.rint(max_h * r) > width:
                max_h -= 1
        max_h = min(max_h, height)
        h = min(h, max_h)
        if h < max_h:
            h += int(rng.integers(max_h - h + 1))
        w = int(np.rint(h * r))
        if w * h < min_area:
            h += 1
            w = int(np.rint(h * r))
        if w * h > max_area:
            h -= 1
            w = int(np.rint(h * r))
        if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
            continue
        y = int(rng.integers(height - h)) if h < height else 0
        x = int(rng.integers(width - w)) if w < width else 0
        return y, x, h, w
    return 0, 0, height, width


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights with half-pixel centres: output i samples input
    position p = (i + ½)·n_in/n_out − ½, clamped to the edge pixels."""
    weights = np.zeros((n_out, n_in), np.float32)
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    floor = np.floor(pos)
    frac = pos - floor
    lo = np.clip(floor, 0, n_in - 1).astype(np.int64)
    hi = np.clip(np.ceil(pos), 0, n_in - 1).astype(np.int64)
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def resize(image: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (height, width, 3), rounded to the nearest level."""
    width = height if width is None else width
    h, w, c = image.shape
    if (h, w) == (height, width):
        return image
    x = image.astype(np.float32).reshape(h, w * c)  # (H, W·C)
    x = (resize_weights(h, height) @ x).reshape(height, w, c)  # (S, W, C)
    x = x.transpose(0, 2, 1) @ resize_weights(w, width).T  # (S, C, S')
    x = x.transpose(0, 2, 1)  # (S, S', C)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def inception_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int | None = None,
    area_min: float = 5,
    area_max: float = 100,
) -> np.ndarray:
    y, x, h, w = crop_box(image.shape[0], image.shape[1], rng, area_min / 100, area_max / 100)
    crop = image[y : y + h, x : x + w]
    return resize(crop, size) if size else crop


def central_crop(image: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    width = height if width is None else width
    dy, dx = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[dy : dy + height, dx : dx + width]


def flip_lr(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1] if rng.random() < 0.5 else image


def value_range(
    image: np.ndarray,
    vmin: float,
    vmax: float,
    in_min: float = 0.0,
    in_max: float = 255.0,
    clip: bool = False,
) -> np.ndarray:
    """float32 vmin + (x − in_min)·(vmax − vmin)/(in_max − in_min); for (−1, 1) from
    [0, 255] this is x·(2/255) − 1, bit for bit ``e3lib.data.to_float``."""
    scale = np.float32((vmax - vmin) / (in_max - in_min))
    out = image.astype(np.float32) * scale + np.float32(
        vmin - in_min * (vmax - vmin) / (in_max - in_min)
    )
    return np.clip(out, vmin, vmax) if clip else out


# ---------------------------------------------------------------------------- pp strings

# name → (function(image, rng, *args, **kwargs), uses rng)
OPS: dict[str, tuple[Callable, bool]] = {
    "decode": (lambda im, rng: decode(im), False),
    "inception_crop": (inception_crop, True),
    "decode_jpeg_and_inception_crop": (
        lambda im, rng, *a, **k: inception_crop(decode(im), rng, *a, **k),
        True,
    ),
    "resize": (lambda im, rng, *a: resize(im, *a), False),
    "central_crop": (lambda im, rng, *a: central_crop(im, *a), False),
    "flip_lr": (flip_lr, True),
    "value_range": (lambda im, rng, *a, **k: value_range(im, *a, **k), False),
    "randaug": (lambda im, rng, n=2, m=10: randaugment.randaugment(im, n, m, rng), True),
}
assert set(OPS) == set(OP_NAMES), "e3lib.ppspec.OP_NAMES and the implemented OPS disagree"


class Preprocess:
    """A parsed pp string: ``pp(image, rng)`` applies its ops in order."""

    def __init__(self, spec: str, field: str = "data.pp_train"):
        self.spec = spec
        self.ops = parse_pp(spec, field)
        self.random = any(OPS[name][1] for name, _, _ in self.ops)

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> np.ndarray:
        if self.random and rng is None:
            raise ValueError(f"pp {self.spec!r} has random ops and needs an rng")
        for name, args, kwargs in self.ops:
            image = OPS[name][0](image, rng, *args, **kwargs)
        return np.asarray(image)

    def __repr__(self) -> str:
        return f"Preprocess({self.spec!r})"
