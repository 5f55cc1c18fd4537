"""Aggregation of synthetic result sets with known means, standard errors and gaps."""

import json
import math
import os

import numpy as np
import pytest
from done_files import write_done_files

from e3lib import aggregate
from e3lib.config import MODEL_SIZES
from e3lib.report import synthetic

# Cells of a small overlap sweep. Seed values are chosen so statistics are exact by hand:
#   e3, o=0:     nll 0.60, 0.61, 0.62  → mean 0.61, std(ddof=1) 0.01, stderr 0.01/√3
#   e3, o=4:     nll 0.62, 0.63, 0.64  → mean 0.63, same spread
#   tiling, o=-: nll 0.64, 0.66, (seed 2 missing) → n=2, mean 0.65,
#                std = √((0.01²+0.01²)/1) = 0.01414, stderr = 0.01414/√2 = 0.01
#   vmoe, o=-:   seed 1 diverged, seed 2 missing → n=1, stderr undefined (NaN)
CELLS = [
    {
        "axes": {"method": "e3", "model.overlap": 0},
        "metrics": {"nll": [0.60, 0.61, 0.62], "kl_diversity": [0.20, 0.21, 0.22]},
        "gflops": 131.0,
        "params": 395,
    },
    {
        "axes": {"method": "e3", "model.overlap": 4},
        "metrics": {"nll": [0.62, 0.63, 0.64], "kl_diversity": [0.14, 0.15, 0.16]},
        "gflops": 131.0,
        "params": 395,
    },
    {
        "axes": {"method": "tiling"},
        "metrics": {"nll": [0.64, 0.66, 0.0], "kl_diversity": [0.0, 0.0, 0.0]},
        "seeds": {2: None},
        "gflops": 138.0,
    },
    {
        "axes": {"method": "vmoe"},
        "metrics": {"nll": [0.70, 0.0, 0.0]},
        "seeds": {1: "diverged", 2: None},
        "gflops": 95.0,
    },
]


def write_sweep(root, *args, **kwargs):
    """A synthetic result set with the done.json status files the workflow writes."""
    index = synthetic.write_sweep(root, *args, **kwargs)
    write_done_files(root, index)
    return index


@pytest.fixture
def sweep(tmp_path):
    index = write_sweep(
        tmp_path, "overlap", ["method", "model.overlap"], [0, 1, 2], CELLS, reproduces=["table3"]
    )
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index_path=index)
    return tmp_path, index, ds


def test_dims_coords_and_safe_axis_names(sweep):
    _, _, ds = sweep
    assert ds["nll"].dims == (
        "method",
        "model__overlap",
        "seed",
        "split",
        "corruption",
        "severity",
        "member",
    )
    assert list(ds["method"].values) == ["e3", "tiling", "vmoe"]
    # numbers first in numeric order, then the placeholder of a conditional axis
    assert list(ds["model__overlap"].values) == ["0", "4", "-"]
    assert ds["model__overlap"].attrs["axis_name"] == "model.overlap"
    assert aggregate.dataset_axes(ds) == ["method", "model.overlap"]
    assert ds["gflops"].dims == ("method", "model__overlap", "seed")


def test_values_status_and_provenance(sweep):
    _, _, ds = sweep
    sel = dict(split="clean", corruption="none", severity=0, member="ensemble")
    nll = ds["nll"].sel({"method": "e3", "model__overlap": "4", **sel})
    np.testing.assert_allclose(nll.values, [0.62, 0.63, 0.64])
    flags = aggregate.STATUS_FLAGS
    st = ds["status"]
    assert list(st.sel({"method": "tiling", "model__overlap": "-"}).values) == [
        0,
        0,
        flags["missing"],
    ]
    assert list(st.sel({"method": "vmoe", "model__overlap": "-"}).values) == [
        0,
        flags["diverged"],
        flags["missing"],
    ]
    # e3 has no "-" overlap cell, tiling has no numeric overlap: never requested
    assert (st.sel({"method": "tiling", "model__overlap": "0"}) == flags["not_requested"]).all()
    assert ds.attrs["entries_ok"] == 9 and ds.attrs["entries_missing"] == 2
    assert ds.attrs["entries_diverged"] == 1
    assert json.loads(ds.attrs["reproduces"]) == ["table3"]
    assert json.loads(ds.attrs["code_commits"]) == ["synthetic"]
    assert ds.attrs["sweep_file_sha256"] == "0" * 64
    assert len(json.loads(ds.attrs["run_status"])) == 12
    assert float(ds["gflops"].sel({"method": "tiling", "model__overlap": "-", "seed": 0})) == 138.0
    assert np.isnan(float(ds["gflops"].sel({"method": "tiling", "model__overlap": "-", "seed": 2})))


