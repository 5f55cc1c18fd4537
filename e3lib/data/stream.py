"""Streaming input through grain: examples are read and preprocessed one by one, so no
split is ever held in memory.

Notation: N examples in the split, B global batch, P processes, p = this process
(``jax.process_index()`` by default), b = B/P local batch, g global stream position.

Order. Training visits the infinite stream g = 0, 1, 2, …: epoch e = ⌊g/N⌋ is a
permutation of the split drawn from (seed, e) by grain's global ``shuffle`` (a lazy index
shuffle, nothing materialised). Process p reads positions g ≡ p (mod P), b at a time, so
global batch t is positions [t·B, (t+1)·B) whatever P is, each epoch's examples are split
into disjoint per-process shards that cover it, and example g's augmentation is drawn
from ``np.random.default_rng([seed, g])`` — identical for any P and worker count.

State. The pipeline is a grain ``MapDataset`` turned into an iterator; the iterator's
state (``Stream.get_state``, a small JSON-able dict: the next batch index, per worker when
decoding runs in worker processes) is saved with the training checkpoint and restored
with ``Stream.set_state``; a resumed run continues at the exact next example.

Evaluation reads positions 0 … ⌈N/B⌉·B − 1 in order, process p again every P-th one;
positions ≥ N are padding (``valid`` False), so every process runs the same number of
batches of the same shape.

Sources: ``open_source(name, split, data_dir)`` finds, in each root of
``e3lib.data.loaders``: ``NAME/SPLIT.npz`` (in memory: npz cannot be read lazily),
``NAME/SPLIT.array_record[-*]`` (records of ``encode_record``), a TFDS array_record build
(layouts of ``e3lib.data.loaders``), a Hugging Face ``save_to_disk`` dir, an image folder.
"""

from __future__ import annotations

import glob
import io
import json
import struct
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
from e3lib.data.preprocess import Preprocess

RECORD_MAGIC = b"E3R1"


# ---------------------------------------------------------------------------- sources

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
        return {"image": self.images[i],
                "label": -1 if self.labels is None else int(self.labels[i])}


class RecordSource:
    """array_record files of ``encode_record`` records (grain's ArrayRecordDataSource)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return decode_record(self.source[i])


class TfdsSource:
    """A TFDS array_record build (no TensorFlow), features ``image`` and ``label``."""

    def __init__(self, build_dir: str | Path, split: str):
        self.build_dir, self.split = str(build_dir), split
        self._source = None

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            self._source = tfds.builder_from_directory(self.build_dir).as_data_source(
                split=self.split)
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
            self.files = [(str(f), c) for c, name in enumerate(classes)
                          for f in sorted((path / name).iterdir()) if f.suffix in IMAGE_SUFFIXES]
        else:
            self.files = [(str(f), -1) for f in sorted(path.iterdir())
                          if f.suffix in IMAGE_SUFFIXES]

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


# ---------------------------------------------------------------------------- pipelines

class _Example:
    """(g, example id) → preprocessed example; picklable for grain worker processes."""

    def __init__(self, source, pp: Preprocess, seed: int, size: int | None = None):
        self.source, self.pp, self.seed, self.size = source, pp, seed, size
        self._pad = None

    def __call__(self, item: tuple[int, int]) -> dict:
        g, ex = item
        if ex < 0:  # evaluation padding: zeros of the shape of a real example
            if self._pad is None:
                self._pad = np.zeros_like(self.pp(self.source[0]["image"],
                                                  np.random.default_rng([self.seed, 0])))
            return {"image": self._pad, "label": np.int32(-1), "index": np.int64(-1),
                    "valid": False}
        record = self.source[ex]
        image = self.pp(record["image"], np.random.default_rng([self.seed, g]))
        return {"image": image, "label": np.int32(record["label"]), "index": np.int64(ex),
                "valid": True}


def _with_position(g: int, example: int) -> tuple[int, int]:
    return g, int(example)


class _EvalPosition:
    def __init__(self, n: int):
        self.n = n

    def __call__(self, g: int, _) -> tuple[int, int]:
        return g, (g if g < self.n else -1)


def _local_batch(batch_size: int, process_count: int) -> int:
    if batch_size % process_count:
        raise ValueError(f"global batch {batch_size} is not a multiple of the "
                         f"{process_count} processes")
    return batch_size // process_count


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        return jax.process_index(), jax.process_count()
    return process_index, process_count


def train_dataset(source, pp: Preprocess | str, batch_size: int, seed: int,
                  process_index: int | None = None, process_count: int | None = None,
                  shuffle: bool = True) -> grain.MapDataset:
    """Infinite MapDataset of this process's training batches (dicts of arrays:
    ``image`` (b, S, S, 3), ``label`` (b,), ``index`` (b,) example ids, ``valid``)."""
    p, n_proc = _process(process_index, process_count)
    pp = Preprocess(pp) if isinstance(pp, str) else pp
    order = grain.MapDataset.range(len(source))
    if shuffle:
        order = order.shuffle(seed=seed)
    ds = order.repeat(None).map_with_index(_with_position)             # (g, example id)
    ds = ds[p::n_proc].map(_Example(source, pp, seed))
    return ds.batch(_local_batch(batch_size, n_proc), drop_remainder=True)


def eval_dataset(source, pp: Preprocess | str, batch_size: int,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> grain.MapDataset:
    """⌈N/B⌉ batches of this process's share of the split, in order, padded."""
    p, n_proc = _process(process_index, process_count)
    pp = Preprocess(pp, "data.pp_eval") if isinstance(pp, str) else pp
    n = len(source)
    total = -(-n // batch_size) * batch_size
    ds = grain.MapDataset.range(total).map_with_index(_EvalPosition(n))
    ds = ds[p::n_proc].map(_Example(source, pp, 0))
    return ds.batch(_local_batch(batch_size, n_proc), drop_remainder=False)


class Stream:
    """Iterator over a dataset of batches, with decoding in ``workers`` processes
    (0: threads of this process) and ``prefetch`` batches read ahead."""

    def __init__(self, dataset: grain.MapDataset, workers: int = 0, threads: int = 4,
                 prefetch: int = 4):
        it_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                          prefetch_buffer_size=prefetch))
        if workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
        self._iter = iter(it_ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._iter)

    def get_state(self) -> dict:
        return self._iter.get_state()

    def set_state(self, state: dict) -> None:
        self._iter.set_state(state)

    def state_json(self) -> str:
        return json.dumps(self.get_state(), sort_keys=True)

    def load_state_json(self, text: str) -> None:
        self.set_state(json.loads(text))

    def close(self) -> None:
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()


