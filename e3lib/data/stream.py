"""Streaming input through grain: examples are read and preprocessed one by one, so no
split is ever held in memory.

Notation: N examples in the split, B global batch, P processes, p = this process
(``jax.process_index()`` by default), b = B/P local batch, g global stream position.

Order. Training visits the infinite stream g = 0, 1, 2, …: epoch e = ⌊g/N⌋ is a
permutation of the split drawn from (seed, e) by grain's global ``shuffle`` (a lazy index
shuffle, nothing materialised). Global batch t is positions [t·B, (t+1)·B) whatever P is;
process p reads its contiguous block [t·B + p·b, t·B + (p+1)·b) of it — the rows its
devices hold (``Placement.local_rows``), so the batch the model sees, and with it every
routing group of consecutive images, is the same for any P. Each epoch's examples are
split into disjoint per-process shards that cover it, and example g's augmentation is
drawn from ``np.random.default_rng([seed, g])`` — identical for any P and worker count.

State. The pipeline is a grain ``MapDataset`` turned into an iterator; the stream's
state (``Stream.get_state``, ``{"next_index": i}``, the next batch index whatever the
number of worker processes) is saved with the training checkpoint and restored with
``Stream.set_state``, which reopens the iterator at batch i: a resumed run continues at
the exact next example.

Evaluation reads positions 0 … ⌈N/B⌉·B − 1 in order, process p again its block of b of
every batch; positions ≥ N are padding (``valid`` False), so every process runs the same
number of batches of the same shape and every example is read by exactly one process.

Sources (``open_source``, the record formats, ``split_train_val``): ``e3lib.data.sources``,
re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grain
import numpy as np

from e3lib.data.preprocess import Preprocess
from e3lib.data.sources import (  # re-exported: the sources' former home
    RECORD_MAGIC,
    ArraySource,
    FolderSource,
    RecordSource,
    Subset,
    TfdsSource,
    decode_record,
    encode_record,
    open_source,
    split_train_val,
    write_array_record,
)

__all__ = [
    "RECORD_MAGIC",
    "ArraySource",
    "FolderSource",
    "RecordSource",
    "Subset",
    "TfdsSource",
    "decode_record",
    "encode_record",
    "open_source",
    "split_train_val",
    "write_array_record",
    "Stream",
    "StepBatches",
    "eval_dataset",
    "train_dataset",
]


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
                self._pad = np.zeros_like(
                    self.pp(self.source[0]["image"], np.random.default_rng([self.seed, 0]))
                )
            return {
                "image": self._pad,
                "label": np.int32(-1),
                "index": np.int64(-1),
                "valid": False,
            }
        record = self.source[ex]
        image = self.pp(record["image"], np.random.default_rng([self.seed, g]))
        return {
            "image": image,
            "label": np.int32(record["label"]),
            "index": np.int64(ex),
            "valid": True,
        }


def _with_position(g: int, example: int) -> tuple[int, int]:
    return g, int(example)


class _EvalPosition:
    def __init__(self, n: int):
        self.n = n

    def __call__(self, g: int, _) -> tuple[int, int]:
        return g, (g if g < self.n else -1)


def _local_batch(batch_size: int, process_count: int) -> int:
    if batch_size % process_count:
        raise ValueError(
            f"global batch {batch_size} is not a multiple of the {process_count} processes"
        )
    return batch_size // process_count


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        return jax.process_index(), jax.process_count()
    return process_index, process_count


def train_dataset(
    source,
    pp: Preprocess | str,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool = True,
) -> grain.MapDataset:
    """Infinite MapDataset of this process's training batches (dicts of arrays:
    ``image`` (b, S, S, 3), ``label`` (b,), ``index`` (b,) example ids, ``valid``)."""
    p, n_proc = _process(process_index, process_count)
    pp = Preprocess(pp) if isinstance(pp, str) else pp
    order = grain.MapDataset.range(len(source))
    if shuffle:
        order = order.shuffle(seed=seed)
    ds = order.repeat(None).map_with_index(_with_position)  # (g, example id)
    ds = ds.map(_Example(source, pp, seed))
    # blocks of b positions; block t·P + p is process p's part of global batch t
    return ds.batch(_local_batch(batch_size, n_proc), drop_remainder=True)[p::n_proc]


def eval_dataset(
    source,
    pp: Preprocess | str,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """⌈N/B⌉ batches of this process's share of the split, in order, padded."""
    p, n_proc = _process(process_index, process_count)
    pp = Preprocess(pp, "data.pp_eval") if isinstance(pp, str) else pp
    n = len(source)
    total = -(-n // batch_size) * batch_size
    ds = grain.MapDataset.range(total).map_with_index(_EvalPosition(n))
    ds = ds.map(_Example(source, pp, 0))
    return ds.batch(_local_batch(batch_size, n_proc), drop_remainder=False)[p::n_proc]


class Stream:
    """Iterator over a dataset of batches, with decoding in ``workers`` processes
    (0: threads of this process) and ``prefetch`` batches read ahead.

    Its state is the index of the next batch, ``{"next_index": i}``: the dataset is a
    MapDataset, so batch i is a pure function of i. ``set_state`` does not ask grain's
    iterator (or its worker processes) to seek: it closes the iterator and builds a new
    one over ``dataset[i:]``, started lazily on the next ``next``, so a restore or a seek
    never has to coordinate with workers that are already reading ahead.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        workers: int = 0,
        threads: int = 4,
        prefetch: int = 4,
    ):
        self.dataset, self.workers = dataset, workers
        self.threads, self.prefetch = threads, prefetch
        self._next = 0  # index of the next batch handed out
        self._iter = None  # built on first use, over dataset[self._next:]

    def _open(self):
        ds = self.dataset[self._next :] if self._next else self.dataset
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=self.prefetch)
        )
        if self.workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        return iter(it_ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = self._open()
        item = next(self._iter)
        self._next += 1
        return item

    def get_state(self) -> dict:
        return {"next_index": self._next}

    def set_state(self, state: dict) -> None:
        index = state_index(state)
        if index == self._next and self._iter is not None:
            return
        self.close()
        self._next = index

    def state_json(self) -> str:
        return json.dumps(self.get_state(), sort_keys=True)

    def load_state_json(self, text: str) -> None:
        self.set_state(json.loads(text))

    def close(self) -> None:
        it, self._iter = self._iter, None
        close = getattr(it, "close", None)
        if close is not None:
            close()


def state_index(state: dict) -> int:
    """The next batch index of a saved stream state: ``{"next_index": i}``, or the state of
    grain's worker pipeline that checkpoints written before held (k workers, worker j
    having read batches j, j + k, …: the next batch is the sum of the workers' counts)."""
    if "next_index" in state:
        return int(state["next_index"])
    workers = state.get("iterators_in_use_states")
    if workers is None:
        raise ValueError(f"not a stream state (no 'next_index'): {sorted(state)}")
    return sum(int(w["next_index"]) for w in workers if w is not None)


class StepBatches:
    """The training loop's view of a stream: ``batch(step)`` → (images (B, S, S, 3) float32,
    labels (B,)), with a leading S axis for packed runs (one stream per seed).

    Sequential steps read the next batch of each stream; any other step seeks there (the
    pipeline is a MapDataset: its iterator state is a batch index). ``state_at(step)`` is
    the iterator states (one per seed) just before batch ``step`` was read: what a
    checkpoint of step ``step`` stores; ``restore(states, step)`` continues from them.
    """

    def __init__(
        self,
        source,
        pp: str,
        batch_size: int,
        seeds: Sequence[int],
        workers: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.source, self.pp = source, pp
        self.datasets = [
            train_dataset(source, pp, batch_size, s, process_index, process_count) for s in seeds
        ]
        self.streams = [Stream(d, workers) for d in self.datasets]
        self.next_step = 0
        self._before: dict[int, list[dict]] = {}

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if step != self.next_step:
            self.set_state([{"next_index": step}] * len(self.streams))
        self._before = {k: v for k, v in self._before.items() if k >= step - 2}
        self._before[step] = self.get_state()
        batches = [next(s) for s in self.streams]
        self.next_step = step + 1
        images = np.stack([b["image"] for b in batches])  # (S, b, H, W, 3)
        labels = np.stack([b["label"] for b in batches])  # (S, b)
        return (images, labels) if len(batches) > 1 else (images[0], labels[0])

    def state_at(self, step: int) -> list[dict]:
        if step == self.next_step and step not in self._before:
            return self.get_state()
        if step not in self._before:
            raise KeyError(
                f"no iterator state recorded before step {step} (recorded: {sorted(self._before)})"
            )
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
