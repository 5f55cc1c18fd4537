"""Results of all entries of a sweep → one xarray Dataset (``build_dataset``), and its
netCDF file (``write_netcdf_atomic``, ``open_dataset``). Layout: see ``e3lib.aggregate``.

Notation: A sweep axes, S seeds; a *cell* is one (axis values..., seed) position.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from e3lib import atomic, integrity
from e3lib.aggregate.axes import axis_dim, axis_label, sort_key
from e3lib.aggregate.formats import (
    DATASET_FORMAT,
    FEWSHOT_DIMS,
    FEWSHOT_SPLIT,
    INT_DIMS,
    MIGRATED_DATASET_FORMATS,
    RECORD_DIM_NAMES,
    RECORD_DIMS,
    STATUS_FLAGS,
    entry_status,
    read_results,
    record_dims,
    record_key,
)
from e3lib.aggregate.migrate import migrate_v2
from e3lib.aggregate.schemas import AggregateError, read_json, validate
from e3lib.config import stale_fields, stale_size_shape

COST_FIELDS = {
    "gflops": "gflops_per_image_train",
    "params": "params",
    "train_seconds": "train_seconds",
}
COST_UNITS = {"gflops": "GFLOPs per image (training)", "params": "count", "train_seconds": "s"}
# provenance.throughput fields (e3lib.monitor) → variables; NaN for results without them
# (written before throughput was recorded, deep ensembles)
THROUGHPUT_FIELDS = {
    "images_per_second_per_device": "images/s per device (steady state)",
    "device_hours": "device-hours (the run's share of its job)",
    "mfu": "model FLOPs utilisation (fraction of the device's peak)",
}
# netCDF4 (HDF5 underneath) reads and writes on its own; h5netcdf would also need h5py.
NETCDF_ENGINE = "netcdf4"


def _package_versions() -> dict[str, str]:
    out = {}
    for name in ("e3lib", "jax", "flax", "optax", "numpy", "xarray"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def resolve_result_path(result: str, results_root: Path) -> Path:
    """Index paths are written as ``results/...``; re-root them under ``results_root``."""
    p = Path(result)
    if p.is_absolute():
        return p
    if p.parts[:1] == ("results",):
        p = Path(*p.parts[1:])
    return Path(results_root) / p


def load_index(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise AggregateError(f"{path}: index file not found")
    index = read_json(path)
    validate(index, "index", path)
    unknown = sorted(set((index.get("select") or {}).get("over", [])) - set(index["axes"]))
    if unknown:
        raise AggregateError(
            f"{path}: field select.over: {unknown} are not axes of the sweep; "
            f"allowed: {index['axes']}"
        )
    for i, entry in enumerate(index["entries"]):
        unknown = sorted(set(entry["axes"]) - set(index["axes"]))
        if unknown:
            raise AggregateError(
                f"{path}: field entries.{i}.axes: unknown axes {unknown}; allowed: {index['axes']}"
            )
    return index


def _check_fresh(entry: Mapping[str, Any], result: Mapping[str, Any], path: Path) -> None:
    if entry.get("kind") != "run":
        return
    if result.get("run_id") not in (None, entry["id"]):
        raise AggregateError(
            f"{path}: field run_id: {result['run_id']!r}, but the index entry is run "
            f"{entry['id']}: the result was computed under another run id (ids hash the "
            f"resolved config; docs/workflow.md, 'Run ids'); re-run it with `e3 run` on "
            f"configs/{entry['id']}.json"
        )
    if not entry.get("config") or not result.get("config"):
        return
    changed = stale_fields(result["config"], entry["config"]) + stale_size_shape(
        result.get("model_shape"), entry["config"]
    )
    if changed:
        raise AggregateError(
            f"{path}: stale result of run {entry['id']}: field(s) {changed} differ "
            f"from the current config (a default, or the shape of the model size in "
            f"e3lib.config.MODEL_SIZES, changed since it ran); re-run it with "
            f"`snakemake --forcerun ...` or `e3 run`, or restore the old value"
        )


def damaged_entries(index: Mapping[str, Any], results_root: str | Path) -> dict[str, str]:
    """{done.json: what is wrong} for every entry whose recorded files fail the deep
    (SHA-256) check of ``e3lib.integrity``; entries with no done.json are just missing."""
    damaged = {}
    for entry in index["entries"]:
        done = resolve_result_path(entry["result"], Path(results_root)).parent / "done.json"
        if done.exists() and (problem := integrity.check(done, deep=True)):
            damaged[str(done)] = problem
    return damaged


def dataset_done_path(dataset: str | Path) -> Path:
    """The checksum record beside a dataset: ``dataset.nc`` → ``dataset.done.json``."""
    return Path(dataset).with_suffix(".done.json")


def build_dataset(
    index: Mapping[str, Any], results_root: str | Path, index_path: str | Path = ""
) -> xr.Dataset:
    """Gather every entry's status (done.json) and results.json into one Dataset."""
    root = Path(results_root)
    axes: list[str] = list(index["axes"])
    seeds = sorted(set(index["seeds"]) | {e["seed"] for e in index["entries"]})

    # Axis coordinates: every value some entry uses, numbers first in numeric order.
    axis_values: dict[str, list[Any]] = {}
    for axis in axes:
        seen: dict[str, Any] = {}
        for entry in index["entries"]:
            v = entry["axes"].get(axis)
            seen.setdefault(axis_label(v), v)
        axis_values[axis] = sorted(seen.values(), key=sort_key)
    axis_pos = {
        a: {axis_label(v): i for i, v in enumerate(vals)} for a, vals in axis_values.items()
    }
    seed_pos = {s: i for i, s in enumerate(seeds)}
    cell_shape = tuple(len(axis_values[a]) for a in axes) + (len(seeds),)

    status = np.full(cell_shape, STATUS_FLAGS["not_requested"], dtype=np.int8)
    run_ids = np.full(cell_shape, "", dtype=object)
    result_paths = np.full(cell_shape, "", dtype=object)
    costs = {name: np.full(cell_shape, np.nan) for name in (*COST_FIELDS, *THROUGHPUT_FIELDS)}
    loaded: list[tuple[tuple[int, ...], list[dict]]] = []
    commits: set[str] = set()
    packages: dict[str, set[str]] = {}
    run_status: dict[str, str] = {}
    failed_members: dict[str, dict[str, str]] = {}
    metric_dims: dict[str, tuple[str, ...]] = {}  # metric → its record dims

    for i, entry in enumerate(index["entries"]):
        # cell index: one position per axis, then the seed (shape: cell_shape)
        cell = tuple(axis_pos[a][axis_label(entry["axes"].get(a))] for a in axes)
        cell += (seed_pos[entry["seed"]],)
        if status[cell] != STATUS_FLAGS["not_requested"]:
            raise AggregateError(
                f"{index_path or 'index'}: field entries.{i}: a second entry for axes "
                f"{entry['axes']} seed {entry['seed']} (first: {run_ids[cell]}, "
                f"now: {entry['id']})"
            )
        run_ids[cell] = entry["id"]
        result_path = resolve_result_path(entry["result"], root)
        result_paths[cell] = str(result_path)
        state, members = entry_status(result_path.parent / "done.json")
        run_status[entry["id"]] = state
        status[cell] = STATUS_FLAGS[state]
        if members:
            failed_members[entry["id"]] = members
        if state != "ok":
            continue
        if not result_path.exists():
            raise AggregateError(
                f"{result_path.parent / 'done.json'}: status ok, but {result_path} does not exist"
            )
        result = read_results(result_path)
        if result["status"] != "ok":
            raise AggregateError(
                f"{result_path}: field status: {result['status']!r}, but done.json says 'ok'"
            )
        _check_fresh(entry, result, result_path)
        for name, field in COST_FIELDS.items():
            v = (result.get("cost") or {}).get(field)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                costs[name][cell] = float(v)
        prov = result.get("provenance") or {}
        for name in THROUGHPUT_FIELDS:
            v = (prov.get("throughput") or {}).get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                costs[name][cell] = float(v)
        if prov.get("code_commit"):
            commits.add(str(prov["code_commit"]))
        for pkg, ver in (prov.get("packages") or {}).items():
            packages.setdefault(pkg, set()).add(str(ver))
        loaded.append((cell, result["records"]))
        for r in result["records"]:  # a metric lives on the dims of its split's kind
            if metric_dims.setdefault(r["metric"], record_dims(r)) != record_dims(r):
                raise AggregateError(
                    f"{result_path}: field records: metric {r['metric']!r} is recorded "
                    f"on split fewshot and on other splits; a metric name belongs to the "
                    f"few-shot records (dims {list(FEWSHOT_DIMS)}) or to the others "
                    f"(dims {list(RECORD_DIMS)}), not both"
                )

    # Record coordinates: per record dim, the union over all loaded records having it.
    all_dims = RECORD_DIMS + tuple(d for d in FEWSHOT_DIMS if d not in RECORD_DIMS)
    seen_coords: dict[str, set] = {d: set() for d in all_dims}
    for _, records in loaded:
        for r in records:
            for d, k in zip(record_dims(r), record_key(r)):
                seen_coords[d].add(k)
    rec_coords = {d: sorted(seen_coords[d], key=sort_key) for d in all_dims}
    rec_pos = {d: {v: i for i, v in enumerate(vals)} for d, vals in rec_coords.items()}
    metrics = sorted(metric_dims, key=sort_key)
    values = {
        m: np.full(cell_shape + tuple(len(rec_coords[d]) for d in metric_dims[m]), np.nan)
        for m in metrics
    }
    for cell, records in loaded:
        for r in records:
            pos = cell + tuple(rec_pos[d][k] for d, k in zip(record_dims(r), record_key(r)))
            values[r["metric"]][pos] = np.nan if r["value"] is None else float(r["value"])

    cell_dims = tuple(axis_dim(a) for a in axes) + ("seed",)
    coords: dict[str, Any] = {}
    for a in axes:
        coords[axis_dim(a)] = xr.Variable(
            axis_dim(a),
            [axis_label(v) for v in axis_values[a]],
            attrs={"axis_name": a, "values_json": json.dumps(axis_values[a])},
        )
    coords["seed"] = ("seed", np.asarray(seeds, dtype=np.int64))
    for d, vals in rec_coords.items():
        dtype = np.int64 if d in INT_DIMS else str
        coords[d] = (d, np.asarray(vals, dtype=dtype), {"long_name": RECORD_DIM_NAMES[d]})

    data_vars: dict[str, Any] = {}
    for m in metrics:
        few = metric_dims[m] == FEWSHOT_DIMS
        attrs = {"kind": "metric"} | ({"split": FEWSHOT_SPLIT} if few else {})
        data_vars[m] = (cell_dims + metric_dims[m], values[m], attrs)
    for name in COST_FIELDS:
        data_vars[name] = (cell_dims, costs[name], {"kind": "cost", "units": COST_UNITS[name]})
    for name, units in THROUGHPUT_FIELDS.items():
        data_vars[name] = (cell_dims, costs[name], {"kind": "cost", "units": units})
    data_vars["status"] = (
        cell_dims,
        status,
        {
            "kind": "bookkeeping",
            "flag_values": np.asarray(list(STATUS_FLAGS.values()), dtype=np.int8),
            "flag_meanings": " ".join(STATUS_FLAGS),
        },
    )
    data_vars["run_id"] = (cell_dims, run_ids.astype(str), {"kind": "bookkeeping"})
    data_vars["result_path"] = (cell_dims, result_paths.astype(str), {"kind": "bookkeeping"})

    counts = {k: int((status == v).sum()) for k, v in STATUS_FLAGS.items()}
    attrs = {
        "format_version": DATASET_FORMAT,
        "sweep": index["sweep"],
        "title": index.get("title", ""),
        "sweep_file": index.get("file", ""),
        "sweep_file_sha256": index.get("file_sha256", ""),
        "variant": index.get("variant", ""),
        "reproduces": json.dumps(list(index.get("reproduces", []))),
        "axes": json.dumps(axes),
        "seeds_requested": json.dumps(list(index["seeds"])),
        "index_path": str(index_path),
        "results_root": str(results_root),
        "run_status": json.dumps(run_status, sort_keys=True),
        # {ensemble id: {member run id: its status}} of member_failed ensembles
        "failed_members": json.dumps(failed_members, sort_keys=True),
        "entries_ok": counts["ok"],
        "entries_missing": counts["missing"],
        "entries_diverged": counts["diverged"],
        "entries_member_failed": counts["member_failed"],
        "code_commits": json.dumps(sorted(commits)),
        "run_packages": json.dumps({k: sorted(v) for k, v in sorted(packages.items())}),
        "aggregate_packages": json.dumps(_package_versions()),
        "metrics": json.dumps(metrics),
        # hyperparameter selection declared by the sweep ("null": none); see select_grid
        "select": json.dumps(index.get("select")),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def write_netcdf_atomic(ds: xr.Dataset, out: str | Path) -> Path:
    """Write ``ds`` to a temporary file beside ``out``, then rename it into place."""
    # metric cubes are mostly NaN (not every split has every corruption/severity)
    encoding = {
        name: {"zlib": True, "complevel": 4}
        for name, var in ds.data_vars.items()
        if var.dtype.kind == "f"
    }
    with atomic.atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine=NETCDF_ENGINE, encoding=encoding)
    # its size and SHA-256, checked before the dataset is used (workflow start, e3 report)
    done = dataset_done_path(out)
    atomic.write_json(done, {"status": "ok", "files": integrity.record([out], done.parent)})
    return Path(out)


def open_dataset(path: str | Path) -> xr.Dataset:
    """Load a sweep dataset fully into memory (the file is closed on return).

    A file of ``format_version`` 2 is migrated to the current layout on read
    (``e3lib.aggregate.migrate``; attribute ``migrated_from_format_version``). Any other
    version than ``DATASET_FORMAT`` is refused, naming the file and the command that
    re-creates it from the results.
    """
    with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
        version = ds.attrs.get("format_version")
        if version is not None and int(version) in MIGRATED_DATASET_FORMATS:
            return migrate_v2(ds.load(), path)
        if version is None or int(version) != DATASET_FORMAT:
            what = (
                "has no format_version (written before datasets were versioned; it "
                "counted ensembles with a failed member as missing)"
                if version is None
                else f"has format_version {int(version)}"
            )
            readable = [DATASET_FORMAT, *MIGRATED_DATASET_FORMATS]
            raise AggregateError(
                f"{path}: {what}; this e3lib reads format_version {DATASET_FORMAT} "
                f"(and migrates {list(MIGRATED_DATASET_FORMATS)}; allowed: {readable}). "
                f"Re-create it from the results: e3 aggregate --index "
                f"results/sweeps/SWEEP/index.json --out {path}"
            )
        return ds.load()
