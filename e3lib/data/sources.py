"""Record sources of the input stream: one stored split, read example by example (``len``
and ``source[i]`` -> {"image": encoded bytes or an array, "label": int}); the pipelines of
``e3lib.data.stream`` read any of them.

``open_source(name, split, data_dir)`` finds, in each root of ``e3lib.data.loaders``:
``NAME/SPLIT.npz`` (in memory: npz cannot be read lazily), ``NAME/SPLIT.array_record[-*]``
(records of ``encode_record``), a TFDS array_record build (layouts of
``e3lib.data.loaders``), a Hugging Face ``save_to_disk`` dir, an image folder.
``split_train_val`` and ``Subset`` carve the validation split off a stored train split.
"""

from __future__ import annotations

import glob
import io
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from e3lib.data.loaders import (
    IMAGE_SUFFIXES,
    DatasetNotFoundError,
    _tfds_build_dir,
    _tfds_layouts,
    data_roots,
)

RECORD_MAGIC = b"E3R1"


def encode_record(image: np.ndarray | bytes, label: int, fmt: str = "PNG") -> bytes:
    """One array_record record: magic, int32 label (little-endian), encoded image."""
    if not isinstance(image, (bytes, bytearray)):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buf, format=fmt, quality=90)
        image = buf.getvalue()
    return RECORD_MAGIC + struct.pack("<i", int(label)) + bytes(image)


def decode_record(record: bytes) -> dict:
    if record[:4] != RECORD_MAGIC:
        raise ValueError(f"not an e3 record (magic {record[:4]!r}, expected {RECORD_MAGIC!r})")
    return {"image": record[8:], "label": struct.unpack("<i", record[4:8])[0]}


def write_array_record(path: str | Path, examples, fmt: str = "PNG") -> int:
    """Write (image, label) pairs to one array_record file; returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = ArrayRecordWriter(str(path), "group_size:1")
    n = 0
    for image, label in examples:
        writer.write(encode_record(image, label, fmt))
        n += 1
    writer.close()
    return n


class ArraySource:
    """In-memory arrays (the embedded demo, .npz files) behind the source interface."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "label": -1 if self.labels is None else int(self.labels[i]),
        }


class RecordSource:
    """array_record files of ``encode_record`` records (grain's ArrayRecordDataSource)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return decode_record(self.source[i])


_TFDS_OPEN_LOCK = threading.Lock()  # per process: not part of any pickled source


class TfdsSource:
    """A TFDS array_record build (no TensorFlow), features ``image`` and ``label``."""

    def __init__(self, build_dir: str | Path, split: str):
        self.build_dir, self.split = str(build_dir), split
        self._source = None

    def _open(self):
        # One thread opens (and imports tensorflow_datasets); grain's reader threads wait.
        # Without the lock, threads of a fresh worker process import it concurrently and
        # can deadlock in Python 3.11 (the import lock against etils' lazy-module
        # cached_property lock).
        if self._source is None:
            with _TFDS_OPEN_LOCK:
                if self._source is None:
                    import tensorflow_datasets as tfds

                    builder = tfds.builder_from_directory(self.build_dir)
                    self._source = builder.as_data_source(split=self.split)
        return self._source

    def __getstate__(self):
        return {"build_dir": self.build_dir, "split": self.split, "_source": None}

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, i: int) -> dict:
        row = self._open()[i]
        return {"image": row["image"], "label": int(row.get("label", -1))}


class FolderSource:
    """An image folder (class sub-folders sorted by name, or unlabelled images)."""

    def __init__(self, path: Path):
        classes = sorted(p.name for p in path.iterdir() if p.is_dir())
        if classes:
            self.files = [
                (str(f), c)
                for c, name in enumerate(classes)
                for f in sorted((path / name).iterdir())
                if f.suffix in IMAGE_SUFFIXES
            ]
        else:
            self.files = [
                (str(f), -1) for f in sorted(path.iterdir()) if f.suffix in IMAGE_SUFFIXES
            ]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path, label = self.files[i]
        return {"image": Path(path).read_bytes(), "label": label}


class Subset:
    """Examples ``indices`` of a source (e.g. the train / validation split of train)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[int(self.indices[i])]


def open_source(name: str, split: str, data_dir: str | None):
    """A lazily read source of one stored split (formats: module docstring)."""
    looked: list[str] = []
    for root in data_roots(data_dir):
        base = root / name
        npz = base / f"{split}.npz"
        looked.append(str(npz))
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as z:
                return ArraySource(z["images"], z["labels"] if "labels" in z else None)
        pattern = str(base / f"{split}.array_record*")
        looked.append(pattern)
        records = sorted(glob.glob(pattern))
        if records:
            return RecordSource(records)
        looked.extend(str(base / p) for p, _ in _tfds_layouts(name, split))
        build = _tfds_build_dir(base, name, split)
        if build is not None:
            return TfdsSource(*build)
        folder = base / split
        looked.append(str(folder) + "/")
        if folder.is_dir() and not (folder / "dataset_info.json").is_file():
            return FolderSource(folder)
    raise DatasetNotFoundError(name, split, looked)


def split_train_val(num_examples: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a training split: the same split as
    ``e3lib.data._real_suite`` (a permutation from seed 0; the first ⌈f·N⌋ are val)."""
    perm = np.random.default_rng(0).permutation(num_examples)
    n_val = max(1, int(round(val_fraction * num_examples)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
