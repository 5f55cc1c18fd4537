"""Rows of a report table: one requested cell of a sweep with its seed statistics.

Notation: a *row* is one cell of a sweep (one combination of axis values, plus the
``extra_dims`` of the spec such as ``member``); its statistics are over seeds S:
mean, stderr = std(ddof=1)/√n, n seeds with a value, n_req seeds requested
(``e3lib.stats.seed_stats``).

Members (the paper's column M): two axes count the members of a row's combined prediction,
``model.ensemble_size`` (M of one E³-style model: E³, MIMO, BatchEnsemble, MC Dropout, …)
and ``ensemble.runs`` (the runs of a deep ensemble; 1 for every ordinary run). A row's
``members_label`` is the one that is not 1 ("R×M" when both are, a deep ensemble of
multi-member models); tables show it as one column M in place of the two axes, so E³ (M=2)
and a deep ensemble of two V-MoEs stand in one column. Selectors and paper keys address the
axes themselves: a deep ensemble by ``ensemble.runs``, one model by ``model.ensemble_size``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from e3lib.aggregate import (
    SELECTED_PREFIX,
    STATUS_FLAGS,
    axis_dim,
    axis_label,
    dataset_axes,
    selection_of,
)
from e3lib.report.spec import SpecError, default_spec
from e3lib.stats import seed_stats
from e3lib.sweep.ensembles import ENSEMBLE_RUNS_AXIS

ENSEMBLE_SIZE_AXIS = "model.ensemble_size"
MEMBER_AXES = (ENSEMBLE_RUNS_AXIS, ENSEMBLE_SIZE_AXIS)  # shown together as one column
MEMBERS = "M"  # that column's header


@dataclass
class CellStats:
    mean: float
    stderr: float
    n: int
    n_req: int
    values: np.ndarray  # (n,) finite seed values

    @property
    def complete(self) -> bool:
        return self.n_req > 0 and self.n == self.n_req


@dataclass
class Row:
    sweep: str
    key: dict[str, str]  # dotted axis name (or record dim) → axis label
    stats: dict[str, CellStats]  # metric → statistics over seeds
    runs_ok: int = 0
    runs_requested: int = 0
    run_ids: list[str] = field(default_factory=list)
    ref: dict | None = None  # matched paper row
    selected: dict[str, str] | None = None  # chosen value per `select.over` axis
    selected_score: float = math.nan  # validation metric (mean over seeds) there
    selected_ok: bool = True  # grid and chosen point complete (else flagged)
    ref_note: str = ""  # how the paper row was matched (alignment, reading)
    align_ratio: str = ""  # the aligned quantity of this row (e.g. o/E = 1/4)

    @property
    def members(self) -> str | None:
        return members_label(self.key)


def _count(value) -> int | None:
    try:
        n = float(axis_label(value))
    except ValueError:  # "-": the axis does not apply to this row
        return None
    return int(n) if n.is_integer() and n >= 1 else None


def members_label(key: Mapping[str, object]) -> str | None:
    """Members of a row's combined prediction, as the paper's column M counts them.

    ``ensemble.runs`` for a deep ensemble, ``model.ensemble_size`` for one model (a missing
    axis counts 1), "R×M" for a deep ensemble of R models of M members each; None when the
    key has neither axis (or neither applies). Works on our row keys (labels) and on paper
    keys (YAML values) alike.
    """
    runs, size = (_count(key[a]) if a in key else None for a in MEMBER_AXES)
    if runs is None and size is None:
        return None
    runs, size = runs or 1, size or 1
    return f"{runs}×{size}" if runs > 1 and size > 1 else str(max(runs, size))


def display_key(names: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Key columns as shown: the member axes among ``names`` become one column ``MEMBERS``
    (at the place of the first), unless one of them is in ``exclude`` (a pivot axis)."""
    if any(a in exclude for a in MEMBER_AXES):
        return list(names)
    out: list[str] = []
    for n in names:
        name = MEMBERS if n in MEMBER_AXES else n
        if name not in out:
            out.append(name)
    return out


def key_cell(key: Mapping[str, object], name: str) -> str:
    """The text of key column ``name`` (a ``display_key`` name) for one row or paper key."""
    if name == MEMBERS:
        return members_label(key) or ""
    return axis_label(key[name]) if name in key else ""


