"""Streaming evaluation (e3lib.evaluate.streaming) equals the in-memory evaluation of the
same sets: every record to 1e-6, for one run and for a deep ensemble of two runs, on the
embedded suite (every set: corrupted, OOD, few-shot) and on splits written here as
array_record files."""

from __future__ import annotations

import numpy as np
import pytest

from e3lib.config import resolve
from e3lib.data import load_suite
from e3lib.data.sources import open_source, write_array_record
from e3lib.data.stream_suite import StreamSuite, _from_data_suite
from e3lib.evaluate import combine_predictions, records_from_predictions, run_predictions
from e3lib.evaluate.streaming import run_predictor, stream_records
from e3lib.models import build_model
from tests.model_helpers import random_params

PP_EVAL = "decode|resize(16)|value_range(-1,1)"


def cfg_of(**eval_overrides):
    ev = {
        "batch_size": 32,
        "corrupted": True,
        "ood": True,
        "fewshot": True,
        "fewshot_shots": [1, 5],
    }
    ev.update(eval_overrides)
    return resolve({"method": "e3", "model": {"ensemble_size": 2}, "eval": ev})


@pytest.fixture(scope="module")
def setup():
    cfg = cfg_of()
    suite = load_suite(cfg)
    model = build_model(cfg, suite.num_classes)
    x = np.zeros((1, 16, 16, 3), np.float32)
    params = [random_params(model, x, seed=s, train=False) for s in (0, 1)]
    return cfg, suite, model, params


def key(r):
    return tuple(
        r.get(k) for k in ("split", "corruption", "severity", "task", "shots", "member", "metric")
    )


def assert_same_records(streamed, in_memory):
    a, b = {key(r): r["value"] for r in streamed}, {key(r): r["value"] for r in in_memory}
    assert a.keys() == b.keys() and len(a) == len(streamed) == len(in_memory)
    for k in a:
        if b[k] is None:
            assert a[k] is None, k
        else:
            assert a[k] == pytest.approx(b[k], abs=1e-6), k


def test_one_run_every_set(setup):
    cfg, suite, model, params = setup
    want = records_from_predictions(
        run_predictions(model, params[0], suite, cfg), [1, 5], cfg.seed, "test"
    )
    got, sizes = stream_records(
        [run_predictor(model, params[0])], _from_data_suite(suite, PP_EVAL, PP_EVAL), cfg, threads=1
    )
    assert_same_records(got, want)
    assert {r["split"] for r in got} == {
        "clean",
        "val",
        "corrupted",
        "ood_near",
        "ood_far",
        "fewshot",
    }
    assert sizes["test"] == len(suite.test) and sizes["val"] == len(suite.val)


def test_deep_ensemble_of_two_runs(setup):
    cfg, suite, model, params = setup
    cfg = cfg_of(corrupted=False)
    runs = [run_predictions(model, p, suite, cfg) for p in params]
    want = records_from_predictions(combine_predictions(runs, ["a", "b"]), [1, 5], cfg.seed, "test")
    got, _ = stream_records(
        [run_predictor(model, p) for p in params],
        _from_data_suite(suite, PP_EVAL, PP_EVAL),
        cfg,
        threads=1,
    )
    assert_same_records(got, want)


def test_array_record_splits_written_here(setup, tmp_path):
    cfg, suite, model, params = setup
    cfg = cfg_of(corrupted=False, ood=False, fewshot=False)
    for split, data in (("train", suite.val), ("test", suite.test)):
        write_array_record(
            tmp_path / "toy" / f"{split}.array_record", zip(data.images, data.labels.tolist())
        )
    streamed = StreamSuite(
        "toy",
        suite.num_classes,
        PP_EVAL,
        PP_EVAL,
        None,
        open_source("toy", "train", str(tmp_path)),
        open_source("toy", "test", str(tmp_path)),
    )
    got, _ = stream_records([run_predictor(model, params[0])], streamed, cfg, threads=2)
    preds = run_predictions(model, params[0], suite, cfg)
    want = records_from_predictions(preds, [1, 5], cfg.seed, "test")
    assert_same_records(got, want)
