"""Results of all runs of a sweep → one xarray Dataset (netCDF), and seed statistics.

Notation: S seeds, n seeds with a value in a cell, n_req seeds the sweep requested there.

Dataset layout (``results/sweeps/{sweep}/dataset.nc``)
-----------------------------------------------------
dims        one per sweep axis (netCDF-safe name, see ``axis_dim``), then ``seed``,
            ``split``, ``corruption``, ``severity``, ``member``
metrics     one float64 variable per metric name (``nll``, ``error``, ...), dims
            (axes..., seed, split, corruption, severity, member); NaN = no record
cost        ``gflops``, ``params``, ``train_seconds``: dims (axes..., seed)
bookkeeping ``status`` (axes..., seed): int8 with CF ``flag_values``/``flag_meanings``
            (ok, missing, diverged, not_requested); ``run_id`` and ``result_path``
            (axes..., seed) strings, "" where no entry exists
attrs       provenance: sweep name/file/hash, variant, axes (original dotted names),
            reproduces, run ids with status, code commits, package versions; ``select``
            (the sweep's selection block as JSON, "null" without one)

Axis coordinates hold the axis values as strings (``axis_label``), so that an axis whose
values mix numbers and text, or that is absent for some methods (conditional axes,
shown as ``"-"``), still has one coordinate; the original values are kept as JSON in
the coordinate's ``values_json`` attribute.

Statistics (``seed_stats``) are computed here, never in templates: mean over seeds,
standard error = std(ddof=1)/√n, n, n_req and ``complete`` = (n == n_req).

Hyperparameter selection (``select_grid``): a sweep's ``select`` block (attrs ``select``,
JSON) names grid axes; the report views the dataset with those axes removed, each cell at
the grid point with the best mean over seeds of a validation metric. The file keeps the
full grid; the selection is computed from it, in that one function.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import numpy as np
import xarray as xr

from e3lib import atomic
from e3lib.config import stale_fields, stale_size_shape

RECORD_DIMS = ("split", "corruption", "severity", "member")
COST_FIELDS = {"gflops": "gflops_per_image_train", "params": "params",
               "train_seconds": "train_seconds"}
STATUS_FLAGS = {"ok": 0, "missing": 1, "diverged": 2, "not_requested": 3}
MISSING_AXIS_LABEL = "-"
# netCDF4 (HDF5 underneath) reads and writes on its own; h5netcdf would also need h5py.
NETCDF_ENGINE = "netcdf4"
SPLITS = ("val", "clean", "corrupted", "shifted", "ood_near", "ood_far", "fewshot")

INDEX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["sweep", "axes", "seeds", "entries"],
    "properties": {
        "sweep": {"type": "string", "minLength": 1},
        "file": {"type": "string"},
        "file_sha256": {"type": "string"},
        "variant": {"type": "string"},
        "title": {"type": "string"},
        "reproduces": {"type": "array", "items": {"type": "string"}},
        "axes": {"type": "array", "items": {"type": "string"}},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "select": {
            "type": "object",
            "required": ["over", "metric", "split", "mode", "member"],
            "properties": {
                "over": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "metric": {"type": "string"},
                "split": {"enum": list(SPLITS)},
                "mode": {"enum": ["min", "max"]},
                "member": {"type": "string"},
            },
        },
        "entries": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "kind", "seed", "axes", "result"],
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "kind": {"enum": ["run", "ensemble"]},
                    "seed": {"type": "integer"},
                    "axes": {"type": "object"},
                    "result": {"type": "string"},
                    "members": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

RESULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "records"],
    "properties": {
        "status": {"type": "string"},
        "cost": {"type": "object"},
        "provenance": {"type": "object"},
        "records": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["split", "corruption", "severity", "member", "metric", "value"],
                "properties": {
                    "split": {"enum": list(SPLITS)},
                    "corruption": {"type": "string"},
                    "severity": {"type": "integer"},
                    "member": {"type": "string"},
                    "metric": {"type": "string", "minLength": 1},
                    "value": {"type": ["number", "null"]},
                },
            },
        },
    },
}


class AggregateError(ValueError):
    """Bad index or results file; the message names the file and the field."""


_VALIDATORS: dict[int, jsonschema.protocols.Validator] = {}


def _validate(doc: Any, schema: Mapping[str, Any], path: str | Path) -> None:
    # one checked validator per schema: jsonschema.validate re-checks the schema per call,
    # which dominated aggregating a thousand runs
    validator = _VALIDATORS.get(id(schema))
    if validator is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validator = _VALIDATORS[id(schema)] = cls(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if err is not None:
        field = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise AggregateError(f"{path}: field {field}: {err.message}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AggregateError(f"{path}: not valid JSON ({err})") from None


# --------------------------------------------------------------------------- axis names

def axis_dim(axis: str) -> str:
    """netCDF-safe dimension name of a sweep axis: ``model.overlap`` → ``model__overlap``."""
    return axis.replace(".", "__")


def axis_label(value: Any) -> str:
    """Canonical text of an axis value (coordinates and reference keys compare by it).

    Whole floats print as integers (2.0 → "2") so YAML ``2`` and JSON ``2.0`` agree.
    """
    if value is None:
        return MISSING_AXIS_LABEL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def dataset_axes(ds: xr.Dataset) -> list[str]:
    """Original (dotted) axis names of a sweep dataset, in sweep order."""
    return list(json.loads(ds.attrs["axes"]))


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


# --------------------------------------------------------------------------- building

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
    index = _read_json(path)
    _validate(index, INDEX_SCHEMA, path)
    unknown = sorted(set((index.get("select") or {}).get("over", [])) - set(index["axes"]))
    if unknown:
        raise AggregateError(f"{path}: field select.over: {unknown} are not axes of the sweep; "
                             f"allowed: {index['axes']}")
    for i, entry in enumerate(index["entries"]):
        unknown = sorted(set(entry["axes"]) - set(index["axes"]))
        if unknown:
            raise AggregateError(f"{path}: field entries.{i}.axes: unknown axes {unknown}; "
                                 f"allowed: {index['axes']}")
    return index


def build_dataset(index: Mapping[str, Any], results_root: str | Path,
                  index_path: str | Path = "") -> xr.Dataset:
    """Gather every entry's results.json into one Dataset (see module docstring)."""
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
        axis_values[axis] = sorted(seen.values(), key=_sort_key)
    axis_pos = {a: {axis_label(v): i for i, v in enumerate(vals)}
                for a, vals in axis_values.items()}
    seed_pos = {s: i for i, s in enumerate(seeds)}
    cell_shape = tuple(len(axis_values[a]) for a in axes) + (len(seeds),)

    status = np.full(cell_shape, STATUS_FLAGS["not_requested"], dtype=np.int8)
    run_ids = np.full(cell_shape, "", dtype=object)
    result_paths = np.full(cell_shape, "", dtype=object)
    costs = {name: np.full(cell_shape, np.nan) for name in COST_FIELDS}
    loaded: list[tuple[tuple[int, ...], list[dict]]] = []
    commits: set[str] = set()
    packages: dict[str, set[str]] = {}
    run_status: dict[str, str] = {}

    for i, entry in enumerate(index["entries"]):
        # cell index: one position per axis, then the seed (shape: cell_shape)
        cell = tuple(axis_pos[a][axis_label(entry["axes"].get(a))] for a in axes)
        cell += (seed_pos[entry["seed"]],)
        if status[cell] != STATUS_FLAGS["not_requested"]:
            raise AggregateError(
                f"{index_path or 'index'}: field entries.{i}: a second entry for axes "
                f"{entry['axes']} seed {entry['seed']} (first: {run_ids[cell]}, now: {entry['id']})")
        run_ids[cell] = entry["id"]
        result_path = resolve_result_path(entry["result"], root)
        result_paths[cell] = str(result_path)
        if not result_path.exists():
            diverged = result_path.parent / "diverged.json"
            status[cell] = STATUS_FLAGS["diverged" if diverged.exists() else "missing"]
            run_status[entry["id"]] = "diverged" if diverged.exists() else "missing"
            continue
        result = _read_json(result_path)
        _validate(result, RESULTS_SCHEMA, result_path)
        if result["status"] != "ok":
            status[cell] = STATUS_FLAGS["diverged" if result["status"] == "diverged" else "missing"]
            run_status[entry["id"]] = result["status"]
            continue
        if entry.get("kind") == "run" and entry.get("config") and result.get("config"):
            changed = stale_fields(result["config"], entry["config"]) + \
                stale_size_shape(result.get("model_shape"), entry["config"])
            if changed:
                raise AggregateError(
                    f"{result_path}: stale result of run {entry['id']}: field(s) {changed} differ "
                    f"from the current config (a default, or the shape of the model size in "
                    f"e3lib.config.MODEL_SIZES, changed since it ran); re-run it with "
                    f"`snakemake --forcerun ...` or `e3 run`, or restore the old value")
        status[cell] = STATUS_FLAGS["ok"]
        run_status[entry["id"]] = "ok"
        for name, field in COST_FIELDS.items():
            v = (result.get("cost") or {}).get(field)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                costs[name][cell] = float(v)
        prov = result.get("provenance") or {}
        if prov.get("code_commit"):
            commits.add(str(prov["code_commit"]))
        for pkg, ver in (prov.get("packages") or {}).items():
            packages.setdefault(pkg, set()).add(str(ver))
        loaded.append((cell, result["records"]))

    # Record coordinates: the union over all loaded results.
    def union(field: str) -> list:
        vals = {r[field] for _, recs in loaded for r in recs}
        return sorted(vals, key=_sort_key)

    rec_coords = {d: union(d) for d in RECORD_DIMS}
    metrics = union("metric")
    rec_pos = {d: {v: i for i, v in enumerate(vals)} for d, vals in rec_coords.items()}
    full_shape = cell_shape + tuple(len(rec_coords[d]) for d in RECORD_DIMS)
    values = {m: np.full(full_shape, np.nan) for m in metrics}
    for cell, records in loaded:
        for r in records:
            pos = cell + tuple(rec_pos[d][r[d]] for d in RECORD_DIMS)
            values[r["metric"]][pos] = np.nan if r["value"] is None else float(r["value"])

    cell_dims = tuple(axis_dim(a) for a in axes) + ("seed",)
    full_dims = cell_dims + RECORD_DIMS
    coords: dict[str, Any] = {}
    for a in axes:
        coords[axis_dim(a)] = xr.Variable(
            axis_dim(a), [axis_label(v) for v in axis_values[a]],
            attrs={"axis_name": a, "values_json": json.dumps(axis_values[a])})
    coords["seed"] = ("seed", np.asarray(seeds, dtype=np.int64))
    for d in RECORD_DIMS:
        dtype = np.int64 if d == "severity" else str
        coords[d] = (d, np.asarray(rec_coords[d], dtype=dtype))

    data_vars: dict[str, Any] = {}
    for m in metrics:
        data_vars[m] = (full_dims, values[m], {"kind": "metric"})
    units = {"gflops": "GFLOPs per image (training)", "params": "count", "train_seconds": "s"}
    for name in COST_FIELDS:
        data_vars[name] = (cell_dims, costs[name], {"kind": "cost", "units": units[name]})
    data_vars["status"] = (cell_dims, status, {
        "kind": "bookkeeping",
        "flag_values": np.asarray(list(STATUS_FLAGS.values()), dtype=np.int8),
        "flag_meanings": " ".join(STATUS_FLAGS)})
    data_vars["run_id"] = (cell_dims, run_ids.astype(str), {"kind": "bookkeeping"})
    data_vars["result_path"] = (cell_dims, result_paths.astype(str), {"kind": "bookkeeping"})

    counts = {k: int((status == v).sum()) for k, v in STATUS_FLAGS.items()}
    attrs = {
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
        "entries_ok": counts["ok"],
        "entries_missing": counts["missing"],
        "entries_diverged": counts["diverged"],
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
    encoding = {name: {"zlib": True, "complevel": 4} for name, var in ds.data_vars.items()
                if var.dtype.kind == "f"}
    with atomic.atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine=NETCDF_ENGINE, encoding=encoding)
    return Path(out)


