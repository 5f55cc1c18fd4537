"""Records of a run from its predictions, and deep ensembles of runs."""

import json
import math

import numpy as np
import pytest

from e3lib import evaluate, metrics


def rec(records, **key):
    hits = [r["value"] for r in records if all(r.get(k) == v for k, v in key.items())]
    assert len(hits) == 1, (key, hits)
    return hits[0]


def two_member_preds():
    # clean: member probs for N=2, C=2; labels [0, 1]
    probs = np.array([[[0.9, 0.1], [0.4, 0.6]], [[0.7, 0.3], [0.2, 0.8]]])
    preds = {"probs": probs, "labels": np.array([0, 1])}
    # two corrupted sets: the clean probs, and members swapped to confident-wrong
    preds["probs.corrupted.noise.1"] = probs
    preds["labels.corrupted.noise.1"] = np.array([0, 1])
    preds["probs.corrupted.noise.2"] = probs[:, :, ::-1]
    preds["labels.corrupted.noise.2"] = np.array([0, 1])
    preds["probs.ood_far"] = np.array([[[0.5, 0.5]], [[0.6, 0.4]]])
    return preds


def test_run_records_by_hand():
    records = evaluate.records_from_predictions(two_member_preds(), [1], 0)
    # ensemble mean: [.8, .2], [.3, .7] → NLL = −(ln .8 + ln .7)/2
    assert rec(records, split="clean", member="ensemble", metric="nll") == pytest.approx(
        -(math.log(0.8) + math.log(0.7)) / 2
    )
    assert rec(records, split="clean", member="1", metric="nll") == pytest.approx(
        -(math.log(0.7) + math.log(0.8)) / 2
    )
    assert rec(records, split="clean", member="ensemble", metric="error") == 0.0
    # both members right on both inputs: no disagreement, ensemble error 0 → ratio undefined
    assert rec(records, split="clean", member="ensemble", metric="disagreement") is None
    # severity 2 flips every prediction: error 1; the mean over the 2 sets is 0.5
    assert (
        rec(
            records,
            split="corrupted",
            corruption="noise",
            severity=2,
            member="ensemble",
            metric="error",
        )
        == 1.0
    )
    assert (
        rec(
            records,
            split="corrupted",
            corruption="mean",
            severity=0,
            member="ensemble",
            metric="error",
        )
        == 0.5
    )
    # OOD: in-distribution scores 1−msp = {.2, .3}, OOD one example 1−.55 = .45 → AUROC 1
    assert rec(records, split="ood_far", member="ensemble", metric="auroc") == 1.0
    assert not [r for r in records if r["split"] == "ood_near"]


def test_fewshot_records_name_joint_and_disjoint_for_ensembles():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 6)
    feats = (np.eye(2)[y] * 4 + 0.1 * rng.normal(size=(12, 2)))[None].repeat(2, axis=0)
    preds = {
        "probs": np.full((2, 2, 2), 0.5),
        "labels": np.array([0, 1]),
        "features.fewshot.t.train": feats,
        "labels.fewshot.t.train": y,
        "features.fewshot.t.test": feats,
        "labels.fewshot.t.test": y,
        "num_classes.fewshot.t": np.asarray(2),
    }
    records = evaluate.records_from_predictions(preds, [1, 5], 0)
    members = {r["member"] for r in records if r["split"] == "fewshot"}
    assert members == {"joint", "disjoint"}
    assert (
        rec(records, split="fewshot", task="t", shots=5, member="joint", metric="fewshot_error")
        == 0.0
    )
    assert (
        rec(records, split="fewshot", task="mean", shots=5, member="joint", metric="fewshot_error")
        == 0.0
    )
    # format 2: few-shot records name task and shots, and nothing else says where
    few = [r for r in records if r["split"] == "fewshot"]
    assert len(few) == 2 * 2 * 2  # (task t + mean) × 2 shot counts × 2 modes
    assert all(set(r) == {"split", "task", "shots", "member", "metric", "value"} for r in few)
    single = {k: (v[:1] if k.startswith(("probs", "features")) else v) for k, v in preds.items()}
    members = {
        r["member"]
        for r in evaluate.records_from_predictions(single, [1], 0)
        if r["split"] == "fewshot"
    }
    assert members == {"ensemble"}


def write_run(d, run_id, upstream, probs, labels, cost=1.0):
    d.mkdir(parents=True)
    from e3lib.config import resolve

    cfg = resolve({"method": "vmoe", "eval": {"fewshot_shots": [1]}})
    evaluate.write_results(
        d,
        {
            "run_id": run_id,
            "status": "ok",
            "config": cfg.to_dict(),  # as results store it
            "upstream_id": upstream,
            "cost": {"gflops_per_image_train": cost, "params": 10},
            "records": [],
        },
        {"probs": probs, "labels": labels},
    )


