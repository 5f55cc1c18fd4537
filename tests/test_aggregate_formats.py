"""Entry statuses from done.json (member_failed is a failure, not a gap), the versioned
results.json formats (1: few-shot task/shots in corruption/severity; 2: explicit task and
shots) and the dataset's format_version."""

import json

import numpy as np
import pytest
from done_files import write_done_files

from e3lib import aggregate, evaluate
from e3lib.aggregate.schemas import SCHEMA_DIR, load_schema
from e3lib.report import synthetic

FEWSHOT_V1 = [
    {
        "split": "fewshot",
        "corruption": "mean",
        "severity": 5,
        "member": "joint",
        "metric": "fewshot_error",
        "value": 0.4,
    },
    {
        "split": "fewshot",
        "corruption": "pets",
        "severity": 1,
        "member": "disjoint",
        "metric": "fewshot_error",
        "value": 0.75,
    },
]
FEWSHOT_V2 = [
    {
        "split": "fewshot",
        "task": "mean",
        "shots": 5,
        "member": "joint",
        "metric": "fewshot_error",
        "value": 0.4,
    },
    {
        "split": "fewshot",
        "task": "pets",
        "shots": 1,
        "member": "disjoint",
        "metric": "fewshot_error",
        "value": 0.75,
    },
]


def one_run(tmp_path, records=(), fmt=None):
    """A one-entry sweep (clean nll 0.5) with extra records; returns (index, results path)."""
    index = synthetic.write_sweep(
        tmp_path, "s", ["method"], [0], [{"axes": {"method": "e3"}, "metrics": {"nll": [0.5]}}]
    )
    write_done_files(tmp_path, index)
    entry = json.loads(index.read_text())["entries"][0]
    path = tmp_path / "runs" / entry["id"] / "results.json"
    res = json.loads(path.read_text())
    res["records"] += list(records)
    if fmt is not None:
        res["format"] = fmt
    path.write_text(json.dumps(res))
    return index, path


def test_ensemble_with_a_failed_member_is_failed_not_missing(tmp_path):
    cells = [
        {"axes": {"method": "e3"}, "metrics": {"nll": [0.5, 0.6]}},
        {
            "axes": {"method": "deep"},
            "kind": "ensemble",
            "metrics": {"nll": [0.4, 0.4]},
            "seeds": {1: None},
        },
    ]
    index = synthetic.write_sweep(tmp_path, "s", ["method"], [0, 1], cells)
    write_done_files(tmp_path, index)
    doc = json.loads(index.read_text())
    ens = [e for e in doc["entries"] if e["kind"] == "ensemble" and e["seed"] == 1][0]
    # what the workflow's stage wrapper writes when a member run diverged
    member_done = f"results/runs/{ens['members'][1]}/done.json"
    (tmp_path / "ensembles" / ens["id"]).mkdir(parents=True)
    (tmp_path / "ensembles" / ens["id"] / "done.json").write_text(
        json.dumps({"status": "member_failed", "members": {member_done: "diverged"}})
    )
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index_path=index)
    flags = aggregate.STATUS_FLAGS
    status = ds["status"].sel({"method": "deep"})
    assert list(status.values) == [flags["ok"], flags["member_failed"]]
    assert ds.attrs["entries_member_failed"] == 1 and ds.attrs["entries_missing"] == 0
    assert json.loads(ds.attrs["failed_members"]) == {ens["id"]: {ens["members"][1]: "diverged"}}
    assert json.loads(ds.attrs["run_status"])[ens["id"]] == "member_failed"
    assert "member_failed" in ds["status"].attrs["flag_meanings"].split()
    # the failed cell has no value; the ok seed is kept
    nll = (
        ds["nll"]
        .sel({"method": "deep"})
        .sel(split="clean", corruption="none", severity=0, member="ensemble")
    )
    assert float(nll.sel(seed=0)) == 0.4 and np.isnan(float(nll.sel(seed=1)))


def test_status_comes_from_done_json_only(tmp_path):
    index, path = one_run(tmp_path)
    done = path.parent / "done.json"
    done.unlink()  # results.json without done.json: the job never finished
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path)
    assert int(ds["status"].values.ravel()[0]) == aggregate.STATUS_FLAGS["missing"]
    assert "nll" not in ds and ds.attrs["entries_missing"] == 1  # no result loaded
    done.write_text(json.dumps({"status": "diverged", "exit_code": 3}))
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path)
    assert int(ds["status"].values.ravel()[0]) == aggregate.STATUS_FLAGS["diverged"]
    done.write_text(json.dumps({"status": "done"}))
    with pytest.raises(aggregate.AggregateError, match=r"done.json: field status: 'done'"):
        aggregate.build_dataset(aggregate.load_index(index), tmp_path)
    done.write_text(json.dumps({"status": "ok"}))
    path.unlink()
    with pytest.raises(aggregate.AggregateError, match=r"status ok, but .*results.json"):
        aggregate.build_dataset(aggregate.load_index(index), tmp_path)