def open_dataset(path: str | Path) -> xr.Dataset:
    """Load a sweep dataset fully into memory (the file is closed on return)."""
    with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
        return ds.load()


# --------------------------------------------------------------------------- statistics

def seed_stats(values: xr.DataArray, status: xr.DataArray) -> xr.Dataset:
    """Mean, standard error and seed counts of ``values`` over the ``seed`` dim.

    ``n``      seeds with a finite value
    ``n_req``  seeds the sweep requested for the cell (status != not_requested)
    ``stderr`` std(ddof=1)/√n; NaN where n < 2 (one seed has no spread estimate)
    ``complete`` n == n_req (a cell with fewer seeds than requested is flagged)
    """
    finite = np.isfinite(values)
    n = finite.sum("seed")
    mean = values.where(finite).mean("seed", skipna=True)
    std = values.where(finite).std("seed", ddof=1, skipna=True)
    stderr = (std / np.sqrt(n)).where(n >= 2)
    n_req = (status != STATUS_FLAGS["not_requested"]).sum("seed")
    n_req = n_req.broadcast_like(n)
    return xr.Dataset({"mean": mean, "stderr": stderr, "n": n, "n_req": n_req,
                       "complete": (n == n_req) & (n_req > 0)})


# --------------------------------------------------------------------------- selection

