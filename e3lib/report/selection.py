"""The hyperparameter selection of one sweep, as its report page shows it.

Every grid point's validation metric (mean over seeds, seeds present of requested) and
whether it is the point chosen for its cell (``e3lib.aggregate.select_grid``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from e3lib.aggregate import axis_dim, dataset_axes

if TYPE_CHECKING:
    from e3lib.report.html import Input


def selection_summary(inp: Input) -> dict | None:
    """The sweep's hyperparameter selection for its page: the validation metric of every
    grid point (the full grid) and the point chosen per cell; None without ``select``."""
    from e3lib.aggregate import SELECTED_PREFIX, select_grid, selection_of, validation_values
    from e3lib.stats import seed_stats

    ds = inp.ds
    view = select_grid(ds)
    sel = selection_of(view)
    if sel is None:
        return None
    axes = dataset_axes(ds)
    keep = dataset_axes(view)
    stats = seed_stats(validation_values(ds, sel), ds["status"])
    dims = [axis_dim(a) for a in axes]
    grid = []
    for pos in np.ndindex(*(ds.sizes[d] for d in dims)):
        at = {d: ds[d].values[p] for d, p in zip(dims, pos)}
        st = stats.sel(at)
        if int(st["n_req"]) == 0:
            continue
        cell = {axis_dim(a): at[axis_dim(a)] for a in keep}
        chosen = all(
            str(view[SELECTED_PREFIX + axis_dim(a)].sel(cell).values) == str(at[axis_dim(a)])
            for a in sel["over"]
        )
        grid.append(
            {
                "axes": [str(v) for v in at.values()],
                "mean": float(st["mean"]),
                "n": int(st["n"]),
                "n_req": int(st["n_req"]),
                "complete": bool(st["complete"]),
                "chosen": chosen,
            }
        )
    return {"select": sel, "axes": axes, "grid": grid}
