"""The embedded default dataset ``demo``: no network, built only from data shipped
inside installed packages (scikit-learn's 8×8 digits, scikit-image's sample images)
by a deterministic recipe, with the structure of the paper at small scale.

Notation: N images, S = ``image_size`` (pixels per side), 3 channels, C classes.

Recipe (all draws from fixed seeds, so every machine builds identical arrays):

- The 1797 digits are split once into two halves by a fixed permutation.
- **upstream** (pretraining, C=20): half A, each digit shown upright *and* rotated by
  90°, label = digit + 10·rotated, random foreground/background colours per image. With
  R renderings (``upstream.renderings``), R − 1 further copies of each of those images,
  each with new random colours and a random affine jitter (rotation ±15°, scale 0.9–1.1,
  shift ±S/8 pixels): N = 1796·R images, a pretraining set that is not memorised in the
  epochs of a small upstream (rendering 0 is the plain set, bit for bit).
- **upstream held-out** (the pretraining's held-out loss, never trained on): half B's
  digits rendered the same way (upright and rotated, random colours), N = 1798.
- **downstream** (fine-tuning, C=8): half B, digits 0–7 only, white-on-blue colours;
  train / validation / test = 60% / 10% / 30% of those images.
- **corrupted**: the downstream test set under 10 corruptions × 5 severities
  (``e3lib.data.corruptions``).
- **near-OOD**: half B digits 8 and 9 in the downstream colours (held-out classes of the
  same domain, like CIFAR-10 vs CIFAR-100).
- **far-OOD**: crops of scikit-image photographs (camera, astronaut, coffee, …).
- **few-shot** tasks: ``rotation`` (which of 4 rotations, digits of half A), ``inverted``
  (10 digits, inverted contrast, half B) and ``textures`` (5 texture images, random crops).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from e3lib.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from e3lib.data.suite import DataSuite, FewShotTask, Labeled

DOWNSTREAM_CLASSES = 8  # digits 0..7; 8 and 9 are the near-OOD set
UPSTREAM_CLASSES = 20  # 10 digits × {upright, rotated 90°}
TEXTURE_SOURCES = ("brick", "grass", "gravel", "cell", "immunohistochemistry")
PHOTO_SOURCES = (
    "camera",
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "coins",
    "clock",
)
FEWSHOT_TEST_PER_CLASS = 20
FEWSHOT_POOL_PER_CLASS = 30  # ≥ 25, the largest shot count of the paper


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits, (1797, 8, 8) intensities in [0, 1] and labels.

    Read from the CSV file scikit-learn ships (what ``sklearn.datasets.load_digits`` reads,
    with the same parsing) without importing scikit-learn, whose import costs seconds in
    every job; ``tests/test_data.py`` pins the arrays equal to ``load_digits``."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ImportError("the embedded data needs scikit-learn's digits: pip install scikit-learn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(path, delimiter=",")  # (1797, 65): 64 pixels, then the label
    images = data[:, :-1].reshape(-1, 8, 8)  # (1797, 64) → (1797, 8, 8)
    return (images / 16.0).astype(np.float64), data[:, -1].astype(np.int32)


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) → (N, size, size), bilinear."""
    n, h, w = gray.shape
    return np.clip(ndimage.zoom(gray, (1, size / h, size / w), order=1), 0.0, 1.0)