SELECTED_PREFIX = "selected__"   # coordinate of the chosen value of an `over` axis


def validation_values(ds: xr.Dataset, select: Mapping[str, Any]) -> xr.DataArray:
    """The selection metric over (axes..., seed); all NaN where it was never recorded."""
    where = {"split": select["split"], "corruption": "none", "severity": 0,
             "member": select["member"]}
    metric = select["metric"]
    if metric in ds.data_vars:
        da = ds[metric]
        if all(v in set(da[d].values.tolist()) for d, v in where.items()):
            return da.sel(where)
    return xr.full_like(ds["status"], np.nan, dtype=float)


def select_grid(ds: xr.Dataset, select: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Hyperparameter selection: per cell of the other axes, keep the ``over`` grid point
    with the best mean over seeds of the validation metric.

    G = grid points of a cell (product of the ``over`` axes' coordinates, first axis
    outermost; "grid order" is this order, numbers ascending). A point takes part if the
    sweep requested it for the cell and it has at least one seed with a finite metric; the
    best mean wins (``mode`` min or max), ties go to the first point in grid order.

    Returns ``ds`` without the ``over`` dims (every variable taken at the chosen point)
    and with coordinates over the remaining axes:

    ``selected__{dim}``        chosen value (axis label) of each ``over`` axis
    ``select_score``           mean over seeds of the metric at the chosen point
    ``select_grid_complete``   every requested grid point has all its seeds (status ok
                               and a finite metric); False flags the cell
    ``select_chosen_complete`` the chosen point has all its seeds
    ``select_ok``              a point was chosen and both of the above hold

    A cell where no grid point has a finite metric keeps its first requested point, with
    every metric NaN (nothing is reported for it) and ``select_ok`` False. ``select``
    defaults to the sweep's declaration (``attrs["select"]``); without one ``ds`` is
    returned unchanged.
    """
    if select is None:
        select = json.loads(ds.attrs.get("select") or "null")
    if not select:
        return ds
    axes = dataset_axes(ds)
    over = list(select["over"])
    unknown = [a for a in over if a not in axes]
    if unknown:
        raise AggregateError(f"sweep {ds.attrs.get('sweep', '?')}: field select.over: "
                             f"{unknown} are not axes of the dataset; allowed: {axes}")
    over_dims = [axis_dim(a) for a in over]
    keep_dims = [axis_dim(a) for a in axes if a not in over]
    stats = seed_stats(validation_values(ds, select), ds["status"])

    def grid(da: xr.DataArray) -> np.ndarray:
        # (axes...) → (keep..., G), the over dims flattened in C order (first outermost)
        arr = da.transpose(*keep_dims, *over_dims).values
        return arr.reshape(arr.shape[:len(keep_dims)] + (-1,))

    mean = grid(stats["mean"])                          # (keep..., G)
    requested = grid(stats["n_req"] > 0)                # (keep..., G)
    complete = grid(stats["complete"])                  # (keep..., G)
    usable = requested & np.isfinite(mean)
    key = np.where(usable, mean if select["mode"] == "min" else -mean, np.inf)
    has_choice = usable.any(axis=-1)                    # (keep...)
    # argmin returns the first of equal minima: ties go to the first point in grid order
    chosen = np.where(has_choice, np.argmin(key, axis=-1), np.argmax(requested, axis=-1))
    pick = chosen[..., None]
    chosen_complete = np.take_along_axis(complete, pick, -1)[..., 0] & has_choice
    grid_complete = np.all(complete | ~requested, axis=-1) & requested.any(axis=-1)
    score = np.where(has_choice, np.take_along_axis(mean, pick, -1)[..., 0], np.nan)

    # chosen flat index → one index per over axis (C order, as in `grid`)
    sizes = [ds.sizes[d] for d in over_dims]
    per_axis = np.unravel_index(chosen, sizes) if sizes else ()
    keep_coords = {d: ds[d].values for d in keep_dims}
    indexers = {d: xr.DataArray(ix, dims=keep_dims, coords=keep_coords)
                for d, ix in zip(over_dims, per_axis)}
    out = ds.isel(indexers)
    labels = {d: out[d].values.astype(str) for d in over_dims}    # (keep...) chosen labels
    out = out.drop_vars(over_dims)
    for name, var in out.data_vars.items():
        if var.attrs.get("kind") == "metric":
            out[name] = var.where(xr.DataArray(has_choice, dims=keep_dims))
    for d, a in zip(over_dims, over):
        out.coords[SELECTED_PREFIX + d] = xr.Variable(
            keep_dims, np.where(has_choice, labels[d], ""), attrs={"axis_name": a})
    out.coords["select_score"] = (keep_dims, score)
    out.coords["select_grid_complete"] = (keep_dims, grid_complete)
    out.coords["select_chosen_complete"] = (keep_dims, chosen_complete)
    out.coords["select_ok"] = (keep_dims, has_choice & grid_complete & chosen_complete)
    out.attrs = {**ds.attrs, "axes": json.dumps([a for a in axes if a not in over]),
                 "axes_full": ds.attrs["axes"], "selected": json.dumps(dict(select))}
    return out


def selection_of(ds: xr.Dataset) -> dict | None:
    """The selection a dataset view was made with (None for a full dataset)."""
    return json.loads(ds.attrs["selected"]) if ds.attrs.get("selected") else None


def cell_seed_values(values: xr.DataArray) -> np.ndarray:
    """Finite seed values of one cell (a 1-D DataArray over ``seed``)."""
    arr = np.asarray(values.values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


# --------------------------------------------------------------------------- CLI

def cli_aggregate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="e3 aggregate",
        description="Gather the results of all runs of a sweep into one netCDF dataset.")
    parser.add_argument("--index", required=True, help="results/sweeps/{sweep}/index.json")
    parser.add_argument("--results-root", default="results")
    parser.add_argument("--out", required=True, help="results/sweeps/{sweep}/dataset.nc")
    args = parser.parse_args(argv)
    try:
        index = load_index(args.index)
        ds = build_dataset(index, args.results_root, index_path=args.index)
    except AggregateError as err:
        print(f"e3 aggregate: {err}", file=sys.stderr)
        return 2
    write_netcdf_atomic(ds, args.out)
    a = ds.attrs
    print(f"e3 aggregate: {a['sweep']}: {a['entries_ok']} ok, {a['entries_missing']} missing, "
          f"{a['entries_diverged']} diverged → {args.out}")
    if index.get("select"):
        view = select_grid(ds)
        flagged = int((~view["select_ok"]).sum())
        print(f"e3 aggregate: {a['sweep']}: selection over {index['select']['over']} by "
              f"{index['select']['split']} {index['select']['metric']}: "
              f"{int(view['select_ok'].size)} cells, {flagged} flagged (incomplete grid, "
              f"incomplete choice or no validation metric)")
    return 0


if __name__ == "__main__":
    sys.exit(cli_aggregate(sys.argv[1:]))
