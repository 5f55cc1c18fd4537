"""Few-shot metrics in the sweep dataset (format_version 3): their own dims ``task`` and
``shots``, values placed at hand-derived coordinates, corrupted values untouched, and
format-2 files (few-shot values at split fewshot, task in corruption, shots in severity)
migrated on read."""

import json

import numpy as np
import pytest
import xarray as xr
from done_files import write_done_files

from e3lib import aggregate
from e3lib.report import synthetic
from e3lib.report.rows import sweep_rows
from e3lib.report.spec import SpecError, default_spec

# Two runs (method e3 with a joint few-shot classifier, vmoe with one member), one seed.
# Few-shot error per (task, shots); "mean" is the mean over the two tasks, by hand:
#   e3:   birds 0.60 / 0.40, pets 0.40 / 0.20 → mean 0.50 / 0.30 (1 / 5 shots)
#   vmoe: birds 0.70 / 0.50, pets 0.50 / 0.30 → mean 0.60 / 0.40
FEWSHOT = {
    "e3": ("joint", {("birds", 1): 0.60, ("birds", 5): 0.40, ("pets", 1): 0.40,
                     ("pets", 5): 0.20, ("mean", 1): 0.50, ("mean", 5): 0.30}),
    "vmoe": ("ensemble", {("birds", 1): 0.70, ("birds", 5): 0.50, ("pets", 1): 0.50,
                          ("pets", 5): 0.30, ("mean", 1): 0.60, ("mean", 5): 0.40}),
}  # fmt: skip
CLEAN_NLL = {"e3": 0.5, "vmoe": 0.6}
CORRUPTED_NLL = {"e3": 1.25, "vmoe": 1.5}  # gaussian_noise, severity 3


def fewshot_sweep(root):
    """The two runs above as format-2 results.json files; returns the index path."""
    cells = [{"axes": {"method": m}, "metrics": {"nll": [CLEAN_NLL[m]]}} for m in FEWSHOT]
    index = synthetic.write_sweep(root, "fs", ["method"], [0], cells)
    write_done_files(root, index)
    for entry in json.loads(index.read_text())["entries"]:
        method = entry["axes"]["method"]
        member, errors = FEWSHOT[method]
        path = root / "runs" / entry["id"] / "results.json"
        res = json.loads(path.read_text())
        res["format"] = 2
        res["records"].append(
            {"split": "corrupted", "corruption": "gaussian_noise", "severity": 3,
             "member": "ensemble", "metric": "nll", "value": CORRUPTED_NLL[method]}
        )  # fmt: skip
        res["records"] += [
            {"split": "fewshot", "task": task, "shots": shots, "member": member,
             "metric": "fewshot_error", "value": value}
            for (task, shots), value in errors.items()
        ]  # fmt: skip
        path.write_text(json.dumps(res))
    return index


@pytest.fixture
def built(tmp_path):
    index = fewshot_sweep(tmp_path)
    return aggregate.build_dataset(aggregate.load_index(index), tmp_path, index_path=index)


def test_fewshot_values_sit_on_task_and_shots_dims(built):
    ds = built
    few = ds["fewshot_error"]
    assert few.dims == ("method", "seed", "task", "shots", "member")
    assert few.attrs == {"kind": "metric", "split": "fewshot"}
    assert list(ds["task"].values) == ["birds", "mean", "pets"]
    assert list(ds["shots"].values) == [1, 5] and ds["shots"].dtype == np.int64
    assert list(ds["member"].values) == ["ensemble", "joint"]
    # (task, shots) grid of each run at its member, rows birds/mean/pets, columns 1/5 shots
    e3 = few.sel({"method": "e3", "seed": 0, "member": "joint"}).values
    np.testing.assert_array_equal(e3, [[0.60, 0.40], [0.50, 0.30], [0.40, 0.20]])
    vmoe = few.sel({"method": "vmoe", "seed": 0, "member": "ensemble"}).values
    np.testing.assert_array_equal(vmoe, [[0.70, 0.50], [0.60, 0.40], [0.50, 0.30]])
    # no record at the other member
    assert np.isnan(few.sel({"method": "e3", "member": "ensemble"}).values).all()
    assert np.isnan(few.sel({"method": "vmoe", "member": "joint"}).values).all()
    assert int(np.isfinite(few).sum()) == 12


def test_corrupted_and_clean_values_keep_their_dims(built):
    ds = built
    nll = ds["nll"]
    assert nll.dims == ("method", "seed", "split", "corruption", "severity", "member")
    assert list(ds["split"].values) == ["clean", "corrupted"]  # no "fewshot" split
    assert list(ds["corruption"].values) == ["gaussian_noise", "none"]  # no task names
    assert list(ds["severity"].values) == [0, 3]  # no shot counts
    for method in FEWSHOT:
        at = nll.sel({"method": method, "seed": 0, "member": "ensemble"})
        assert (
            float(at.sel(split="corrupted", corruption="gaussian_noise", severity=3))
            == (CORRUPTED_NLL[method])
        )
        assert float(at.sel(split="clean", corruption="none", severity=0)) == CLEAN_NLL[method]
    assert int(np.isfinite(nll).sum()) == 4


def metrics_of(ds: xr.Dataset) -> xr.Dataset:
    """The metric variables with their coordinates (and all attrs but the dataset's)."""
    out = ds[["nll", "fewshot_error"]]
    out.attrs = {}
    return out