def _colourise(gray: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(N, S, S) intensities in [0,1], colours (N, 3) → uint8 (N, S, S, 3)."""
    rgb = bg[:, None, None, :] + gray[..., None] * (fg - bg)[:, None, None, :]
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _fixed_colours(n: int, fg, bg) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(np.asarray(fg, float), (n, 1)), np.tile(np.asarray(bg, float), (n, 1))


_DOWN_FG, _DOWN_BG = (1.0, 1.0, 0.9), (0.05, 0.1, 0.45)


def _crops(sources, per_source: int, size: int, rng: np.random.Generator):
    """Random square crops (side 24–64 px) of scikit-image sample images, resized."""
    import skimage.data

    images, labels = [], []
    for label, name in enumerate(sources):
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        img = img[..., :3] / 255.0
        h, w, _ = img.shape
        for _ in range(per_source):
            side = int(rng.integers(24, 65))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = img[top : top + side, left : left + side]  # (side, side, 3)
            crop = ndimage.zoom(crop, (size / side, size / side, 1), order=1)[:size, :size]
            images.append(np.clip(np.round(crop * 255.0), 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)


def _split_by_class(labels: np.ndarray, fractions, rng) -> list[np.ndarray]:
    """Stratified split of indices into len(fractions) parts."""
    parts = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        for p, (lo, hi) in enumerate(zip(np.r_[0, bounds[:-1]], bounds)):
            parts[p].extend(idx[lo:hi])
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(1234).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def _random_colours(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Light foreground, dark background: (n, 3) each."""
    fg = rng.uniform(0.55, 1.0, (n, 3))
    return fg, rng.uniform(0.0, 0.35, (n, 3))


def _jitter(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, S, S) → (N, S, S): each image rotated by ±15°, scaled by 0.9–1.1 and shifted by
    ±S/8 pixels about its centre (bilinear, zero fill)."""
    n, size, _ = gray.shape
    angle = np.deg2rad(rng.uniform(-15.0, 15.0, n))
    scale = rng.uniform(0.9, 1.1, n)
    shift = rng.uniform(-size / 8, size / 8, (n, 2))
    centre = (size - 1) / 2.0
    out = np.empty_like(gray)
    for i in range(n):
        c, s = np.cos(angle[i]) / scale[i], np.sin(angle[i]) / scale[i]
        inverse = np.array([[c, -s], [s, c]])  # output pixel → input pixel
        offset = centre - inverse @ (centre + shift[i])
        out[i] = ndimage.affine_transform(gray[i], inverse, offset, order=1, cval=0.0)
    return np.clip(out, 0.0, 1.0)


def _upstream_gray(idx: np.ndarray, gray8, digit, image_size: int):
    """Digits ``idx`` upright and rotated by 90°: (2N, S, S) intensities, labels (2N,)."""
    g = gray8[idx]
    rotated = np.rot90(g, k=1, axes=(1, 2))  # (N, 8, 8)
    gray = _resize(np.concatenate([g, rotated]), image_size)  # (2N, S, S)
    return gray, np.concatenate([digit[idx], digit[idx] + 10])


@functools.lru_cache(maxsize=4)
def upstream_set(image_size: int = 16, renderings: int = 1) -> tuple[Labeled, int]:
    """The upstream pretraining set (``renderings`` copies, see the module docstring) and
    its number of classes (20)."""
    gray8, digit = _digits()
    half_a, _ = _halves(len(digit))
    gray, labels = _upstream_gray(half_a, gray8, digit, image_size)
    images = [_colourise(gray, *_random_colours(len(gray), np.random.default_rng(2024)))]
    for r in range(1, renderings):
        rng = np.random.default_rng((2024, r))
        images.append(_colourise(_jitter(gray, rng), *_random_colours(len(gray), rng)))
    # R × (2N, S, S, 3) → (R·2N, S, S, 3), rendering-major
    return Labeled(np.concatenate(images), np.tile(labels, renderings)), UPSTREAM_CLASSES


@functools.lru_cache(maxsize=4)
def upstream_heldout(image_size: int = 16) -> Labeled:
    """The upstream task on digits no upstream trains on: half B's digits, upright and
    rotated by 90° (label = digit + 10·rotated), random colours of their own seed. The
    pretraining's held-out loss (e3lib.curves) is measured on it; nothing trains on it."""
    gray8, digit = _digits()
    _, half_b = _halves(len(digit))
    gray, labels = _upstream_gray(half_b, gray8, digit, image_size)
    colours = _random_colours(len(gray), np.random.default_rng(2025))
    return Labeled(_colourise(gray, *colours), labels)


@functools.lru_cache(maxsize=4)
def demo_suite(image_size: int = 16, corrupted: bool = True) -> DataSuite:
    """The downstream suite of ``demo`` (see the module docstring)."""
    gray8, digit = _digits()
    half_a, half_b = _halves(len(digit))
    down = half_b[digit[half_b] < DOWNSTREAM_CLASSES]
    near = half_b[digit[half_b] >= DOWNSTREAM_CLASSES]

    def downstream_images(idx):
        fg, bg = _fixed_colours(len(idx), _DOWN_FG, _DOWN_BG)
        return _colourise(_resize(gray8[idx], image_size), fg, bg)

    rng = np.random.default_rng(7)
    tr, va, te = _split_by_class(digit[down], (0.6, 0.1, 0.3), rng)
    images, labels = downstream_images(down), digit[down]
    train, val, test = (Labeled(images[i], labels[i]) for i in (tr, va, te))

    corrupted_sets = {}
    if corrupted:
        corrupted_sets = {
            name: {
                s: Labeled(corrupt(test.images, name, s, seed=0), test.labels) for s in SEVERITIES
            }
            for name in CORRUPTIONS
        }

    ood_near = downstream_images(near)
    ood_far, _ = _crops(PHOTO_SOURCES, 25, image_size, np.random.default_rng(11))

    return DataSuite(
        name="demo",
        num_classes=DOWNSTREAM_CLASSES,
        train=train,
        val=val,
        test=test,
        corrupted=corrupted_sets,
        ood_near=ood_near,
        ood_far=ood_far,
        fewshot=_fewshot_tasks(gray8, digit, half_a, half_b, image_size),
    )


def _take_per_class(labels, per_class, rng):
    pool, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        pool.extend(idx[:per_class])
        test.extend(idx[per_class : per_class + FEWSHOT_TEST_PER_CLASS])
    return np.sort(np.asarray(pool)), np.sort(np.asarray(test))


def _fewshot_tasks(gray8, digit, half_a, half_b, size) -> dict[str, FewShotTask]:
    tasks = {}
    rng = np.random.default_rng(99)

    # rotation: which of 0/90/180/270 degrees a digit (half A) was rotated by.
    k = rng.integers(0, 4, len(half_a))
    gray = np.stack([np.rot90(g, int(r)) for g, r in zip(gray8[half_a], k)])  # (N, 8, 8)
    fg, bg = _fixed_colours(len(gray), (0.9, 0.9, 0.9), (0.2, 0.2, 0.2))
    imgs = _colourise(_resize(gray, size), fg, bg)
    pool, test = _take_per_class(k, FEWSHOT_POOL_PER_CLASS, rng)
    tasks["rotation"] = FewShotTask(Labeled(imgs[pool], k[pool]), Labeled(imgs[test], k[test]), 4)

    # inverted: the 10 digits of half B, dark digit on a light background.
    fg, bg = _fixed_colours(len(half_b), (0.1, 0.1, 0.1), (0.95, 0.85, 0.6))
    imgs = _colourise(_resize(gray8[half_b], size), fg, bg)
    lab = digit[half_b]
    pool, test = _take_per_class(lab, FEWSHOT_POOL_PER_CLASS, rng)
    tasks["inverted"] = FewShotTask(
        Labeled(imgs[pool], lab[pool]), Labeled(imgs[test], lab[test]), 10
    )

    # textures: which scikit-image texture a random crop comes from.
    per = FEWSHOT_POOL_PER_CLASS + FEWSHOT_TEST_PER_CLASS
    imgs, lab = _crops(TEXTURE_SOURCES, per, size, np.random.default_rng(5))
    pool, test = _take_per_class(lab, FEWSHOT_POOL_PER_CLASS, rng)
    tasks["textures"] = FewShotTask(
        Labeled(imgs[pool], lab[pool]), Labeled(imgs[test], lab[test]), len(TEXTURE_SOURCES)
    )
    return tasks