def split_train_val(num_examples: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a training split: the same split as
    ``e3lib.data._real_suite`` (a permutation from seed 0; the first ⌈f·N⌋ are val)."""
    perm = np.random.default_rng(0).permutation(num_examples)
    n_val = max(1, int(round(val_fraction * num_examples)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])



class StepBatches:
    """The training loop's view of a stream: ``batch(step)`` → (images (B, S, S, 3) float32,
    labels (B,)), with a leading S axis for packed runs (one stream per seed).

    Sequential steps read the next batch of each stream; any other step seeks there (the
    pipeline is a MapDataset: its iterator state is a batch index). ``state_at(step)`` is
    the iterator states (one per seed) just before batch ``step`` was read: what a
    checkpoint of step ``step`` stores; ``restore(states, step)`` continues from them.
    """

    def __init__(self, source, pp: str, batch_size: int, seeds: Sequence[int],
                 workers: int = 0, process_index: int | None = None,
                 process_count: int | None = None):
        self.datasets = [train_dataset(source, pp, batch_size, s, process_index, process_count)
                         for s in seeds]
        self.workers = workers
        self.streams = [Stream(d, workers) for d in self.datasets]
        self.next_step = 0
        self._before: dict[int, list[dict]] = {}

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if step != self.next_step:
            self.set_state([_seek_state(s.get_state(), step, self.workers)
                            for s in self.streams])
        self._before = {k: v for k, v in self._before.items() if k >= step - 2}
        self._before[step] = self.get_state()
        batches = [next(s) for s in self.streams]
        self.next_step = step + 1
        images = np.stack([b["image"] for b in batches])                  # (S, b, H, W, 3)
        labels = np.stack([b["label"] for b in batches])                  # (S, b)
        return (images, labels) if len(batches) > 1 else (images[0], labels[0])

    def state_at(self, step: int) -> list[dict]:
        if step == self.next_step and step not in self._before:
            return self.get_state()
        if step not in self._before:
            raise KeyError(f"no iterator state recorded before step {step} "
                           f"(recorded: {sorted(self._before)})")
        return self._before[step]

    def restore(self, states: Sequence[dict], step: int) -> None:
        if len(states) != len(self.streams):
            raise ValueError(f"{len(states)} iterator states for {len(self.streams)} streams")
        self.set_state(states)
        self.next_step = step

    def get_state(self) -> list[dict]:
        return [s.get_state() for s in self.streams]

    def set_state(self, states: Sequence[dict]) -> None:
        for s, st in zip(self.streams, states):
            s.set_state(st)

    def close(self) -> None:
        for s in self.streams:
            s.close()


def _seek_state(template: dict, step: int, workers: int) -> dict:
    """The iterator state whose next batch is ``step``: ``{"next_index": step}`` in
    process; with k worker processes (grain's ``mp_prefetch``: worker i reads batches
    i, i + k, …) the next worker is step mod k and worker i has read ⌈(step − i)/k⌉."""
    if workers <= 0:
        return {"next_index": step}
    state = json.loads(json.dumps(template))
    k = len(state["iterators_in_use_states"])
    state["next_index_in_cycle"] = step % k
    for i, worker in enumerate(state["iterators_in_use_states"]):
        worker["next_index"] = max(0, -(-(step - i) // k))
    return state
