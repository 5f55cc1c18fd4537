"""The grain input stream (e3lib.data.stream, its sources e3lib.data.sources) on small
array_record and TFDS builds written here: per-process shards, seeded order, resume from a
saved iterator state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from e3lib.data.sources import ArraySource, open_source, split_train_val, write_array_record
from e3lib.data.stream import Stream, eval_dataset, train_dataset

N = 24  # examples; image i is constant i with label i % 5


def tiny(i: int, size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), i, np.uint8)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_array_record(root / "toy" / "train.array_record", ((tiny(i), i % 5) for i in range(N)))
    return root


def take(ds, k: int) -> list[dict]:
    return [ds[i] for i in range(k)]


def test_record_source_round_trip(records):
    src = open_source("toy", "train", str(records))
    assert len(src) == N
    batch = train_dataset(
        src, "decode|value_range(0,255)", 4, seed=0, process_index=0, process_count=1, shuffle=False
    )[0]
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["label"].tolist() == [0, 1, 2, 3]
    assert batch["image"].shape == (4, 4, 4, 3)
    assert [float(im.mean()) for im in batch["image"]] == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("procs", [1, 2, 4])
def test_every_example_once_per_epoch_across_processes(records, procs):
    src = open_source("toy", "train", str(records))
    global_batch = 8
    local = [
        take(
            train_dataset(
                src, "decode", global_batch, seed=3, process_index=p, process_count=procs
            ),
            2 * N // global_batch,
        )
        for p in range(procs)
    ]
    seen = [[int(i) for b in local[p] for i in b["index"]] for p in range(procs)]
    for epoch in range(2):  # 3 global batches of 8 = one epoch of 24
        shards = [set(s[epoch * N // procs : (epoch + 1) * N // procs]) for s in seen]
        assert sum(len(s) for s in shards) == N  # no repeats in a shard
        assert set().union(*shards) == set(range(N))  # disjoint and covering
    # the global batch t is the same whatever P: positions [tB, (t+1)B) of one order
    one = [
        int(i)
        for b in take(
            train_dataset(src, "decode", global_batch, seed=3, process_index=0, process_count=1), 6
        )
        for i in b["index"]
    ]
    # process p holds block p of each global batch (the rows its devices hold)
    b = global_batch // procs
    merged = np.asarray(seen).reshape(procs, -1, b).transpose(1, 0, 2).reshape(-1)
    assert merged.tolist() == one
    # and each epoch is a different permutation
    assert one[:N] != one[N:] and sorted(one[:N]) == sorted(one[N:])


def test_same_seed_same_batches_and_augmentation_independent_of_processes(records):
    src = open_source("toy", "train", str(records))
    pp = "decode|inception_crop(4)|flip_lr|randaug(2,15)|value_range(-1,1)"

    def images(seed, p, procs):
        return [b["image"] for b in take(train_dataset(src, pp, 4, seed, p, procs), 3)]

    a, b, c = images(7, 0, 1), images(7, 0, 1), images(8, 0, 1)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))
    # process 1 of 2 gets global positions 2, 3 of batch 0: the same augmented pixels
    two = images(7, 1, 2)
    np.testing.assert_array_equal(two[0], a[0][2:])


def test_resume_from_mid_epoch_state_gives_the_same_sequence(records):
    src = open_source("toy", "train", str(records))

    def stream():
        return Stream(
            train_dataset(
                src, "decode|flip_lr|value_range(-1,1)", 4, seed=1, process_index=0, process_count=1
            ),
            threads=2,
            prefetch=2,
        )

    full = stream()
    reference = [next(full) for _ in range(9)]
    run = stream()
    for _ in range(4):  # 4 of the 6 batches of the first epoch
        next(run)
    saved = run.state_json()  # what the checkpoint stores
    run.close()
    assert json.loads(saved)  # a small JSON document
    resumed = stream()
    resumed.load_state_json(saved)
    for want in reference[4:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["index"], want["index"])
        np.testing.assert_array_equal(got["image"], want["image"])


def test_worker_processes_and_their_state(records):
    # The only test with grain worker processes: a worker decodes; the batches and the
    # resumed sequence equal the in-process pipeline's.
    src = open_source("toy", "train", str(records))
    ds = train_dataset(
        src, "decode|flip_lr|value_range(-1,1)", 4, seed=2, process_index=0, process_count=1
    )
    want = take(ds, 6)
    run = Stream(ds, workers=2)
    got = [next(run) for _ in range(3)]
    saved = run.state_json()
    assert json.loads(saved) == {"next_index": 3}  # the next batch, whatever the workers
    run.set_state({"next_index": 1})  # a seek back while the workers read ahead
    again = next(run)
    run.close()
    np.testing.assert_array_equal(again["image"], want[1]["image"])
    resumed = Stream(ds, workers=1)
    resumed.load_state_json(saved)
    got += [next(resumed) for _ in range(3)]
    resumed.close()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["index"], w["index"])
        np.testing.assert_array_equal(g["image"], w["image"])


def test_state_index_reads_old_worker_pipeline_states():
    from e3lib.data.stream import state_index

    assert state_index({"next_index": 7}) == 7
    # grain's interleaved worker state: worker 0 read batches 0, 2, 4; worker 1 read 1, 3
    old = {
        "next_index_in_cycle": 1,
        "iterators_in_use_states": [{"next_index": 3}, {"next_index": 2}],
    }
    assert state_index(old) == 5
    with pytest.raises(ValueError, match="next_index"):
        state_index({"position": 3})


@pytest.mark.parametrize("procs", [1, 2, 4])
def test_eval_covers_the_split_once_with_padding(procs):
    src = ArraySource(np.stack([tiny(i) for i in range(10)]), np.arange(10) % 5)
    seen, shapes = [], set()
    for p in range(procs):
        batches = list(eval_dataset(src, "value_range(0,255)", 4, p, procs))
        assert len(batches) == 3  # ⌈10/4⌉ on every process
        for b in batches:
            shapes.add(b["image"].shape)
            seen += b["index"][b["valid"]].tolist()
            assert (b["label"][~b["valid"]] == -1).all()
    assert sorted(seen) == list(range(10)) and shapes == {(4 // procs, 4, 4, 3)}
    # process p reads rows [p·b, (p+1)·b) of every batch: with 2 processes, process 1
    # reads positions 2, 3 | 6, 7 | 10, 11 (padding)
    if procs == 2:
        last = [b["index"].tolist() for b in eval_dataset(src, "value_range(0,255)", 4, 1, 2)]
        assert last == [[2, 3], [6, 7], [-1, -1]]


def test_tfds_build_is_streamed(tmp_path):
    from tests.test_data_loaders import build_tfds

    build_tfds(tmp_path, "cifar10", {"train": 7})
    src = open_source("cifar10", "train", str(tmp_path))
    assert len(src) == 7
    batch = train_dataset(
        src, "decode|resize(4)|value_range(0,255)", 7, seed=0, process_index=0, process_count=1
    )[0]
    values = batch["image"].reshape(7, -1)
    assert (values.min(1) == values.max(1)).all()
    assert sorted(batch["index"].tolist()) == list(range(7))
    assert (values[:, 0] // 30).astype(int).tolist() == batch["label"].tolist()


def test_tfds_source_opens_once_under_concurrent_first_reads(monkeypatch):
    # A source unpickled in a grain worker process is opened by whichever reader thread
    # comes first; concurrent first reads must open (and import) once, the others wait.
    import pickle
    import threading
    import time

    import tensorflow_datasets as tfds

    from e3lib.data.sources import TfdsSource

    opened = []

    class Builder:
        def as_data_source(self, split):
            time.sleep(0.2)  # a slow open: without the lock every thread would get here
            return [{"image": np.zeros((2, 2, 3), np.uint8), "label": 3}]

    def builder_from_directory(path):
        opened.append(path)
        return Builder()

    monkeypatch.setattr(tfds, "builder_from_directory", builder_from_directory)
    src = pickle.loads(pickle.dumps(TfdsSource("/no/such/build", "train")))  # as a worker
    labels = []
    threads = [threading.Thread(target=lambda: labels.append(src[0]["label"])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert labels == [3, 3, 3, 3]
    assert opened == ["/no/such/build"]  # one open for four threads


def test_train_val_split_matches_the_in_memory_suite():
    train, val = split_train_val(100, 0.02)
    perm = np.random.default_rng(0).permutation(100)
    assert val.tolist() == sorted(perm[:2].tolist()) and len(train) == 98
    assert not set(train) & set(val)


def test_step_batches_seek_and_packed_seeds(records):
    from e3lib.data.stream import StepBatches

    src = open_source("toy", "train", str(records))
    pp = "decode|flip_lr|value_range(-1,1)"
    seq = StepBatches(src, pp, 4, seeds=[0, 1], process_index=0, process_count=1)
    want = [seq.batch(t) for t in range(7)]
    assert want[0][0].shape == (2, 4, 4, 4, 3) and want[0][1].shape == (2, 4)
    assert (
        not (want[0][1][0] == want[0][1][1]).all() or not (want[1][1][0] == want[1][1][1]).all()
    )  # two seeds, two orders
    resumed = StepBatches(src, pp, 4, seeds=[0, 1], process_index=0, process_count=1)
    for t in (5, 6):  # a run resumed at step 5
        images, labels = resumed.batch(t)
        np.testing.assert_array_equal(images, want[t][0])
        np.testing.assert_array_equal(labels, want[t][1])
    single = StepBatches(src, pp, 4, seeds=[1], process_index=0, process_count=1)
    np.testing.assert_array_equal(single.batch(0)[0], want[0][0][1])
