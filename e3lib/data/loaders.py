"""Readers for real datasets stored locally (no download at run time).

Notation: N examples, H × W stored pixels, S pixels per side after resizing, C = 3 channels.

A dataset ``name`` split ``split`` is looked for under each root directory, in order
(roots: ``data.data_dir``, ``$E3_DATA_DIR``, ``~/tensorflow_datasets``), in these forms,
tried in this order:

1. ``ROOT/NAME/SPLIT.npz``                 arrays ``images`` (N,H,W,3 uint8) and ``labels`` (N,)
2. a TFDS array_record build (needs ``tensorflow_datasets`` and ``array_record``, not
   TensorFlow), the newest version directory ``VERSION`` of
   ``ROOT/NAME/VERSION/NAME-SPLIT.array_record-*``        (no builder config),
   ``ROOT/NAME/SPLIT/VERSION/NAME-test.array_record-*``   (the split is a builder config:
                                                           TFDS ``*_corrupted`` sets), or
   ``ROOT/NAME/CONFIG/VERSION/NAME-SPLIT.array_record-*`` (one builder config, e.g.
                                                           ``imagenet_v2/matched-frequency``)
   with features ``image`` and ``label``;
3. ``ROOT/NAME/SPLIT/dataset_info.json``   a Hugging Face ``datasets`` ``save_to_disk`` dir
                                            (a ``Dataset``, or one split of a ``DatasetDict``
                                            saved to ``ROOT/NAME``; columns ``image``/``img``
                                            and ``label``/``fine_label``; needs ``datasets``)
4. ``ROOT/NAME/SPLIT/CLASS/*.{png,jpg,…}`` an image folder (class folders sorted by name;
                                            OOD sets may have no class folders)

Every format is resized to S×S by the one ``resize_images`` (bilinear, corners aligned);
decoded images (folders, HF, TFDS) may differ in size (ImageNet) and are resized one by
one as they are read.

If none is found, ``DatasetNotFoundError`` names the dataset, the split and every path
that was looked at.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".JPEG")
HF_IMAGE_COLUMNS = ("image", "img", "images")  # first present is used
HF_LABEL_COLUMNS = ("label", "labels", "fine_label")  # CIFAR-100: fine, not coarse


class DatasetNotFoundError(FileNotFoundError):
    def __init__(self, name: str, split: str, looked: list[str]):
        self.name, self.split, self.looked = name, split, looked
        paths = "\n  ".join(looked)
        super().__init__(
            f"dataset {name!r} split {split!r} not found; looked at:\n  {paths}\n"
            f"(set data.data_dir or $E3_DATA_DIR; formats: see e3lib/data/loaders.py)"
        )


def data_roots(data_dir: str | None) -> list[Path]:
    roots = []
    for r in (data_dir, os.environ.get("E3_DATA_DIR"), "~/tensorflow_datasets"):
        if r:
            p = Path(r).expanduser()
            if p not in roots:
                roots.append(p)
    return roots


def linear_resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 matrix of 1-D linear interpolation, corners aligned.

    Output i samples input position p = i (n_in − 1) / (n_out − 1) (first and last pixels
    map onto each other, as ``scipy.ndimage.zoom(order=1)``) with weights 1 − (p − ⌊p⌋) at
    ⌊p⌋ and p − ⌊p⌋ at ⌊p⌋ + 1; each row sums to 1, so no position falls outside the image.
    """
    weights = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        weights[:, 0] = 1.0
        return weights
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lower = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = pos - lower
    weights[np.arange(n_out), lower] += 1.0 - frac
    weights[np.arange(n_out), lower + 1] += frac
    return weights


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) → uint8 (N, S, S, C), bilinear (separable, corners aligned);
    unchanged if already S×S."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    x = images.astype(np.float32).reshape(n, h, w * c)  # (N, H, W·C)
    x = linear_resize_weights(h, size) @ x  # (N, S, W·C)
    x = x.reshape(n, size, w, c).transpose(0, 1, 3, 2)  # (N, S, C, W)
    x = (x @ linear_resize_weights(w, size).T).transpose(0, 1, 3, 2)  # (N, S, S, C)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _as_rgb_uint8(images: np.ndarray, where: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where}: images must be (N, H, W[, 1|3|4]), got {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    images = images[..., :3]
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.max() <= 1.0:
            images = images * 255.0
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    return images


def _read_npz(path: Path, need_labels: bool):
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise ValueError(f"{path}: missing array 'images' (has {sorted(z.files)})")
        if need_labels and "labels" not in z:
            raise ValueError(f"{path}: missing array 'labels' (has {sorted(z.files)})")
        images = _as_rgb_uint8(z["images"], str(path))
        labels = z["labels"].astype(np.int32) if "labels" in z else None
    return images, labels


def _stack_resized(images, size: int, where: str) -> np.ndarray:
    """Decoded images (PIL images or (H, W[, C]) arrays, sizes may differ) → (N, S, S, 3)."""
    out = []
    for image in images:
        if hasattr(image, "convert"):  # a PIL image
            image = image.convert("RGB")
        rgb = _as_rgb_uint8(np.asarray(image)[None], where)  # (1, H, W, 3)
        out.append(resize_images(rgb, size)[0])
    if not out:
        raise ValueError(f"{where}: no examples")
    return np.stack(out)  # (N, S, S, 3)