def test_netcdf_roundtrip_keeps_the_layout(built, tmp_path):
    out = aggregate.write_netcdf_atomic(built, tmp_path / "d.nc")
    back = aggregate.open_dataset(out)
    assert int(back.attrs["format_version"]) == 3
    xr.testing.assert_identical(metrics_of(back), metrics_of(built))


def format2_dataset(built: xr.Dataset) -> xr.Dataset:
    """The same results in the format-2 layout, placed by hand: few-shot values at split
    fewshot, corruption = task, severity = shots."""
    split = ["clean", "corrupted", "fewshot"]
    corruption = ["birds", "gaussian_noise", "mean", "none", "pets"]
    severity = [0, 1, 3, 5]
    member = ["ensemble", "joint"]
    methods = list(built["method"].values)
    shape = (len(methods), 1, len(split), len(corruption), len(severity), len(member))
    nll, few = np.full(shape, np.nan), np.full(shape, np.nan)
    for i, m in enumerate(methods):
        nll[i, 0, 0, 3, 0, 0] = CLEAN_NLL[m]  # clean, none, 0, ensemble
        nll[i, 0, 1, 1, 2, 0] = CORRUPTED_NLL[m]  # corrupted, gaussian_noise, 3, ensemble
        fs_member, errors = FEWSHOT[m]
        for (task, shots), value in errors.items():
            pos = (corruption.index(task), severity.index(shots), member.index(fs_member))
            few[(i, 0, 2) + pos] = value
    dims = ("method", "seed", "split", "corruption", "severity", "member")
    old = xr.Dataset(
        {
            "nll": (dims, nll, {"kind": "metric"}),
            "fewshot_error": (dims, few, {"kind": "metric"}),
            **{name: built[name] for name in ("status", "run_id", "result_path")},
        },
        coords={
            "method": built["method"],
            "seed": built["seed"],
            "split": ("split", split, {"long_name": "evaluation split"}),
            "corruption": ("corruption", corruption, {"long_name": "... few-shot task ..."}),
            "severity": ("severity", np.asarray(severity, dtype=np.int64)),
            "member": ("member", member),
        },
    )
    old.attrs = {**built.attrs, "format_version": 2}
    return old


def test_format_2_file_is_migrated_on_read(built, tmp_path):
    path = tmp_path / "old.nc"
    aggregate.write_netcdf_atomic(format2_dataset(built), path)
    ds = aggregate.open_dataset(path)
    assert int(ds.attrs["format_version"]) == aggregate.DATASET_FORMAT == 3
    assert int(ds.attrs["migrated_from_format_version"]) == 2
    # exactly the dataset aggregation writes today: values, coordinates and their attrs
    xr.testing.assert_identical(metrics_of(ds), metrics_of(built))
    # and the report reads the same few-shot numbers from both
    cols = ["fs1", "fs5"]
    for a, b in zip(sweep_rows(ds, cols), sweep_rows(built, cols), strict=True):
        assert a.key == b.key
        assert [a.stats[c].mean for c in cols] == [b.stats[c].mean for c in cols]
    e3 = next(r for r in sweep_rows(ds, ["fs1", "fs5"]) if r.key["method"] == "e3")
    assert (e3.stats["fs1"].mean, e3.stats["fs5"].mean) == (0.50, 0.30)  # task mean, joint


def test_format_2_without_fewshot_and_unmigratable_files(built, tmp_path):
    old = format2_dataset(built)
    plain = old.drop_vars("fewshot_error").drop_sel(split="fewshot")
    aggregate.write_netcdf_atomic(plain, tmp_path / "plain.nc")
    ds = aggregate.open_dataset(tmp_path / "plain.nc")
    assert ds.sizes["task"] == 0 and ds.sizes["shots"] == 0
    # the corruption/severity values no metric used stay (nothing marks them few-shot)
    assert list(ds["corruption"].values) == list(old["corruption"].values)
    xr.testing.assert_equal(ds["nll"], plain["nll"])
    # a variable with values both at split fewshot and elsewhere has no format-3 layout
    both = old.copy(deep=True)
    both["fewshot_error"].loc[{"split": "clean", "corruption": "none", "severity": 0}] = 0.1
    aggregate.write_netcdf_atomic(both, tmp_path / "both.nc")
    with pytest.raises(
        aggregate.AggregateError,
        match=r"both.nc: format_version 2: variable 'fewshot_error' .*e3 aggregate --index",
    ):
        aggregate.open_dataset(tmp_path / "both.nc")


def test_metric_selecting_the_old_fewshot_coordinates_is_a_spec_error(built):
    spec = default_spec()
    old_style = {"split": "fewshot", "corruption": "mean", "severity": 5, "member": "joint"}
    spec["metrics"]["fs5"] = {**spec["metrics"]["fs5"], "select": old_style}
    with pytest.raises(SpecError, match=r"metric fs5: field select: \['split', 'corruption'"):
        sweep_rows(built, ["fs5"], spec=spec)
    spec["metrics"]["fs5"]["select"] = {"task": "mean", "member": "joint"}  # shots unset
    with pytest.raises(SpecError, match=r"metric fs5: .*needs a value for dims \['shots'\]"):
        sweep_rows(built, ["fs5"], spec=spec)
