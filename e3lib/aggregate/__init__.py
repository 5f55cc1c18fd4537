"""Results of all entries of a sweep → one xarray Dataset (netCDF), seed statistics and
hyperparameter selection (the ``e3 aggregate`` command).

    schemas    JSON schemas of the files read (e3lib/schemas/*.schema.json), AggregateError
    formats    results.json formats 1 and 2, done.json statuses, STATUS_FLAGS, dataset
               format versions and record dims
    migrate    a format-2 dataset in the format-3 layout (``open_dataset`` reads it)
    axes       sweep axes as dims: axis_dim, axis_label, dataset_axes
    dataset    load_index, build_dataset, write_netcdf_atomic, open_dataset
    (seed statistics: e3lib.stats)
    selection  select_grid (the only place a hyperparameter selection is made)
    curves     build_curves: the runs' and upstreams' training curves (``curves.nc``)
    cli        ``e3 aggregate``

Notation: S seeds, n seeds with a value in a cell, n_req seeds the sweep requested there.

Dataset layout (``results/sweeps/{sweep}/dataset.nc``, ``format_version`` 3)
---------------------------------------------------------------------------
dims        one per sweep axis (netCDF-safe name, see ``axis_dim``), then ``seed``,
            ``split``, ``corruption``, ``severity``, ``member``, ``task``, ``shots``
            (every dim present; a record dim no result uses has length 0)
metrics     one float64 variable per metric name; NaN = no record. Two kinds:
            evaluation metrics (``nll``, ``error``, ...) over (axes..., seed, split,
            corruption, severity, member); few-shot metrics (``fewshot_error``, records
            of split ``fewshot`` with results.json fields ``task``, ``shots``) over
            (axes..., seed, task, shots, member), attribute ``split: fewshot``.
            ``split`` never holds ``fewshot``; ``task`` holds the task names and
            ``mean``, ``shots`` (int64) the shot counts; ``member`` is shared (few-shot
            modes ``joint``/``disjoint`` beside member indices and ``ensemble``).
cost        ``gflops``, ``params``, ``train_seconds``, and from results' provenance.throughput
            ``images_per_second_per_device``, ``device_hours``, ``mfu``: dims (axes..., seed)
bookkeeping ``status`` (axes..., seed): int8 with CF ``flag_values``/``flag_meanings``
            (ok, missing, diverged, not_requested, member_failed), read from each entry's
            done.json; ``run_id`` and ``result_path`` (axes..., seed) strings, "" where no
            entry exists
attrs       ``format_version`` (``migrated_from_format_version`` 2 on a format-2 file
            converted on read); provenance: sweep name/file/hash, variant, axes (original
            dotted names), reproduces, run ids with status, ``failed_members`` (ensemble id
            → {member run id: status}), counts per status, code commits, package versions;
            ``select`` (the sweep's selection block as JSON, "null" without one)

Axis coordinates hold the axis values as strings (``axis_label``), so that an axis whose
values mix numbers and text, or that is absent for some methods (conditional axes,
shown as ``"-"``), still has one coordinate; the original values are kept as JSON in
the coordinate's ``values_json`` attribute.

Statistics (``seed_stats``) are computed here, never in templates: mean over seeds,
standard error = std(ddof=1)/√n, n, n_req and ``complete`` = (n == n_req).
"""

from e3lib.aggregate.axes import MISSING_AXIS_LABEL, axis_dim, axis_label, dataset_axes
from e3lib.aggregate.cli import cli_aggregate
from e3lib.aggregate.dataset import (
    COST_FIELDS,
    NETCDF_ENGINE,
    build_dataset,
    load_index,
    open_dataset,
    resolve_result_path,
    write_netcdf_atomic,
)
from e3lib.aggregate.formats import (
    DATASET_FORMAT,
    RECORD_DIMS,
    RESULTS_FORMATS,
    SPLITS,
    STATUS_FLAGS,
    read_results,
)
from e3lib.aggregate.schemas import AggregateError
from e3lib.aggregate.selection import (
    SELECTED_PREFIX,
    select_grid,
    selection_of,
    validation_values,
)
from e3lib.stats import cell_seed_values, seed_stats

__all__ = [
    "COST_FIELDS",
    "DATASET_FORMAT",
    "MISSING_AXIS_LABEL",
    "NETCDF_ENGINE",
    "RECORD_DIMS",
    "RESULTS_FORMATS",
    "SELECTED_PREFIX",
    "SPLITS",
    "STATUS_FLAGS",
    "AggregateError",
    "axis_dim",
    "axis_label",
    "build_dataset",
    "cell_seed_values",
    "cli_aggregate",
    "dataset_axes",
    "load_index",
    "open_dataset",
    "read_results",
    "resolve_result_path",
    "seed_stats",
    "select_grid",
    "selection_of",
    "validation_values",
    "write_netcdf_atomic",
]
