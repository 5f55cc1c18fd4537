"""RandAugment on uint8 images in NumPy, with the op set, magnitude mapping and pixel
rules of the reference implementation (the TPU EfficientNet ``autoaugment.py`` that
vmoe's ``randaug`` op and big_vision call; RandAugment: Cubuk et al. 2019).

Notation: H × W pixels, 3 channels, uint8 in [0, 255]; level L = the magnitude M of
``randaug(N, M)`` on the reference's scale (``MAX_LEVEL`` = 10; the paper's "medium2"
uses M = 15, which extrapolates past 10 exactly as the reference does).

Each of the N layers picks one of the 16 ops uniformly and applies it (no probability
gate: the reference draws a probability but none of these ops reads it). Level → argument:

=============  =======================================  ==========  ===========
op             argument                                 L = 0       L = 10 (15)
=============  =======================================  ==========  ===========
AutoContrast, Equalize, Invert   none
Rotate         ±30·L/10 degrees (sign: fair coin)       0°          ±30° (±45°)
Posterize      bits = int(4·L/10)                       0           4 (6)
Solarize       threshold = int(256·L/10)                0 (invert)  256 (384)
SolarizeAdd    addition = int(110·L/10), threshold 128  0           110 (165)
Color, Contrast, Brightness, Sharpness  factor 1.8·L/10 + 0.1        0.1         1.9 (2.8)
ShearX, ShearY ±0.3·L/10                                0           ±0.3 (±0.45)
TranslateX/Y   ±100·L/10 pixels (absolute, any size)    0           ±100 (±150)
Cutout         half-size int(40·L/10), fill 128         0 (none)    40 (60)
=============  =======================================  ==========  ===========

Pixel rules kept from the reference (all visible in the tests):

- ``blend(a, b, f)`` = a + f·(b − a) in float32, truncated to uint8 (clipped first
  when f ∉ (0, 1)); f = 0 gives a and f = 1 gives b exactly.
- Grey (Color, Contrast) is TF's ``rgb_to_grayscale``: trunc(255.5 · Σ w_c x_c / 255),
  w = (0.2989, 0.5870, 0.1140).
- Contrast blends with a constant grey of value min(H·W/256, 255): the reference takes
  the sum of a 256-bin histogram divided by 256 (the pixel count / 256, not the mean
  intensity). Kept as is; docs/data.md lists it.
- Posterize shifts by 8 − bits with TF's shift clamping (a shift ≥ 8 acts as 7), so
  bits = 0 keeps the top bit: pixels become 0 or 128.
- Geometric ops sample the input at the transformed position with nearest-neighbour
  rounding (half away from zero); positions outside the image become (128, 128, 128).
"""

from __future__ import annotations

import math

import numpy as np

MAX_LEVEL = 10.0
FILL = 128
CUTOUT_CONST = 40
TRANSLATE_CONST = 100
OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "SolarizeAdd",
)
GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)


def _u8(x: np.ndarray) -> np.ndarray:
    """float → uint8 by truncation (as a TF cast), after clipping to [0, 255]."""
    return np.clip(x, 0.0, 255.0).astype(np.uint8)


def blend(a: np.ndarray, b: np.ndarray, factor: float) -> np.ndarray:
    if factor == 0.0:
        return a.copy()
    if factor == 1.0:
        return b.copy()
    a32 = a.astype(np.float32)
    out = a32 + np.float32(factor) * (b.astype(np.float32) - a32)
    return _u8(out)


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) uint8 as TF's rgb_to_grayscale."""
    g = (image.astype(np.float32) / np.float32(255.0)) @ GREY_WEIGHTS
    return _u8(g * np.float32(255.5))