def test_seed_stats_known_mean_stderr_and_incomplete_flag(sweep):
    _, _, ds = sweep
    sel = dict(split="clean", corruption="none", severity=0, member="ensemble")
    stats = aggregate.seed_stats(ds["nll"].sel(**sel), ds["status"])
    e3 = stats.sel({"method": "e3", "model__overlap": "0"})
    assert float(e3["mean"]) == pytest.approx(0.61)
    assert float(e3["stderr"]) == pytest.approx(0.01 / math.sqrt(3))
    assert int(e3["n"]) == 3 and bool(e3["complete"])
    tiling = stats.sel({"method": "tiling", "model__overlap": "-"})
    assert float(tiling["mean"]) == pytest.approx(0.65)
    assert float(tiling["stderr"]) == pytest.approx(0.01)
    assert (int(tiling["n"]), int(tiling["n_req"]), bool(tiling["complete"])) == (2, 3, False)
    vmoe = stats.sel({"method": "vmoe", "model__overlap": "-"})
    assert int(vmoe["n"]) == 1 and np.isnan(float(vmoe["stderr"]))
    assert int(stats.sel({"method": "tiling", "model__overlap": "0"})["n_req"]) == 0


def test_netcdf_roundtrip_atomic_and_cli(sweep, tmp_path):
    root, index, ds = sweep
    out = tmp_path / "out" / "dataset.nc"
    rc = aggregate.cli_aggregate(
        ["--index", str(index), "--results-root", str(root), "--out", str(out)]
    )
    assert rc == 0
    # no temp file left; beside the dataset its checksum record, and the training curves
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "curves.done.json",
        "curves.nc",
        "dataset.done.json",
        "dataset.nc",
    ]
    back = aggregate.open_dataset(out)
    np.testing.assert_allclose(back["nll"].values, ds["nll"].values, equal_nan=True)
    assert back.attrs["axes"] == ds.attrs["axes"]
    assert back["model__overlap"].attrs["axis_name"] == "model.overlap"
    assert list(back["run_id"].sel({"method": "e3", "model__overlap": "0"}).values) == list(
        ds["run_id"].sel({"method": "e3", "model__overlap": "0"}).values
    )