def test_deep_ensemble_of_runs_by_hand(tmp_path):
    labels = np.array([0, 1])
    write_run(tmp_path / "r1", "r1", "up", np.array([[[0.9, 0.1], [0.6, 0.4]]]), labels)
    write_run(tmp_path / "r2", "r2", "up", np.array([[[0.5, 0.5], [0.2, 0.8]]]), labels)
    rc = evaluate.cli_ensemble(
        [
            "--runs",
            str(tmp_path / "r1"),
            str(tmp_path / "r2"),
            "--out",
            str(tmp_path / "ens"),
            "--kind",
            "downstream",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "ens" / "results.json").read_text())
    assert res["config"]["runs"] == ["r1", "r2"] and res["cost"]["gflops_per_image_train"] == 2
    # ensemble: [.7, .3], [.4, .6] → NLL −(ln .7 + ln .6)/2; members keep their own metrics
    assert rec(res["records"], split="clean", member="ensemble", metric="nll") == pytest.approx(
        -(math.log(0.7) + math.log(0.6)) / 2
    )
    assert rec(res["records"], split="clean", member="0", metric="error") == 0.5
    # member argmaxes [0,0] vs [0,1]: disagree on 1 of 2; ensemble error 0 → undefined (null)
    assert rec(res["records"], split="clean", member="ensemble", metric="disagreement") is None
    kl = metrics.kl_diversity(np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.5, 0.5], [0.2, 0.8]]]))
    assert rec(
        res["records"], split="clean", member="ensemble", metric="kl_diversity"
    ) == pytest.approx(kl)
    assert np.load(tmp_path / "ens" / "predictions.npz")["probs"].shape == (2, 2, 2)


def test_ensemble_errors_are_clear(tmp_path):
    labels = np.array([0, 1])
    p = np.array([[[0.9, 0.1], [0.6, 0.4]]])
    write_run(tmp_path / "a", "a", "up1", p, labels)
    write_run(tmp_path / "b", "b", "up2", p, labels)
    with pytest.raises(ValueError, match="share one upstream"):
        evaluate.ensemble_runs(
            [str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "o", "downstream"
        )
    write_run(tmp_path / "c", "c", "up1", p, labels)
    with pytest.raises(ValueError, match="distinct upstreams"):
        evaluate.ensemble_runs(
            [str(tmp_path / "a"), str(tmp_path / "c")], tmp_path / "o", "upstream"
        )
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "diverged.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="diverged"):
        evaluate.ensemble_runs(
            [str(tmp_path / "a"), str(tmp_path / "d")], tmp_path / "o", "upstream"
        )
    write_run(tmp_path / "e", "e", "up3", p, np.array([1, 1]))
    with pytest.raises(ValueError, match="labels differs"):
        evaluate.ensemble_runs(
            [str(tmp_path / "a"), str(tmp_path / "e")], tmp_path / "o", "upstream"
        )
    assert not (tmp_path / "o").exists()
    # the upstream kind accepts distinct upstreams
    evaluate.ensemble_runs([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "o", "upstream")
    assert (tmp_path / "o" / "results.json").is_file()


def test_predict_pads_the_last_batch_and_drops_the_padding():
    calls = []

    def fake_predict_fn(params, images):
        calls.append(images.shape[0])
        # probs = per-image mean pixel in one class slot; features = same
        v = images.mean(axis=(1, 2, 3))
        probs = np.stack([v, 1 - v], -1)[None]  # (1, B, 2)
        return probs, probs

    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    probs, feats = evaluate.predict(None, None, images, 4, fake_predict_fn)
    assert calls == [4, 4] and probs.shape == (1, 5, 2)
    from e3lib.data import to_float

    assert np.allclose(probs[0, :, 0], to_float(np.arange(5, dtype=np.uint8)))


def test_val_records_from_validation_predictions():
    preds = two_member_preds()
    # validation: N=2, labels [1, 1]; ensemble mean [.55, .45] (wrong), [.2, .8] (right)
    preds["probs.val"] = np.array([[[0.6, 0.4], [0.3, 0.7]], [[0.5, 0.5], [0.1, 0.9]]])
    preds["labels.val"] = np.array([1, 1])
    records = evaluate.records_from_predictions(preds, [1], 0)
    # NLL = −(ln .45 + ln .8)/2; one error of 2
    assert rec(records, split="val", member="ensemble", metric="nll") == pytest.approx(
        -(math.log(0.45) + math.log(0.8)) / 2
    )
    assert rec(records, split="val", member="ensemble", metric="error") == 0.5
    # member 0: [.6, .4] wrong, [.3, .7] right; NLL −(ln .4 + ln .7)/2
    assert rec(records, split="val", member="0", metric="error") == 0.5
    assert rec(records, split="val", member="0", metric="nll") == pytest.approx(
        -(math.log(0.4) + math.log(0.7)) / 2
    )
    assert rec(records, split="val", member="1", metric="nll") == pytest.approx(
        -(math.log(0.5) + math.log(0.9)) / 2
    )
    # the clean records are unchanged by the val set
    assert rec(records, split="clean", member="ensemble", metric="error") == 0.0
