"""A dataset of ``format_version`` 2 in the layout of format 3 (``migrate_v2``), so sweep
datasets aggregated before few-shot metrics had their own dims still load.

Format 2 kept every metric over (axes..., seed, split, corruption, severity, member) and
put few-shot values at split ``fewshot`` with the task in ``corruption`` and the shots in
``severity``. Format 3 gives few-shot metrics the dims (axes..., seed, task, shots,
member); see ``e3lib.aggregate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from e3lib.aggregate.formats import (
    DATASET_FORMAT,
    FEWSHOT_SPLIT,
    INT_DIMS,
    RECORD_DIM_NAMES,
)
from e3lib.aggregate.schemas import AggregateError


def _present(da: xr.DataArray, dim: str) -> np.ndarray:
    """(len(dim),) bool: coordinate values of ``dim`` holding a finite value of ``da``."""
    others = [d for d in da.dims if d != dim]
    return np.asarray(np.isfinite(da).any(dim=others).values, dtype=bool)


def migrate_v2(ds: xr.Dataset, path: str | Path = "") -> xr.Dataset:
    """Convert a format-2 dataset to format 3; marks it ``migrated_from_format_version``.

    A metric whose values at split ``fewshot`` are not all NaN becomes a few-shot metric:
    its split-``fewshot`` slice, corruption → ``task``, severity → ``shots``. ``task`` and
    ``shots`` keep the values holding a finite few-shot value (a null few-shot value of
    format 2 cannot be told from an absent one); split ``fewshot`` is dropped, and so are
    corruption/severity values that held only few-shot values. A metric with finite values
    both at split ``fewshot`` and elsewhere has no format-3 layout and is refused.
    """
    where = f"{path}: " if path else ""
    metrics = [n for n, v in ds.data_vars.items() if v.attrs.get("kind") == "metric"]
    has_fewshot = "split" in ds.dims and FEWSHOT_SPLIT in ds["split"].values.tolist()
    few: dict[str, xr.DataArray] = {}
    if has_fewshot:
        for name in metrics:
            part = ds[name].sel(split=FEWSHOT_SPLIT, drop=True)
            if not np.isfinite(part).any():
                continue
            if np.isfinite(ds[name].drop_sel(split=FEWSHOT_SPLIT)).any():
                raise AggregateError(
                    f"{where}format_version 2: variable {name!r} has values at split "
                    f"fewshot and at other splits, which format 3 cannot hold; re-create "
                    f"the dataset from the results: e3 aggregate --index "
                    f"results/sweeps/SWEEP/index.json --out {path or 'dataset.nc'}"
                )
            few[name] = part.rename(corruption="task", severity="shots")
        rest = ds.drop_vars(list(few)).drop_sel(split=FEWSHOT_SPLIT)
    else:
        rest = ds
    task = np.zeros(ds.sizes.get("corruption", 0), dtype=bool)
    shots = np.zeros(ds.sizes.get("severity", 0), dtype=bool)
    for da in few.values():
        task |= _present(da, "task")
        shots |= _present(da, "shots")
    # corruption/severity values that only few-shot records used
    rest_metrics = [n for n in metrics if n not in few]
    for dim, used_by_few in (("corruption", task), ("severity", shots)):
        if dim not in rest.dims:
            continue
        used = np.zeros(rest.sizes[dim], dtype=bool)
        for name in rest_metrics:
            if dim in rest[name].dims:
                used |= _present(rest[name], dim)
        rest = rest.isel({dim: np.flatnonzero(used | ~used_by_few)})
    task_values = ds["corruption"].values[task] if "corruption" in ds.dims else []
    shot_values = ds["severity"].values[shots] if "severity" in ds.dims else []
    out = rest.assign_coords(
        task=("task", np.asarray(task_values, dtype=str)),
        shots=("shots", np.asarray(shot_values, dtype=np.int64)),
    )
    for name, da in few.items():
        da = da.sel(task=out["task"].values, shots=out["shots"].values)
        out[name] = da.assign_attrs({**da.attrs, "split": FEWSHOT_SPLIT})
    for dim in list(out.dims):
        if dim in RECORD_DIM_NAMES:
            if dim in INT_DIMS:
                out.coords[dim] = out[dim].astype(np.int64)
            out[dim].attrs = {"long_name": RECORD_DIM_NAMES[dim]}
    out.attrs = {
        **ds.attrs,
        "format_version": DATASET_FORMAT,
        "migrated_from_format_version": 2,
    }
    return out