def autocontrast(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    for c in range(3):
        ch = image[..., c].astype(np.float32)
        lo, hi = ch.min(), ch.max()
        if hi > lo:
            scale = np.float32(255.0) / (hi - lo)
            out[..., c] = _u8(ch * scale - lo * scale)
    return out


def equalize(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    for c in range(3):
        ch = image[..., c]
        hist = np.bincount(ch.reshape(-1), minlength=256).astype(np.int64)
        nonzero = hist[hist != 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step == 0:
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.clip(np.r_[0, lut[:-1]], 0, 255)
        out[..., c] = lut[ch].astype(np.uint8)
    return out


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    shift = min(max(8 - int(bits), 0), 7)  # TF clamps shifts to [0, bit width − 1]
    return ((image >> shift) << shift).astype(np.uint8)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    return np.where(image < threshold, image, 255 - image).astype(np.uint8)


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    added = np.clip(image.astype(np.int64) + addition, 0, 255).astype(np.uint8)
    return np.where(image < threshold, added, image)


def color(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(np.repeat(grey(image)[..., None], 3, axis=-1), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    level = np.uint8(min(h * w / 256.0, 255.0))  # the reference's "mean" (see docstring)
    return blend(np.full_like(image, level), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(np.zeros_like(image), image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with a 3×3 smoothing ([[1,1,1],[1,5,1],[1,1,1]]/13) of the interior."""
    x = image.astype(np.float32)
    h, w = image.shape[:2]
    smooth = image.copy()
    if h >= 3 and w >= 3:
        acc = np.zeros((h - 2, w - 2, 3), np.float32)
        for dy in range(3):
            for dx in range(3):
                acc += x[dy : dy + h - 2, dx : dx + w - 2] * (5.0 if dy == dx == 1 else 1.0)
        smooth[1:-1, 1:-1] = _u8(acc / np.float32(13.0))
    return blend(smooth, image, factor)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def transform(
    image: np.ndarray, a: tuple[float, float, float], b: tuple[float, float, float]
) -> np.ndarray:
    """Output pixel (row y, column x) = input at column a0·x + a1·y + a2, row b0·x + b1·y
    + b2 (nearest), or FILL outside: TF's projective transform with wrap/unwrap."""
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)  # (H, W) each
    src_x = _round_half_away(a[0] * xs + a[1] * ys + a[2])
    src_y = _round_half_away(b[0] * xs + b[1] * ys + b[2])
    inside = (src_x >= 0) & (src_x <= w - 1) & (src_y >= 0) & (src_y <= h - 1)
    out = np.full_like(image, FILL)
    out[inside] = image[src_y[inside].astype(np.int64), src_x[inside].astype(np.int64)]
    return out


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Counter-clockwise rotation about the image centre (tfa.image.rotate)."""
    h, w = image.shape[:2]
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
    y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
    return transform(image, (cos, -sin, x_off), (sin, cos, y_off))


def translate_x(image: np.ndarray, pixels: float) -> np.ndarray:
    return transform(image, (1.0, 0.0, pixels), (0.0, 1.0, 0.0))


def translate_y(image: np.ndarray, pixels: float) -> np.ndarray:
    return transform(image, (1.0, 0.0, 0.0), (0.0, 1.0, pixels))


def shear_x(image: np.ndarray, level: float) -> np.ndarray:
    return transform(image, (1.0, level, 0.0), (0.0, 1.0, 0.0))


def shear_y(image: np.ndarray, level: float) -> np.ndarray:
    return transform(image, (1.0, 0.0, 0.0), (level, 1.0, 0.0))


def cutout(image: np.ndarray, pad: int, cy: int, cx: int) -> np.ndarray:
    """Fill the (2·pad)² square centred at (cy, cx) (clipped to the image) with FILL."""
    out = image.copy()
    out[max(0, cy - pad) : cy + pad, max(0, cx - pad) : cx + pad] = FILL
    return out


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() < 0.5 else -value


def apply_op(image: np.ndarray, name: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """Apply RandAugment op ``name`` at ``level`` (random sign / position from ``rng``)."""
    frac = level / MAX_LEVEL
    enhance = frac * 1.8 + 0.1
    if name == "AutoContrast":
        return autocontrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return invert(image)
    if name == "Rotate":
        return rotate(image, _signed(frac * 30.0, rng))
    if name == "Posterize":
        return posterize(image, int(frac * 4))
    if name == "Solarize":
        return solarize(image, int(frac * 256))
    if name == "SolarizeAdd":
        return solarize_add(image, int(frac * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return {
            "Color": color,
            "Contrast": contrast,
            "Brightness": brightness,
            "Sharpness": sharpness,
        }[name](image, enhance)
    if name == "ShearX":
        return shear_x(image, _signed(frac * 0.3, rng))
    if name == "ShearY":
        return shear_y(image, _signed(frac * 0.3, rng))
    if name == "TranslateX":
        return translate_x(image, _signed(frac * TRANSLATE_CONST, rng))
    if name == "TranslateY":
        return translate_y(image, _signed(frac * TRANSLATE_CONST, rng))
    if name == "Cutout":
        h, w = image.shape[:2]
        return cutout(image, int(frac * CUTOUT_CONST), int(rng.integers(h)), int(rng.integers(w)))
    raise ValueError(f"unknown RandAugment op {name!r}; allowed: {list(OPS)}")


def randaugment(
    image: np.ndarray, num_layers: int, magnitude: float, rng: np.random.Generator
) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W, 3) uint8: ``num_layers`` ops drawn uniformly from OPS."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"randaug needs an (H, W, 3) uint8 image, got {image.dtype} "
            f"{image.shape}; put it before value_range"
        )
    for _ in range(num_layers):
        image = apply_op(image, OPS[int(rng.integers(len(OPS)))], float(magnitude), rng)
    return image
