"""Hyperparameter selection over grid axes of a sweep dataset (``select_grid``, the only
place a selection is made).

A sweep's ``select`` block (attrs ``select``, JSON) names grid axes; the report views the
dataset with those axes removed, each cell at the grid point with the best mean over
seeds of a validation metric. The file keeps the full grid; the selection is computed
from it, here.

Notation: G grid points of a cell (product of the ``over`` axes' coordinates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from e3lib.aggregate.axes import axis_dim, dataset_axes
from e3lib.aggregate.schemas import AggregateError
from e3lib.stats import seed_stats

SELECTED_PREFIX = "selected__"  # coordinate of the chosen value of an `over` axis


def validation_values(ds: xr.Dataset, select: Mapping[str, Any]) -> xr.DataArray:
    """The selection metric over (axes..., seed); all NaN where it was never recorded
    (or where the metric is not one of the split/corruption/severity records, e.g. a
    few-shot metric, whose dims are task and shots)."""
    where = {
        "split": select["split"],
        "corruption": "none",
        "severity": 0,
        "member": select["member"],
    }
    metric = select["metric"]
    if metric in ds.data_vars:
        da = ds[metric]
        if all(d in da.dims and v in set(da[d].values.tolist()) for d, v in where.items()):
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
        raise AggregateError(
            f"sweep {ds.attrs.get('sweep', '?')}: field select.over: "
            f"{unknown} are not axes of the dataset; allowed: {axes}"
        )
    over_dims = [axis_dim(a) for a in over]
    keep_dims = [axis_dim(a) for a in axes if a not in over]
    stats = seed_stats(validation_values(ds, select), ds["status"])

    def grid(da: xr.DataArray) -> np.ndarray:
        # (axes...) → (keep..., G), the over dims flattened in C order (first outermost)
        arr = da.transpose(*keep_dims, *over_dims).values
        return arr.reshape(arr.shape[: len(keep_dims)] + (-1,))

    mean = grid(stats["mean"])  # (keep..., G)
    requested = grid(stats["n_req"] > 0)  # (keep..., G)
    complete = grid(stats["complete"])  # (keep..., G)
    usable = requested & np.isfinite(mean)
    key = np.where(usable, mean if select["mode"] == "min" else -mean, np.inf)
    has_choice = usable.any(axis=-1)  # (keep...)
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
    indexers = {
        d: xr.DataArray(ix, dims=keep_dims, coords=keep_coords)
        for d, ix in zip(over_dims, per_axis)
    }
    out = ds.isel(indexers)
    labels = {d: out[d].values.astype(str) for d in over_dims}  # (keep...) chosen labels
    out = out.drop_vars(over_dims)
    for name, var in out.data_vars.items():
        if var.attrs.get("kind") == "metric":
            out[name] = var.where(xr.DataArray(has_choice, dims=keep_dims))
    for d, a in zip(over_dims, over):
        out.coords[SELECTED_PREFIX + d] = xr.Variable(
            keep_dims, np.where(has_choice, labels[d], ""), attrs={"axis_name": a}
        )
    out.coords["select_score"] = (keep_dims, score)
    out.coords["select_grid_complete"] = (keep_dims, grid_complete)
    out.coords["select_chosen_complete"] = (keep_dims, chosen_complete)
    out.coords["select_ok"] = (keep_dims, has_choice & grid_complete & chosen_complete)
    out.attrs = {
        **ds.attrs,
        "axes": json.dumps([a for a in axes if a not in over]),
        "axes_full": ds.attrs["axes"],
        "selected": json.dumps(dict(select)),
    }
    return out


def selection_of(ds: xr.Dataset) -> dict | None:
    """The selection a dataset view was made with (None for a full dataset)."""
    return json.loads(ds.attrs["selected"]) if ds.attrs.get("selected") else None