def _read_image_folder(path: Path, size: int, need_labels: bool):
    from PIL import Image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if classes:
        files = [
            (f, c)
            for c, name in enumerate(classes)
            for f in sorted((path / name).iterdir())
            if f.suffix in IMAGE_SUFFIXES
        ]
    elif need_labels:
        raise ValueError(f"{path}: an image folder needs one sub-folder per class")
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"{path}: no images with suffix in {IMAGE_SUFFIXES}")
    images = _stack_resized((Image.open(f) for f, _ in files), size, str(path))
    labels = np.asarray([c for _, c in files], np.int32)
    return images, (labels if classes else None)


def _read_hf(path: Path, size: int, need_labels: bool):
    try:
        import datasets  # type: ignore
    except ImportError as err:
        raise ImportError(
            f"{path} is a Hugging Face datasets directory; install the "
            f"'datasets' package to read it (pip install datasets)"
        ) from err
    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(
            f"{path}: expected one split saved with Dataset.save_to_disk, got a {type(ds).__name__}"
        )
    image_key = next((k for k in HF_IMAGE_COLUMNS if k in ds.column_names), None)
    label_key = next((k for k in HF_LABEL_COLUMNS if k in ds.column_names), None)
    if image_key is None or (need_labels and label_key is None):
        raise ValueError(
            f"{path}: needs an image column (one of {list(HF_IMAGE_COLUMNS)}) and "
            f"a label column (one of {list(HF_LABEL_COLUMNS)}); "
            f"has {ds.column_names}"
        )
    decoded = (
        image
        for batch in ds.select_columns([image_key]).iter(batch_size=1024)
        for image in batch[image_key]
    )  # decoded 1024 at a time, resized one by one
    images = _stack_resized(decoded, size, str(path))
    labels = np.asarray(ds[label_key], np.int32) if label_key else None
    return images, labels


def _tfds_layouts(name: str, split: str) -> tuple[tuple[str, str], ...]:
    """(glob under ROOT/NAME, TFDS split) of the array_record layouts, in the order tried."""
    return (
        (f"*/{name}-{split}.array_record-*", split),  # NAME/VERSION/
        (f"{split}/*/{name}-test.array_record-*", "test"),  # NAME/SPLIT(config)/VERSION/
        (f"*/*/{name}-{split}.array_record-*", split),
    )  # NAME/CONFIG/VERSION/


def _tfds_build_dir(base: Path, name: str, split: str) -> tuple[Path, str] | None:
    """(version directory, TFDS split) of the newest array_record build of NAME/SPLIT."""
    for pattern, tfds_split in _tfds_layouts(name, split):
        dirs = {Path(f).parent for f in glob.glob(str(base / pattern))}
        if not dirs:
            continue
        configs = {d.parent for d in dirs}
        if len(configs) > 1:
            raise ValueError(
                f"{base}: split {split!r} is in several builder configs "
                f"{sorted(c.name for c in configs)}; keep one"
            )
        return max(dirs, key=lambda d: _version_key(d.name)), tfds_split
    return None


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in name.split("."))
    except ValueError:
        return (-1,)


def _read_tfds(build_dir: Path, split: str, size: int, need_labels: bool):
    try:
        import tensorflow_datasets as tfds  # type: ignore
    except ImportError as err:
        raise ImportError(
            f"{build_dir} is a TFDS array_record build; install "
            f"'tensorflow_datasets' and 'array_record' to read it (pip install "
            f"tensorflow_datasets array_record; TensorFlow is not needed)"
        ) from err
    builder = tfds.builder_from_directory(str(build_dir))
    source = builder.as_data_source(split=split)
    where = f"{build_dir} split {split!r}"
    keys = set(builder.info.features.keys())
    if "image" not in keys or (need_labels and "label" not in keys):
        raise ValueError(f"{where}: needs features 'image' and 'label', has {sorted(keys)}")
    images, labels = [], []
    for start in range(0, len(source), 1024):
        rows = source.__getitems__(range(start, min(start + 1024, len(source))))
        images.extend(_stack_resized([r["image"] for r in rows], size, where))
        labels.extend(r["label"] for r in rows if "label" in r)
    if not images:
        raise ValueError(f"{where}: no examples")
    return np.stack(images), (np.asarray(labels, np.int32) if "label" in keys else None)


def load_split(
    name: str, split: str, data_dir: str | None, image_size: int, need_labels: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images uint8 (N, S, S, 3) and labels (N,) (or None) of one stored split."""
    looked: list[str] = []
    for root in data_roots(data_dir):
        base = root / name
        npz = base / f"{split}.npz"
        looked.append(str(npz))
        if npz.is_file():
            images, labels = _read_npz(npz, need_labels)
            return resize_images(images, image_size), labels
        looked.extend(str(base / pattern) for pattern, _ in _tfds_layouts(name, split))
        build = _tfds_build_dir(base, name, split)
        if build is not None:
            return _read_tfds(build[0], build[1], image_size, need_labels)
        folder = base / split
        looked.append(str(folder) + "/")
        if folder.is_dir():
            if (folder / "dataset_info.json").is_file():
                return _read_hf(folder, image_size, need_labels)
            return _read_image_folder(folder, image_size, need_labels)
    raise DatasetNotFoundError(name, split, looked)
