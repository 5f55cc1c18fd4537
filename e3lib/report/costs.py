"""What a sweep cost: per run group (one combination of the sweep's axis values, over its
seeds) the mean images/s per device, the sum of device-hours and the mean MFU of its runs,
and the sweep's total device-hours (dataset variables ``images_per_second_per_device``,
``device_hours``, ``mfu``: e3lib.aggregate, from results' provenance.throughput).

A run without a throughput record (a result written before they were recorded, a deep
ensemble, which trains nothing itself) counts as not measured; a dataset without these
variables (written before them) has no cost summary.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from e3lib.aggregate import axis_dim, dataset_axes

FIELDS = ("images_per_second_per_device", "device_hours", "mfu")


def cost_summary(ds: xr.Dataset) -> dict | None:
    """{"axes", "groups": [{"axes", "runs", "images_per_second_per_device",
    "device_hours", "mfu"}], "runs", "device_hours"} or None (nothing measured)."""
    if any(f not in ds.data_vars for f in FIELDS):
        return None
    axes = dataset_axes(ds)
    dims = [axis_dim(a) for a in axes]
    vals = {f: ds[f].transpose(*dims, "seed").values for f in FIELDS}  # (axes..., S)
    groups = []
    for pos in np.ndindex(vals["device_hours"].shape[:-1]):
        hours = vals["device_hours"][pos]
        measured = np.isfinite(hours)
        if not measured.any():
            continue
        rate, mfu = vals["images_per_second_per_device"][pos], vals["mfu"][pos]
        groups.append(
            {
                "axes": [str(ds[d].values[p]) for d, p in zip(dims, pos)],
                "runs": int(measured.sum()),
                "images_per_second_per_device": _mean(rate[measured]),
                "device_hours": float(hours[measured].sum()),
                "mfu": _mean(mfu[measured]),
            }
        )
    if not groups:
        return None
    return {
        "axes": axes,
        "groups": groups,
        "runs": sum(g["runs"] for g in groups),
        "device_hours": sum(g["device_hours"] for g in groups),
    }


def _mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None
