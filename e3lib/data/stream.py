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

State. The pipeline is a grain ``MapDataset`` turned into an iterator; the iterator's
state (``Stream.get_state``, a small JSON-able dict: the next batch index, per worker when
decoding runs in worker processes) is saved with the training checkpoint and restored
with ``Stream.set_state``; a resumed run continues at the exact next example.

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
    (0: threads of this process) and ``prefetch`` batches read ahead."""

    def __init__(
        self, dataset: grain.MapDataset, workers: int = 0, threads: int = 4, prefetch: int = 4
    ):
        it_ds = dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
        )
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
        self.workers = workers
        self.streams = [Stream(d, workers) for d in self.datasets]
        self.next_step = 0
        self._before: dict[int, list[dict]] = {}

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if step != self.next_step:
            self.set_state([_seek_state(s.get_state(), step, self.workers) for s in self.streams])
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