def test_failed_write_keeps_previous_file(sweep, tmp_path, monkeypatch):
    _, _, ds = sweep
    out = tmp_path / "d.nc"
    out.write_text("previous")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(ds), "to_netcdf", boom)
    with pytest.raises(OSError):
        aggregate.write_netcdf_atomic(ds, out)
    assert out.read_text() == "previous" and os.listdir(tmp_path).count("d.nc") == 1
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_bad_index_and_results_name_file_and_field(tmp_path, capsys):
    index = write_sweep(
        tmp_path, "s", ["method"], [0], [{"axes": {"method": "e3"}, "metrics": {"nll": [0.5]}}]
    )
    doc = json.loads(index.read_text())
    doc["entries"][0]["kind"] = "bogus"
    index.write_text(json.dumps(doc))
    rc = aggregate.cli_aggregate(
        ["--index", str(index), "--results-root", str(tmp_path), "--out", str(tmp_path / "x.nc")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and str(index) in err and "entries.0.kind" in err and "run" in err
    doc["entries"][0]["kind"] = "run"
    index.write_text(json.dumps(doc))
    result = tmp_path / "runs" / doc["entries"][0]["id"] / "results.json"
    res = json.loads(result.read_text())
    res["records"][0]["split"] = "test"
    result.write_text(json.dumps(res))
    with pytest.raises(aggregate.AggregateError, match=r"results.json: field records.0.split"):
        aggregate.build_dataset(aggregate.load_index(index), tmp_path)


def test_duplicate_entry_is_an_error(tmp_path):
    index = write_sweep(
        tmp_path, "s", ["method"], [0], [{"axes": {"method": "e3"}, "metrics": {"nll": [0.5]}}]
    )
    doc = json.loads(index.read_text())
    doc["entries"].append(dict(doc["entries"][0], id="other"))
    index.write_text(json.dumps(doc))
    with pytest.raises(aggregate.AggregateError, match="entries.1: a second entry"):
        aggregate.build_dataset(aggregate.load_index(index), tmp_path, index_path=index)


def test_record_dims_from_mixed_splits_and_null_values(tmp_path):
    index = write_sweep(
        tmp_path, "s", ["method"], [0], [{"axes": {"method": "e3"}, "metrics": {"nll": [0.5]}}]
    )
    doc = json.loads(index.read_text())
    result = tmp_path / "runs" / doc["entries"][0]["id"] / "results.json"
    res = json.loads(result.read_text())
    res["records"] += [
        {
            "split": "corrupted",
            "corruption": "gaussian_noise",
            "severity": 3,
            "member": "1",
            "metric": "nll",
            "value": 1.25,
        },
        {
            "split": "shifted",
            "corruption": "v2",
            "severity": 0,
            "member": "ensemble",
            "metric": "error",
            "value": None,
        },  # undefined → NaN
        {
            "split": "fewshot",
            "corruption": "mean",
            "severity": 5,
            "member": "joint",
            "metric": "fewshot_error",
            "value": 0.4,
        },
    ]
    result.write_text(json.dumps(res))
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path)
    # few-shot records have their own dims (task, shots), not split/corruption/severity
    assert list(ds["split"].values) == ["clean", "corrupted", "shifted"]
    assert list(ds["severity"].values) == [0, 3]
    assert list(ds["task"].values) == ["mean"] and list(ds["shots"].values) == [5]
    assert list(ds["member"].values) == ["1", "ensemble", "joint"]
    assert ds["fewshot_error"].dims == ("method", "seed", "task", "shots", "member")
    assert sorted(json.loads(ds.attrs["metrics"])) == ["error", "fewshot_error", "nll"]
    nll = ds["nll"].sel({"method": "e3", "seed": 0})
    assert (
        float(nll.sel(split="corrupted", corruption="gaussian_noise", severity=3, member="1"))
        == 1.25
    )
    assert float(nll.sel(split="clean", corruption="none", severity=0, member="ensemble")) == 0.5
    # a combination no record names stays NaN, as does a null value
    assert np.isnan(float(nll.sel(split="clean", corruption="none", severity=0, member="1")))
    assert np.isnan(
        float(
            ds["error"].sel(
                {
                    "method": "e3",
                    "seed": 0,
                    "split": "shifted",
                    "corruption": "v2",
                    "severity": 0,
                    "member": "ensemble",
                }
            )
        )
    )
    assert int(np.isfinite(ds["fewshot_error"]).sum()) == 1
    assert float(ds["fewshot_error"].sel(task="mean", shots=5, member="joint").squeeze()) == 0.4


def test_stale_result_under_changed_default_is_an_error(tmp_path):
    # A finished run whose stored config differs from the index's (a default changed after
    # it ran, so its id no longer describes it) must not be averaged in silently.
    cells = [{"axes": {"method": "e3"}, "metrics": {"nll": [0.6]}}]
    index_path = write_sweep(tmp_path, "s", ["method"], [0], cells)
    index = json.loads(index_path.read_text())
    entry = index["entries"][0]
    entry["config"] = {"axes": {"method": "e3"}, "model": {"capacity_factor": 2.0}}
    result_path = tmp_path / "runs" / entry["id"] / "results.json"
    result = json.loads(result_path.read_text())
    result["config"] = {"axes": {"method": "e3"}, "model": {"capacity_factor": 1.5}}
    result_path.write_text(json.dumps(result))
    with pytest.raises(aggregate.AggregateError, match=r"stale result.*model\.capacity_factor"):
        aggregate.build_dataset(index, tmp_path, index_path=index_path)
    result["config"] = entry["config"]
    result_path.write_text(json.dumps(result))
    ds = aggregate.build_dataset(index, tmp_path, index_path=index_path)
    assert int(ds["status"].values.ravel()[0]) == aggregate.STATUS_FLAGS["ok"]
    # Same config, but the size's entry in MODEL_SIZES is not the shape the run stored.
    entry["config"]["model"]["size"] = "tiny"
    result["config"] = entry["config"]
    result["model_shape"] = dict(MODEL_SIZES["tiny"], hidden=48)
    result_path.write_text(json.dumps(result))
    with pytest.raises(aggregate.AggregateError, match=r"stale result.*model\.size.*MODEL_SIZES"):
        aggregate.build_dataset(index, tmp_path, index_path=index_path)


def test_result_computed_under_another_run_id_is_an_error(tmp_path):
    # A results.json records the id it was computed under; one found at an entry of
    # another id (e.g. copied from a results folder of an older id scheme) is refused.
    cells = [{"axes": {"method": "e3"}, "metrics": {"nll": [0.6]}}]
    index_path = write_sweep(tmp_path, "s", ["method"], [0], cells)
    index = json.loads(index_path.read_text())
    entry = index["entries"][0]
    result_path = tmp_path / "runs" / entry["id"] / "results.json"
    result = json.loads(result_path.read_text())
    assert result["run_id"] == entry["id"]
    aggregate.build_dataset(index, tmp_path, index_path=index_path)
    result["run_id"] = "0123456789ab"
    result_path.write_text(json.dumps(result))
    with pytest.raises(aggregate.AggregateError, match=r"run_id.*'0123456789ab'.*another run id"):
        aggregate.build_dataset(index, tmp_path, index_path=index_path)