def test_format_1_and_format_2_give_the_same_dataset(tmp_path):
    index1, _ = one_run(tmp_path / "v1", FEWSHOT_V1)
    index2, _ = one_run(tmp_path / "v2", FEWSHOT_V2, fmt=2)
    ds1 = aggregate.build_dataset(aggregate.load_index(index1), tmp_path / "v1")
    ds2 = aggregate.build_dataset(aggregate.load_index(index2), tmp_path / "v2")
    skip = {"index_path", "results_root"}
    assert {k: v for k, v in ds1.attrs.items() if k not in skip} == {
        k: v for k, v in ds2.attrs.items() if k not in skip
    }
    ds1.attrs, ds2.attrs = {}, {}
    for name in ("result_path",):
        ds1, ds2 = ds1.drop_vars(name), ds2.drop_vars(name)
    assert ds1.identical(ds2)
    # few-shot values sit on their own dims task and shots
    few = ds2["fewshot_error"].sel({"method": "e3", "seed": 0})
    assert float(few.sel(task="mean", shots=5, member="joint")) == 0.4
    assert float(few.sel(task="pets", shots=1, member="disjoint")) == 0.75
    assert int(np.isfinite(ds2["fewshot_error"]).sum()) == 2


def test_format_1_is_upgraded_to_explicit_task_and_shots(tmp_path):
    _, path = one_run(tmp_path, FEWSHOT_V1)
    res = aggregate.read_results(path)
    assert res["format"] == 2
    few = [r for r in res["records"] if r["split"] == "fewshot"]
    assert few == FEWSHOT_V2
    clean = [r for r in res["records"] if r["split"] == "clean"]
    assert clean[0]["corruption"] == "none" and clean[0]["severity"] == 0


def test_unknown_or_malformed_results_formats_are_refused_naming_the_file(tmp_path):
    index, path = one_run(tmp_path, fmt=3)
    with pytest.raises(
        aggregate.AggregateError, match=r"results.json: field format: 3 .*allowed: \[1, 2\]"
    ):
        aggregate.build_dataset(aggregate.load_index(index), tmp_path)
    # format 2 few-shot records need task and shots, and may not use corruption/severity
    res = json.loads(path.read_text())
    res["format"] = 2
    res["records"] = [dict(FEWSHOT_V2[0], shots=None)]
    path.write_text(json.dumps(res))
    with pytest.raises(aggregate.AggregateError, match=r"results.json: field records.0.shots"):
        aggregate.read_results(path)
    res["records"] = [dict(FEWSHOT_V2[0], corruption="mean")]
    path.write_text(json.dumps(res))
    with pytest.raises(
        aggregate.AggregateError, match=r"field records.0: 'corruption' is not one of"
    ):
        aggregate.read_results(path)
    res["records"] = FEWSHOT_V1[:1]  # format-1 records labelled as format 2
    path.write_text(json.dumps(res))
    with pytest.raises(aggregate.AggregateError, match=r"field records.0"):
        aggregate.read_results(path)


def test_results_written_by_evaluate_are_the_format_aggregate_reads(tmp_path):
    preds = {"probs": np.array([[[0.9, 0.1], [0.2, 0.8]]]), "labels": np.array([0, 1])}
    records = evaluate.records_from_predictions(preds, [1], 0)
    evaluate.write_results(tmp_path, {"run_id": "r", "status": "ok", "records": records}, preds)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["format"] == evaluate.RESULTS_FORMAT == max(aggregate.RESULTS_FORMATS)
    assert aggregate.read_results(tmp_path / "results.json")["records"] == records


def test_dataset_format_version_is_written_and_checked(tmp_path):
    index, _ = one_run(tmp_path, FEWSHOT_V2, fmt=2)
    out = tmp_path / "d.nc"
    assert (
        aggregate.cli_aggregate(
            ["--index", str(index), "--results-root", str(tmp_path), "--out", str(out)]
        )
        == 0
    )
    back = aggregate.open_dataset(out)
    assert int(back.attrs["format_version"]) == aggregate.DATASET_FORMAT == 3
    assert "migrated_from_format_version" not in back.attrs
    assert "few-shot task" in back["task"].attrs["long_name"]
    assert "few-shot" not in back["corruption"].attrs["long_name"]
    # 2 is migrated on read (tests/test_aggregate_fewshot.py); others are refused
    for version in (None, 1, 4):
        old = back.copy()
        old.attrs = {k: v for k, v in back.attrs.items() if k != "format_version"}
        if version is not None:
            old.attrs["format_version"] = version
        path = tmp_path / f"old{version}.nc"
        aggregate.write_netcdf_atomic(old, path)
        with pytest.raises(
            aggregate.AggregateError, match=rf"old{version}.nc: .*format_version.*e3 aggregate"
        ):
            aggregate.open_dataset(path)


def test_schema_files_ship_with_the_package_and_are_valid():
    import jsonschema

    names = sorted(p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.json"))
    assert names == ["done", "index", "results-v1", "results-v2", "status"]
    for name in names:
        schema = load_schema(name)
        jsonschema.validators.validator_for(schema).check_schema(schema)
