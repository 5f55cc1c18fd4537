"""Streaming metrics (e3lib.metrics_stream) equal the in-memory metrics (e3lib.metrics)
on the same predictions, fed in uneven batches, with padding and split across processes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from e3lib import metrics
from e3lib import metrics_stream as ms


def dirichlet(rng, shape, c, sharp=1.0):
    return rng.dirichlet(np.full(c, sharp), size=shape)


def batches(n, sizes):
    start = 0
    for b in sizes:
        yield slice(start, min(start + b, n))
        start += b
        if start >= n:
            return


@pytest.mark.parametrize("members", [1, 3])
def test_prediction_metrics_streamed_equal_in_memory(members):
    rng = np.random.default_rng(0)
    n, c = 203, 7
    probs = dirichlet(rng, (members, n), c, 0.3)  # (M, N, C)
    labels = rng.integers(0, c, n)
    want = metrics.prediction_metrics(probs, labels)
    acc = ms.PredictionAccumulator(members)
    for sl in batches(n, [50, 13, 64, 64, 64]):
        # each batch padded to 64 with junk rows marked invalid
        pad = 64 - (sl.stop - sl.start)
        p = np.concatenate([probs[:, sl], dirichlet(rng, (members, pad), c)], axis=1)
        y = np.r_[labels[sl], np.zeros(pad, int)]
        acc.update(p, y, valid=np.r_[np.ones(sl.stop - sl.start, bool), np.zeros(pad, bool)])
    got = acc.result()
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].keys() == want[name].keys()
        for k in want[name]:
            assert got[name][k] == pytest.approx(want[name][k], abs=1e-6), (name, k)
    assert got["ensemble"]["ece"] > 0.01  # not a degenerate comparison


def test_merged_process_accumulators_equal_one():
    rng = np.random.default_rng(1)
    probs, labels = dirichlet(rng, (2, 90), 5, 0.5), rng.integers(0, 5, 90)
    parts = []
    for p in range(3):  # process p holds examples p, p+3, ...
        a = ms.PredictionAccumulator(2)
        a.update(probs[:, p::3], labels[p::3])
        parts.append(a)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    want = metrics.prediction_metrics(probs, labels)
    for k, v in want["ensemble"].items():
        assert parts[0].result()["ensemble"][k] == pytest.approx(v, abs=1e-6)


def test_ood_streamed_equal_in_memory_with_ties():
    rng = np.random.default_rng(2)
    p_in = dirichlet(rng, (2, 120), 4, 0.2)
    p_out = dirichlet(rng, (2, 80), 4, 2.0)
    p_out[:, :10] = p_in[:, :10]  # tied scores across the two sets
    want = metrics.ood_metrics(p_in, p_out)
    acc = ms.OODAccumulator()
    for sl in batches(120, [32] * 4):
        acc.update("in", p_in[:, sl])
    for sl in batches(80, [32] * 3):
        acc.update("out", p_out[:, sl])
    got = acc.result()
    for k in ("auroc", "aupr", "fpr95"):
        assert got[k] == pytest.approx(want[k], abs=1e-6)
    assert 0.5 < got["auroc"] < 1.0
    with pytest.raises(ValueError, match="allowed"):
        acc.update("middle", p_in)


@pytest.mark.parametrize("selection", ["test", "holdout"])
@pytest.mark.parametrize("mode", ["joint", "disjoint"])
def test_fewshot_streamed_equal_in_memory(selection, mode):
    rng = np.random.default_rng(3)
    tasks, streamed = {}, {}
    for t, (n, c) in enumerate([(60, 3), (48, 4)]):
        name = f"task{t}"
        labels = np.arange(n) % c
        centers = rng.normal(size=(c, 6))
        feats = centers[labels][None] + rng.normal(scale=1.5, size=(2, n, 6))  # (M, N, D)
        ytest = np.arange(30) % c
        ftest = centers[ytest][None] + rng.normal(scale=1.5, size=(2, 30, 6))
        tasks[name] = (feats, labels, ftest, ytest, c)
        col = ms.FewShotFeatures(name, labels, [1, 5], seed=4, l2_selection=selection)
        for sl in batches(n, [16] * 4):  # pool streamed in batches
            col.update(feats[:, sl], np.arange(n)[sl])
        if selection == "test":
            assert len(col._rows) <= c * 6 < n  # only the drawn shots are kept
        streamed[name] = (col, ftest, ytest, c)
    grid = [2.0**i for i in range(-4, 6)]
    want = metrics.fewshot_errors(tasks, [1, 5], 4, mode, grid, selection)
    got = ms.fewshot_errors(streamed, mode, grid)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-6)


def _feed(rng, n, sl):
    """Every accumulator of one evaluation fed the examples ``sl`` of fixed predictions."""
    probs = dirichlet(rng, (3, n), 6, 0.4)  # (M, N, C)
    labels = rng.integers(0, 6, n)
    p_out = dirichlet(rng, (3, n // 2), 6, 1.5)
    p_out[:, :5] = probs[:, :5]  # ties across in / out
    pool_labels = np.arange(n) % 4
    centers = rng.normal(size=(4, 5))
    pool = centers[pool_labels][None] + rng.normal(scale=1.2, size=(3, n, 5))  # (M, N, D)
    ytest = np.arange(n // 2) % 4
    ftest = centers[ytest][None] + rng.normal(scale=1.2, size=(3, n // 2, 5))
    pred, ood = ms.PredictionAccumulator(3), ms.OODAccumulator()
    shots = ms.FewShotFeatures("t", pool_labels, [1, 3], seed=2)
    test = ms.TestFeatures()
    idx = np.arange(n)[sl]
    pred.update(probs[:, sl], labels[sl])
    ood.update("in", probs[:, sl])
    half = np.arange(n // 2)[sl]
    ood.update("out", p_out[:, half])
    shots.update(pool[:, sl], idx)
    test.update(ftest[:, half], ytest[half], half)
    return pred, ood, shots, test


def _all_metrics(pred, ood, shots, test):
    out = {f"{m}.{k}": v for m, d in pred.result().items() for k, v in d.items()}
    out.update({f"ood.{k}": v for k, v in ood.result().items()})
    fte, yte = test.arrays()
    grid = [2.0**i for i in range(-3, 4)]
    fs = ms.fewshot_errors({"t": (shots, fte, yte, 4)}, "joint", grid)
    out.update({f"fewshot.{k}": v for k, v in fs.items()})
    return out


@pytest.mark.parametrize("split", ["halves", "interleaved", "uneven3"])
def test_merged_parts_equal_the_whole_for_every_metric(split):
    # The accumulators of disjoint parts of the examples (one per process), merged, give
    # the metrics of the whole to 1e-6: sums, ECE bins, diversity, exact OOD, few-shot.
    n = 80
    parts = {
        "halves": [slice(0, 40), slice(40, 80)],
        "interleaved": [slice(0, n, 2), slice(1, n, 2)],
        "uneven3": [slice(0, 7), slice(7, 50), slice(50, 80)],
    }[split]
    whole = _all_metrics(*_feed(np.random.default_rng(5), n, slice(0, n)))
    accs = [_feed(np.random.default_rng(5), n, sl) for sl in parts]
    merged = [ms.merge_all([a[i] for a in accs]) for i in range(4)]
    got = _all_metrics(*merged)
    assert got.keys() == whole.keys()
    assert {"ensemble.ece", "ensemble.kl_diversity", "ood.auroc", "ood.aupr", "ood.fpr95"} <= (
        got.keys()
    )
    assert any(k.startswith("fewshot.") for k in got)
    for k, v in whole.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    assert whole["ensemble.ece"] > 0.01 and 0.4 < whole["ood.auroc"] < 1.0


def test_merge_is_associative_and_refuses_another_fewshot_draw():
    parts = [
        _feed(np.random.default_rng(6), 80, sl)
        for sl in (slice(0, 20), slice(20, 45), slice(45, 80))
    ]

    def acc(part, i):
        return copy.deepcopy(parts[part][i])

    left = [ms.merge_all([ms.merge_all([acc(0, i), acc(1, i)]), acc(2, i)]) for i in range(4)]
    right = [ms.merge_all([acc(0, i), ms.merge_all([acc(1, i), acc(2, i)])]) for i in range(4)]
    got_l, got_r = _all_metrics(*left), _all_metrics(*right)
    for k, v in got_l.items():
        assert got_r[k] == pytest.approx(v, abs=1e-12), k
    other = ms.FewShotFeatures("t", np.arange(80) % 4, [1, 3], seed=9)
    with pytest.raises(ValueError, match="different task or draw"):
        parts[0][2].merge(other)
