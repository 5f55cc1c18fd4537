"""Seed statistics of a sweep dataset, computed here and never in templates.

Notation: n seeds with a finite value in a cell, n_req seeds the sweep requested there.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from e3lib.aggregate.formats import STATUS_FLAGS


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
    return xr.Dataset(
        {
            "mean": mean,
            "stderr": stderr,
            "n": n,
            "n_req": n_req,
            "complete": (n == n_req) & (n_req > 0),
        }
    )


def cell_seed_values(values: xr.DataArray) -> np.ndarray:
    """Finite seed values of one cell (a 1-D DataArray over ``seed``)."""
    arr = np.asarray(values.values, dtype=float).ravel()
    return arr[np.isfinite(arr)]