def _metric_array(
    ds: xr.Dataset, metric: str, mcfg: Mapping, select: Mapping, extra_dims: Sequence[str]
) -> xr.DataArray | None:
    """The metric over (axes..., seed, extra_dims...) with the spec's record selection.

    A metric entry may name the data ``variable`` it shows (default: its own name) and
    override the record ``select`` (e.g. NLL on the corrupted-set average). A selected
    value may be a list of preferences: each row takes the first one it has a value for
    (few-shot error: member "ensemble" for one-member methods, else "joint").
    """
    variable = mcfg.get("variable", metric)
    if variable not in ds.data_vars:
        return None
    da = ds[variable]
    if mcfg.get("cost"):
        return da
    own = mcfg.get("select", {})
    if unknown := [d for d in own if d not in da.dims]:
        raise SpecError(
            f"metric {metric}: field select: {unknown} are not dims of variable "
            f"{variable!r} (its dims: {list(da.dims)}; few-shot metrics have task and shots)"
        )
    select = {**select, **own}
    sel = {d: v for d, v in select.items() if d in da.dims and d not in extra_dims}
    cell_dims = {axis_dim(a) for a in dataset_axes(ds)} | {"seed"}
    if loose := [d for d in da.dims if d not in cell_dims and d not in sel and d not in extra_dims]:
        raise SpecError(
            f"metric {metric}: field select: variable {variable!r} needs a value for "
            f"dims {loose} (a select entry, or extra_dims of the table)"
        )
    for d, v in sel.items():
        present = set(da[d].values.tolist())
        choices = [c for c in (v if isinstance(v, list) else [v]) if c in present]
        if not choices:
            return None  # e.g. no clean split recorded at all
        if not isinstance(v, list):
            da = da.sel({d: v})
            continue
        picked = da.sel({d: choices[0]}, drop=True)
        for other in choices[1:]:
            picked = picked.combine_first(da.sel({d: other}, drop=True))  # fill the gaps
        da = picked
    return da


def sweep_rows(
    ds: xr.Dataset,
    columns: Sequence[str],
    extra_dims: Sequence[str] = (),
    spec: Mapping | None = None,
) -> list[Row]:
    """One ``Row`` per requested cell of the sweep, with statistics of each column metric.

    ``ds`` may be a selected view (``select_grid``): rows then carry the chosen values.
    """
    spec = spec or default_spec()
    selection = selection_of(ds)
    axes = dataset_axes(ds)
    extra = [d for d in extra_dims if d in ds.dims]
    dims = [axis_dim(a) for a in axes] + extra
    names = axes + extra
    status = ds["status"]
    arrays, stats = {}, {}
    for m in columns:
        da = _metric_array(ds, m, spec["metrics"][m], spec["select"], extra)
        if da is not None:
            arrays[m] = da
            stats[m] = seed_stats(da, status)
    rows = []
    for labels in itertools.product(*(ds[d].values.tolist() for d in dims)):
        pos = dict(zip(dims, labels))
        axis_pos = {d: pos[d] for d in dims if d in status.dims}
        st = status.sel(axis_pos)
        n_req = int((st != STATUS_FLAGS["not_requested"]).sum())
        if n_req == 0:
            continue
        cells = {}
        for m, da in arrays.items():
            here = {d: v for d, v in pos.items() if d in da.dims}
            s = stats[m].sel(here)
            vals = np.asarray(da.sel(here).values, dtype=float).ravel()  # (S,)
            cells[m] = CellStats(
                float(s["mean"]),
                float(s["stderr"]),
                int(s["n"]),
                int(s["n_req"]),
                vals[np.isfinite(vals)],
            )
        if extra and not any(c.n for c in cells.values()):
            continue  # e.g. member "3" of a 2-member method
        run_ids = [r for r in np.asarray(ds["run_id"].sel(axis_pos).values).ravel().tolist() if r]
        row = Row(
            sweep=ds.attrs["sweep"],
            key={n: str(v) for n, v in zip(names, labels)},
            stats=cells,
            runs_ok=int((st == STATUS_FLAGS["ok"]).sum()),
            runs_requested=n_req,
            run_ids=run_ids,
        )
        if selection is not None:
            row.selected = {
                a: str(ds[SELECTED_PREFIX + axis_dim(a)].sel(axis_pos).values)
                for a in selection["over"]
            }
            row.selected_score = float(ds["select_score"].sel(axis_pos))
            row.selected_ok = bool(ds["select_ok"].sel(axis_pos))
        rows.append(row)
    return rows


def selected_text(row: Row) -> str:
    """``steps=20000, lr=0.01`` (+ " †" when the grid or the chosen point lacks seeds)."""
    if row.selected is None:
        return ""
    if not any(row.selected.values()):
        return "none (no validation metric) †"
    text = ", ".join(f"{short(a)}={v}" for a, v in row.selected.items())
    return text + ("" if row.selected_ok else " †")


def short(name: str) -> str:
    """Last part of a dotted axis name (``model.overlap`` → ``overlap``)."""
    return name.split(".")[-1]
