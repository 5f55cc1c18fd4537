"""Readers for real datasets stored locally (no download at run time).

Notation: N examples, S pixels per side after resizing, 3 channels.

A dataset ``name`` split ``split`` is looked for under each root directory, in order
(roots: ``data.data_dir``, ``$E3_DATA_DIR``, ``~/tensorflow_datasets``), in these forms:

1. ``ROOT/NAME/SPLIT.npz``                 arrays ``images`` (N,H,W,3 uint8) and ``labels`` (N,)
2. ``ROOT/NAME/SPLIT/CLASS/*.{png,jpg,…}`` an image folder (class folders sorted by name;
                                            OOD sets may have no class folders)
3. ``ROOT/NAME/SPLIT/dataset_info.json``   a Hugging Face ``datasets`` ``save_to_disk`` dir
                                            (needs the ``datasets`` package)
4. ``ROOT/NAME/VERSION/NAME-SPLIT.array_record*`` a TFDS array_record build (needs
                                            ``tensorflow_datasets`` and ``array_record``)

If none is found, ``DatasetNotFoundError`` names the dataset, the split and every path
that was looked at.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".JPEG")


class DatasetNotFoundError(FileNotFoundError):
    def __init__(self, name: str, split: str, looked: list[str]):
        self.name, self.split, self.looked = name, split, looked
        paths = "\n  ".join(looked)
        super().__init__(f"dataset {name!r} split {split!r} not found; looked at:\n  {paths}\n"
                         f"(set data.data_dir or $E3_DATA_DIR; formats: see e3lib/data/loaders.py)")


def data_roots(data_dir: str | None) -> list[Path]:
    roots = []
    for r in (data_dir, os.environ.get("E3_DATA_DIR"), "~/tensorflow_datasets"):
        if r:
            p = Path(r).expanduser()
            if p not in roots:
                roots.append(p)
    return roots


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) → uint8 (N, size, size, 3), bilinear; unchanged if already S×S."""
    n, h, w, _ = images.shape
    if (h, w) == (size, size):
        return images
    out = ndimage.zoom(images.astype(np.float32), (1, size / h, size / w, 1), order=1)
    return np.clip(np.round(out[:, :size, :size]), 0, 255).astype(np.uint8)


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


def _read_image_folder(path: Path, size: int, need_labels: bool):
    from PIL import Image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if classes:
        files = [(f, c) for c, name in enumerate(classes)
                 for f in sorted((path / name).iterdir()) if f.suffix in IMAGE_SUFFIXES]
    elif need_labels:
        raise ValueError(f"{path}: an image folder needs one sub-folder per class")
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"{path}: no images with suffix in {IMAGE_SUFFIXES}")
    images = np.stack([
        np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))
        for f, _ in files])
    labels = np.asarray([c for _, c in files], np.int32)
    return images, (labels if classes else None)


def _read_hf(path: Path, need_labels: bool):
    try:
        import datasets  # type: ignore
    except ImportError as err:
        raise ImportError(f"{path} is a Hugging Face datasets directory; "
                          f"install the 'datasets' package to read it") from err
    ds = datasets.load_from_disk(str(path))
    image_key = next((k for k in ("image", "img", "images") if k in ds.column_names), None)
    label_key = next((k for k in ("label", "labels", "fine_label") if k in ds.column_names), None)
    if image_key is None or (need_labels and label_key is None):
        raise ValueError(f"{path}: needs an image column and a label column, "
                         f"has {ds.column_names}")
    images = np.stack([np.asarray(im.convert("RGB")) for im in ds[image_key]])
    labels = np.asarray(ds[label_key], np.int32) if label_key else None
    return images, labels


def _read_tfds(name: str, split: str, root: Path, need_labels: bool):
    try:
        import tensorflow_datasets as tfds  # type: ignore
    except ImportError as err:
        raise ImportError(f"{root / name} holds a TFDS array_record build; install "
                          f"'tensorflow_datasets' and 'array_record' to read it") from err
    source = tfds.data_source(name, split=split, data_dir=str(root), download=False)
    rows = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"]) for r in rows])
    labels = np.asarray([r["label"] for r in rows], np.int32) if "label" in rows[0] else None
    return images, labels


def load_split(name: str, split: str, data_dir: str | None, image_size: int,
               need_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Images uint8 (N, S, S, 3) and labels (N,) (or None) of one stored split."""
    looked: list[str] = []
    for root in data_roots(data_dir):
        base = root / name
        npz = base / f"{split}.npz"
        looked.append(str(npz))
        if npz.is_file():
            images, labels = _read_npz(npz, need_labels)
            return resize_images(images, image_size), labels
        folder = base / split
        looked.append(str(folder) + "/")
        if folder.is_dir():
            if (folder / "dataset_info.json").is_file():
                images, labels = _read_hf(folder, need_labels)
                return resize_images(_as_rgb_uint8(images, str(folder)), image_size), labels
            return _read_image_folder(folder, image_size, need_labels)
        pattern = str(base / "*" / f"{name}-{split}.array_record*")
        looked.append(pattern)
        if glob.glob(pattern):
            images, labels = _read_tfds(name, split, root, need_labels)
            return resize_images(_as_rgb_uint8(images, pattern), image_size), labels
    raise DatasetNotFoundError(name, split, looked)
