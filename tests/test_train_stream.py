"""A file-backed run streams end to end: training reads a StepBatches stream (the input
iterator state saved inside each checkpoint), evaluation reads the splits batch by batch.
A run preempted mid-run and resumed equals an uninterrupted one bit for bit, with decoding
in this process (input_workers 0) and in a grain worker process (1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from e3lib import train

TINY = {
    "method": "e3",
    "model": {"ensemble_size": 2},
    "data": {
        "dataset": "cifar10",
        "image_size": 8,
        "pp_train": "decode|inception_crop(8)|flip_lr|value_range(-1,1)",
    },
    "finetune": {"steps": 10, "warmup": 2, "batch_size": 8, "checkpoint_every": 4, "mixup": 0.5},
    "eval": {"corrupted": False, "ood": False, "fewshot": False, "batch_size": 16},
}


@pytest.fixture(scope="module")
def tfds_root(tmp_path_factory):
    from tests.test_data_loaders import build_tfds

    root = tmp_path_factory.mktemp("tfds")
    build_tfds(root, "cifar10", {"train": 40, "test": 16}, image_size=8)
    return root


def run(tmp_path: Path, name: str, cfg: dict, monkeypatch, fault: str | None = None) -> int:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    if fault:
        monkeypatch.setenv("E3_FAULT_AT_STEP", fault)
    else:
        monkeypatch.delenv("E3_FAULT_AT_STEP", raising=False)
    return train.cli_run(
        [
            "--config",
            str(path),
            "--out",
            str(tmp_path / name),
            "--checkpoints",
            str(tmp_path / f"ck_{name}"),
            "--log-mode",
            "plain",
        ]
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_run_preempted_resumes_bitwise(tmp_path, tfds_root, monkeypatch, workers):
    cfg = json.loads(json.dumps(TINY))
    cfg["data"].update(data_dir=str(tfds_root), input_workers=workers)
    assert run(tmp_path, "a", cfg, monkeypatch) == 0
    # SIGTERM after step 6: a checkpoint at step 6 (off the every-4 grid) with the input
    # iterator state inside it, exit status 4; the rerun resumes there.
    assert run(tmp_path, "b", cfg, monkeypatch, "term:6") == train.EXIT_PREEMPTED
    step_dir = tmp_path / "ck_b" / "6"
    saved = json.loads((step_dir / "input_state.json").read_text())
    assert len(saved) == 1 and saved[0]  # one stream (one seed)
    manifest = json.loads((tmp_path / "ck_b" / "integrity" / "6.json").read_text())
    assert "input_state.json" in manifest["files"]  # covered by the manifest
    assert run(tmp_path, "b", cfg, monkeypatch) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["train"]["resumed_from_step"] is None and b["train"]["resumed_from_step"] == 6
    assert a["train"]["final"] == b["train"]["final"]  # the last step's loss, bitwise
    assert a["records"] == b["records"]
    # evaluation streamed: the 16 test and 1 validation examples (2 % of 40), no
    # per-example arrays in predictions.npz, the final params kept for ensembles
    assert a["cost"]["eval_examples"] == {"test": 16, "val": 1}
    with np.load(tmp_path / "a" / "predictions.npz") as z:
        assert z.files == ["streamed"]
    assert (tmp_path / "a" / "params").is_dir()
    # the validation points, read through the eval pipeline after every step (⌈10/20⌉ = 1):
    # the last is the final evaluation's val split, and the resumed run has the same ones
    ca, cb = (json.loads((tmp_path / n / "curves.json").read_text()) for n in ("a", "b"))
    assert ca["heldout"]["step"] == list(range(1, 11)) and ca == cb
    val = {
        r["metric"]: r["value"]
        for r in a["records"]
        if r["split"] == "val" and r["member"] == "ensemble"
    }
    assert ca["heldout"]["loss"][-1] == pytest.approx(val["nll"], rel=1e-5)


def test_streamed_resume_restores_the_saved_iterator_state(tmp_path, tfds_root, monkeypatch):
    # A checkpoint's saved input state is what the resumed run continues from: replace it
    # by the state of another step and the resumed run differs from the uninterrupted one.
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["data_dir"] = str(tfds_root)
    assert run(tmp_path, "a", cfg, monkeypatch) == 0
    assert run(tmp_path, "b", cfg, monkeypatch, "term:6") == train.EXIT_PREEMPTED
    from e3lib.checkpoint import TrainCheckpoints
    from e3lib.integrity import file_digests

    path = tmp_path / "ck_b" / "6" / "input_state.json"
    path.write_text(json.dumps([{"next_index": 2}]))
    manifest = tmp_path / "ck_b" / "integrity" / "6.json"  # keep the step acceptable
    manifest.write_text(json.dumps({"step": 6, "files": file_digests(tmp_path / "ck_b" / "6")}))
    assert TrainCheckpoints(tmp_path / "ck_b", every=4).verify(6) is None
    assert run(tmp_path, "b", cfg, monkeypatch) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["train"]["resumed_from_step"] == 6
    assert a["train"]["final"] != b["train"]["final"]


def test_deep_ensemble_of_streamed_runs_equals_in_memory(tmp_path, tfds_root, monkeypatch):
    # Two streamed runs (seeds 0, 1) keep only their params; their deep ensemble
    # re-evaluates them batch by batch and equals the in-memory evaluation of the same
    # params on the same (whole-array) splits.
    from e3lib.config import resolve
    from e3lib.data import load_suite
    from e3lib.evaluate import (
        combine_predictions,
        ensemble_runs,
        records_from_predictions,
        run_predictions,
    )
    from e3lib.models import build_model
    from e3lib.models.convert import restore_params
    from tests.test_evaluate_stream import assert_same_records

    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["data_dir"] = str(tfds_root)
    cfg["finetune"].update(steps=3, warmup=1)
    for seed in (0, 1):
        assert run(tmp_path, f"s{seed}", dict(cfg, seed=seed), monkeypatch) == 0
    res = ensemble_runs(
        [str(tmp_path / "s0"), str(tmp_path / "s1")], tmp_path / "ens", "downstream"
    )
    resolved = resolve(cfg)
    suite = load_suite(resolved)
    model = build_model(resolved, suite.num_classes)
    preds = [
        run_predictions(
            model, restore_params(tmp_path / f"s{s}" / "params", key=None), suite, resolved
        )
        for s in (0, 1)
    ]
    want = records_from_predictions(combine_predictions(preds, ["s0", "s1"]), [1], 0)
    assert_same_records(res["records"], want)
    with np.load(tmp_path / "ens" / "predictions.npz") as z:
        assert z.files == ["streamed"]


def upstream(tmp_path: Path, name: str, cfg: dict, monkeypatch, fault: str | None = None) -> int:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    if fault:
        monkeypatch.setenv("E3_FAULT_AT_STEP", fault)
    else:
        monkeypatch.delenv("E3_FAULT_AT_STEP", raising=False)
    work = tmp_path / f"up_{name}"
    return train.cli_upstream(
        ["--config", str(path), "--workdir", str(work), "--done", str(work / "done.json")]
        + ["--log-mode", "plain"]
    )


def test_streamed_upstream_preempted_resumes_bitwise(tmp_path, monkeypatch):
    # Pretraining on a file-backed set (an array_record written here, 5 classes) streams:
    # a run preempted after step 3 (checkpoint with the input state) and resumed equals
    # the uninterrupted one bit for bit; its iterator state says where it continued.
    from e3lib.data.sources import write_array_record
    from e3lib.models.convert import restore_params

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 8, 8, 3), np.uint8)
    (tmp_path / "toyup").mkdir()
    write_array_record(tmp_path / "toyup" / "train.array_record", zip(images, np.arange(24) % 5))
    cfg = {
        "method": "vmoe",
        "model": {"num_experts": 4, "moe_n": 1},
        "data": {"image_size": 8, "data_dir": str(tmp_path)},
        "upstream": {"dataset": "toyup", "steps": 6, "warmup": 1, "batch_size": 8},
    }
    assert upstream(tmp_path, "a", cfg, monkeypatch) == 0
    assert upstream(tmp_path, "b", cfg, monkeypatch, "term:3") == train.EXIT_PREEMPTED
    saved = json.loads((tmp_path / "up_b" / "ckpt" / "3" / "input_state.json").read_text())
    assert saved == [{"next_index": 3}]  # batch 3 is next: one epoch of 24 read
    assert not (tmp_path / "up_b" / "done.json").exists()
    assert upstream(tmp_path, "b", cfg, monkeypatch) == 0
    a = json.loads((tmp_path / "up_a" / "done.json").read_text())
    b = json.loads((tmp_path / "up_b" / "done.json").read_text())
    assert a["num_classes"] == 5
    assert a["train"]["resumed_from_step"] is None and b["train"]["resumed_from_step"] == 3
    assert a["train"]["final"] == b["train"]["final"] and a["metrics"] == b["metrics"]
    pa, pb = (restore_params(tmp_path / f"up_{n}" / "params") for n in "ab")
    flat_a, flat_b = (dict(_leaves(p)) for p in (pa, pb))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def test_streamed_upstream_heldout_loss_reads_the_validation_split(tmp_path, monkeypatch):
    # A file-backed pretraining set with a validation split: its held-out points are the
    # model's NLL and error there (recomputed below from the saved parameters); without
    # the split the pretraining records none.
    from e3lib.config import resolve, upstream_config
    from e3lib.data.sources import write_array_record
    from e3lib.evaluate import predict
    from e3lib.models import build_model
    from e3lib.models.convert import restore_params
    from e3lib.train.upstream import upstream_model_config

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (34, 8, 8, 3), np.uint8)
    labels = np.arange(34) % 5
    for name in ("toyup", "toyval"):
        (tmp_path / name).mkdir()
        write_array_record(tmp_path / name / "train.array_record", zip(images[:24], labels[:24]))
    write_array_record(
        tmp_path / "toyval" / "validation.array_record", zip(images[24:], labels[24:])
    )
    cfg = {
        "method": "vit",
        "data": {"image_size": 8, "data_dir": str(tmp_path)},
        "upstream": {"dataset": "toyval", "steps": 4, "warmup": 1, "batch_size": 8},
    }
    cfg["upstream"]["eval_every"] = 2
    assert upstream(tmp_path, "val", cfg, monkeypatch) == 0
    curve = json.loads((tmp_path / "up_val" / "curves.json").read_text())
    held = curve["heldout"]
    assert held["step"] == [2, 4]
    model = build_model(upstream_model_config(upstream_config(resolve(cfg))), 5)
    params = restore_params(tmp_path / "up_val" / "params")
    probs = predict(model, params, images[24:], 16)[0].mean(0)  # (10, 5)
    picked = probs[np.arange(10), labels[24:]]
    assert held["loss"][-1] == pytest.approx(float(-np.log(picked).mean()), rel=1e-5)
    assert held["error"][-1] == pytest.approx(float((probs.argmax(1) != labels[24:]).mean()))
    cfg["upstream"]["dataset"] = "toyup"  # no validation split
    assert upstream(tmp_path, "noval", cfg, monkeypatch) == 0
    assert "heldout" not in json.loads((tmp_path / "up_noval" / "curves.json").read_text())


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", np.asarray(v)
