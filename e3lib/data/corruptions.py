"""Image corruptions at five severities, in the spirit of ImageNet-C / CIFAR-10-C.

Notation: N images, H×W pixels, 3 channels. Every function maps a float image batch
(N, H, W, 3) in [0, 1] and a severity s ∈ {1..5} to a corrupted batch in [0, 1]; the
random ones draw from a ``numpy.random.Generator`` passed in, so a corrupted set is a
pure function of (images, type, severity, seed).

Parameters are scaled for small (16–32 px) images; each parameter row grows in strength
with severity.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from scipy import ndimage

SEVERITIES = (1, 2, 3, 4, 5)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _gaussian_noise(x, s, rng):
    sigma = (0.04, 0.08, 0.12, 0.18, 0.26)[s - 1]
    return x + rng.normal(0.0, sigma, x.shape)


def _shot_noise(x, s, rng):
    photons = (60.0, 25.0, 12.0, 5.0, 3.0)[s - 1]  # Poisson rate at full intensity
    return rng.poisson(x * photons) / photons


def _impulse_noise(x, s, rng):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]  # fraction of salt-and-pepper pixels
    u = rng.random(x.shape[:-1])[..., None]  # (N, H, W, 1): same pixel hit in every channel
    out = np.where(u < amount / 2, 0.0, x)
    return np.where(u > 1 - amount / 2, 1.0, out)


def _gaussian_blur(x, s, rng):
    sigma = (0.4, 0.6, 0.8, 1.0, 1.5)[s - 1]
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")


def _contrast(x, s, rng):
    keep = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * keep + mean


def _brightness(x, s, rng):
    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]
    return x + shift


def _saturate(x, s, rng):
    # Pull colours towards the per-pixel grey value (factor 0 = greyscale).
    factor = (0.7, 0.5, 0.3, 0.15, 0.0)[s - 1]
    grey = x.mean(axis=-1, keepdims=True)
    return grey + (x - grey) * factor


def _pixelate(x, s, rng):
    keep = (0.8, 0.6, 0.5, 0.4, 0.3)[s - 1]  # fraction of resolution kept
    n, h, w, c = x.shape
    small = max(2, int(round(h * keep)))
    zoom_down = ndimage.zoom(x, (1, small / h, small / w, 1), order=0)
    return ndimage.zoom(zoom_down, (1, h / zoom_down.shape[1], w / zoom_down.shape[2], 1), order=0)[
        :, :h, :w
    ]


def _jpeg(x, s, rng):
    from PIL import Image

    quality = (60, 35, 20, 10, 5)[s - 1]
    out = np.empty_like(x)
    for i, img in enumerate(np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) / 255.0
    return out


def _occlusion(x, s, rng):
    side_frac = (0.15, 0.25, 0.35, 0.45, 0.55)[s - 1]  # side of a grey square, × image side
    n, h, w, _ = x.shape
    side = max(1, int(round(h * side_frac)))
    out = x.copy()
    tops = rng.integers(0, h - side + 1, n)
    lefts = rng.integers(0, w - side + 1, n)
    for i in range(n):
        out[i, tops[i] : tops[i] + side, lefts[i] : lefts[i] + side] = 0.5
    return out


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "saturate": _saturate,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
    "occlusion": _occlusion,
}


def corrupt(images_uint8: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt a uint8 batch (N, H, W, 3); returns uint8 of the same shape."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {sorted(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity {severity!r}; allowed: {list(SEVERITIES)}")
    rng = np.random.default_rng([seed, sorted(CORRUPTIONS).index(name), severity])
    x = images_uint8.astype(np.float64) / 255.0
    y = CORRUPTIONS[name](x, severity, rng)
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
