"""Tables in the paper's layout: per-cell seed statistics, paper values beside ours, bolding.

Notation: a *row* is one cell of a sweep (one combination of axis values, plus the
``extra_dims`` of the spec such as ``member``); its statistics are over seeds S:
mean, stderr = std(ddof=1)/√n, n seeds with a value, n_req seeds requested.

One renderer serves every table: ``build_table`` turns a spec (tables.yaml) and the
datasets that reproduce it into a ``Table`` of text cells; the Jinja2 templates
``table.{html,md,tex}.j2`` only lay those cells out.

Hyperparameter selection: a dataset whose sweep declares ``select`` is shown through
``e3lib.aggregate.select_grid`` (one row per cell of the other axes, at the grid point
chosen on the validation split); the chosen values form a "selected" column (row layout)
or footnotes (pivot layout), marked † where the grid or the chosen point lacks seeds.

Bolding rule: in each metric column (or pivot grid) the row with the best mean is bold
only if a Welch t-test (unequal variances, two-sided) of its seed values against the
runner-up's gives p < alpha (0.05); rows with fewer than ``min_seeds`` values take no part.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr
from scipy import stats as sps

from e3lib.aggregate import (SELECTED_PREFIX, STATUS_FLAGS, axis_dim, axis_label, dataset_axes,
                             seed_stats, select_grid, selection_of)
from e3lib.report.spec import default_spec, load_reference


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
    key: dict[str, str]                 # dotted axis name (or record dim) → axis label
    stats: dict[str, CellStats]         # metric → statistics over seeds
    runs_ok: int = 0
    runs_requested: int = 0
    run_ids: list[str] = field(default_factory=list)
    ref: dict | None = None             # matched paper row
    selected: dict[str, str] | None = None  # chosen value per `select.over` axis
    selected_score: float = math.nan        # validation metric (mean over seeds) there
    selected_ok: bool = True            # grid and chosen point complete (else flagged)


@dataclass
class Cell:
    text: str
    kind: str = "ours"                  # key | label | seeds | ours | paper
    bold: bool = False
    flag: bool = False                  # fewer seeds than requested


@dataclass
class Block:
    caption: str
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Table:
    id: str
    title: str
    source: str = ""
    setting: str = ""
    note: str = ""
    blocks: list[Block] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


# --------------------------------------------------------------------------- statistics

def _metric_array(ds: xr.Dataset, metric: str, mcfg: Mapping, select: Mapping,
                  extra_dims: Sequence[str]) -> xr.DataArray | None:
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
    select = {**select, **mcfg.get("select", {})}
    sel = {d: v for d, v in select.items() if d in da.dims and d not in extra_dims}
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


def sweep_rows(ds: xr.Dataset, columns: Sequence[str], extra_dims: Sequence[str] = (),
               spec: Mapping | None = None) -> list[Row]:
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
            cells[m] = CellStats(float(s["mean"]), float(s["stderr"]), int(s["n"]),
                                 int(s["n_req"]), vals[np.isfinite(vals)])
        if extra and not any(c.n for c in cells.values()):
            continue  # e.g. member "3" of a 2-member method
        run_ids = [r for r in np.asarray(ds["run_id"].sel(axis_pos).values).ravel().tolist() if r]
        row = Row(sweep=ds.attrs["sweep"],
                  key={n: str(v) for n, v in zip(names, labels)}, stats=cells,
                  runs_ok=int((st == STATUS_FLAGS["ok"]).sum()), runs_requested=n_req,
                  run_ids=run_ids)
        if selection is not None:
            row.selected = {a: str(ds[SELECTED_PREFIX + axis_dim(a)].sel(axis_pos).values)
                            for a in selection["over"]}
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
    text = ", ".join(f"{_short(a)}={v}" for a, v in row.selected.items())
    return text + ("" if row.selected_ok else " †")


def welch_p(a: np.ndarray, b: np.ndarray, alternative: str = "two-sided") -> float:
    """p-value of Welch's t-test (unequal variances); NaN if either side has < 2 values."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        # no spread at all: the means differ for certain, or not at all
        if a.mean() == b.mean():
            return 1.0
        better = {"less": a.mean() < b.mean(), "greater": a.mean() > b.mean(),
                  "two-sided": True}[alternative]
        return 0.0 if better else 1.0
    with warnings.catch_warnings():  # nearly equal samples: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(sps.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def significant_best(cells: Sequence[CellStats | None], better: str | None, alpha: float,
                     min_seeds: int) -> tuple[int | None, str]:
    """Index of the cell to bold (or None) and a sentence saying why."""
    if better not in ("lower", "higher"):
        return None, ""
    cand = [(i, c) for i, c in enumerate(cells) if c is not None and c.n >= min_seeds]
    if len(cand) < 2:
        return None, "fewer than two rows with enough seeds"
    sign = 1 if better == "lower" else -1
    cand.sort(key=lambda ic: sign * ic[1].mean)
    (i_best, best), (_, second) = cand[0], cand[1]
    p = welch_p(best.values, second.values)
    verdict = "bold" if p < alpha else "not bold"
    return (i_best if p < alpha else None), f"best vs runner-up: Welch p = {p:.3g} ({verdict})"


# --------------------------------------------------------------------------- reference

def match_reference(row_key: Mapping[str, str], ref: Mapping | None) -> dict | None:
    """The paper row whose key agrees with ``row_key`` on the most shared axes (≥ 1).

    Reference keys naming an axis the sweep does not have are ignored; a reference key
    that disagrees on any shared axis does not match. Ties go to the earlier paper row.
    """
    if not ref:
        return None
    best, best_score = None, 0
    for prow in ref["rows"]:
        shared = [k for k in prow["key"] if k in row_key]
        if shared and all(axis_label(prow["key"][k]) == row_key[k] for k in shared):
            if len(shared) > best_score:
                best, best_score = prow, len(shared)
    return best


# --------------------------------------------------------------------------- formatting

def _fmt(x: float, mcfg: Mapping) -> str:
    """Fixed decimals (``digits``), or significant digits (``sig``) for costs whose scale
    spans tiny demo models to H/14."""
    x = x * mcfg.get("scale", 1.0)
    if "sig" in mcfg:
        return f"{x:.{mcfg['sig']}g}"
    return f"{x:.{mcfg.get('digits', 3)}f}"


def format_ours(c: CellStats | None, mcfg: Mapping) -> Cell:
    if c is None or c.n == 0:
        # no value at all: the metric does not apply (KL of one member) or no run finished;
        # the seeds column says which runs are missing
        return Cell("—")
    if c.n < 2 or not math.isfinite(c.stderr):
        text = f"{_fmt(c.mean, mcfg)} (n={c.n})"
    else:
        text = f"{_fmt(c.mean, mcfg)} ± {_fmt(c.stderr, mcfg)}"
    flag = not c.complete
    return Cell(text + (f" † {c.n}/{c.n_req}" if flag else ""), flag=flag)


def format_paper(values: Sequence | None, mcfg: Mapping) -> Cell:
    if values is None:
        return Cell("—", kind="paper")
    mean, se = values
    text = _fmt(mean, mcfg) + ("" if se is None else f" ± {_fmt(se, mcfg)}")
    return Cell(text, kind="paper")


def _numeric_first(label: str) -> tuple:
    """Sort key of axis labels: numbers in numeric order, then text in given order."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, 0.0)


def _short(name: str) -> str:
    return name.split(".")[-1]


def _arrow(mcfg: Mapping) -> str:
    return {"lower": " ↓", "higher": " ↑"}.get(mcfg.get("better", ""), "")


# --------------------------------------------------------------------------- building

def build_table(table_id: str, datasets: Sequence[xr.Dataset], spec: Mapping | None = None,
                reference: Mapping | None = None) -> Table | None:
    """The rendered-to-text table ``table_id`` from the datasets that reproduce it.

    Returns None when no dataset declares the table in ``reproduces`` (nothing to show).
    """
    from e3lib.report import verdicts as verdicts_mod

    spec = spec or default_spec()
    tspec = spec["tables"][table_id]
    ref = reference if reference is not None else load_reference(table_id)
    mine = [ds for ds in datasets if table_id in json.loads(ds.attrs.get("reproduces", "[]"))]
    if not mine:
        return None
    # a sweep that declares `select` is shown at its chosen grid points (one place: here)
    mine = [select_grid(ds) for ds in mine]
    columns = tspec["columns"]
    extra = tspec.get("extra_dims", [])
    rows: list[Row] = []
    for ds in mine:
        rows.extend(sweep_rows(ds, columns, extra, spec))
    # where: one {axis: value} selector, or a list of them (a row matching any is kept)
    where = tspec.get("where", {})
    wheres = [{k: axis_label(v) for k, v in w.items()}
              for w in (where if isinstance(where, list) else [where])]
    rows = [r for r in rows
            if any(all(r.key.get(k, v) == v for k, v in w.items()) for w in wheres)]
    for r in rows:
        r.ref = match_reference(r.key, ref)
    title = (ref or {}).get("title") or tspec.get("title") or table_id
    table = Table(id=table_id, title=title, source=(ref or {}).get("source", ""),
                  setting=(ref or {}).get("setting", ""), note=(ref or {}).get("note", ""),
                  rows=rows, sweeps=[dict(ds.attrs) for ds in mine])
    if tspec.get("layout", "rows") == "pivot":
        _pivot_blocks(table, tspec, spec, ref, len(mine) > 1)
    else:
        _row_blocks(table, tspec, spec, ref, len(mine) > 1)
    if tspec.get("analytic_flops"):
        _analytic_flops_block(table)
    table.footnotes += [
        "Ours: mean ± standard error over seeds (std with ddof=1 / √n); (n=1): a single seed, "
        "no error bar. † marks a cell with fewer seeds than the sweep requested (n/requested); "
        "it is never shown as complete.",
        (f"paper: the values printed in the paper ({table.source}), in the same units; — "
         "where the paper gives none." if ref and ref.get("rows") else
         "paper: no values of the paper are transcribed for this table."),
    ]
    for ds in mine:
        sel = selection_of(ds)
        if sel is not None:
            table.footnotes.append(
                f"{ds.attrs['sweep']}: one row per configuration at the grid point of "
                f"{', '.join(_short(a) for a in sel['over'])} with the best mean over seeds of "
                f"{sel['split']} {sel['metric']} ({sel['mode']}, member {sel['member']}; ties: "
                f"first in grid order); † where a grid point or the chosen one lacks seeds. "
                f"The full grid is on the sweep page.")
    table.verdicts = verdicts_mod.evaluate_all(tspec.get("verdicts", []), rows, spec)
    return table


def _row_blocks(table: Table, tspec: Mapping, spec: Mapping, ref: Mapping | None,
                many: bool) -> None:
    columns = tspec["columns"]
    key_names: list[str] = []
    for r in table.rows:
        key_names += [k for k in r.key if k not in key_names]
    if ref and not key_names:
        key_names = list(ref.get("key", []))   # only paper rows: show the paper's key
    with_paper = bool(ref and ref.get("rows"))   # no paper columns for the demo table
    header = (["sweep"] if many else []) + (["paper row"] if with_paper else []) \
        + [_short(k) for k in key_names] + ["seeds"]
    with_selected = any(r.selected is not None for r in table.rows)
    if with_selected:
        header.append("selected (val)")
    for m in columns:
        mcfg = spec["metrics"][m]
        header += [f"{mcfg['label']}{_arrow(mcfg)} ours"] + \
            ([f"{mcfg['label']} paper"] if with_paper else [])

    # Order: paper rows in the paper's order (ours matched to each, else the paper alone),
    # then our rows that match no paper row.
    ordered: list[tuple[Row | None, dict | None]] = []
    used: set[int] = set()
    for prow in (ref or {}).get("rows", []):
        matched = [i for i, r in enumerate(table.rows) if r.ref is prow]
        ordered += [(table.rows[i], prow) for i in matched] or [(None, prow)]
        used.update(matched)
    ordered += [(r, None) for i, r in enumerate(table.rows) if i not in used]

    bold: dict[str, int | None] = {}
    if tspec.get("bold", True):
        ours_rows = [r for r, _ in ordered if r is not None]
        for m in [c for c in columns if spec["metrics"][c].get("bold", True)]:
            idx, why = significant_best([r.stats.get(m) for r in ours_rows],
                                        spec["metrics"][m].get("better"), spec["alpha"],
                                        spec["min_seeds"])
            bold[m] = id(ours_rows[idx]) if idx is not None else None
            if why:
                table.footnotes.append(f"{spec['metrics'][m]['label']}: {why}.")
        table.footnotes.append(
            f"Bold: best mean of its column, only where a Welch t-test against the runner-up "
            f"gives two-sided p < {spec['alpha']} (rows with ≥ {spec['min_seeds']} seeds).")

    body = []
    for r, prow in ordered:
        cells = [Cell(r.sweep if r else "", kind="key")] if many else []
        if with_paper:
            cells.append(Cell(prow.get("label", "") if prow else "", kind="label"))
        for k in key_names:
            if r is not None:
                cells.append(Cell(r.key.get(k, ""), kind="key"))
            else:
                v = (prow or {}).get("key", {}).get(k)
                cells.append(Cell("" if v is None else axis_label(v), kind="key"))
        if r is None:
            cells.append(Cell("not run", kind="seeds"))
        else:
            cells.append(Cell(f"{r.runs_ok}/{r.runs_requested}" +
                              (" †" if r.runs_ok < r.runs_requested else ""),
                              kind="seeds", flag=r.runs_ok < r.runs_requested))
        if with_selected:
            text = selected_text(r) if r is not None else ""
            cells.append(Cell(text, kind="label", flag=r is not None and not r.selected_ok))
        for m in columns:
            mcfg = spec["metrics"][m]
            c = format_ours(r.stats.get(m) if r else None, mcfg)
            c.bold = r is not None and bold.get(m) == id(r)
            cells.append(c)
            if with_paper:
                cells.append(format_paper((prow or {}).get("values", {}).get(m), mcfg))
        body.append(cells)
    table.blocks.append(Block(caption="", header=header, rows=body))


def _pivot_blocks(table: Table, tspec: Mapping, spec: Mapping, ref: Mapping | None,
                  many: bool) -> None:
    pivot = tspec["pivot"]
    for m in tspec["columns"]:
        mcfg = spec["metrics"][m]
        # ours: rows = the other key values, columns = pivot values
        groups: dict[tuple, dict[str, Row]] = {}
        pivots: list[str] = []
        rest_names: list[str] = []
        merge = set(tspec.get("merge", []))
        cells_seen = {(r.sweep, tuple((k, v) for k, v in r.key.items() if k not in merge))
                      for r in table.rows}
        if len(cells_seen) < len(table.rows):
            merge = set()  # merging would put two rows in one grid cell: keep them apart
        for r in table.rows:
            if pivot not in r.key:
                continue
            rest = tuple((k, v) for k, v in r.key.items() if k != pivot and k not in merge)
            rest_names += [k for k, _ in rest if k not in rest_names]
            groups.setdefault(((r.sweep,) if many else ()) + rest, {})[r.key[pivot]] = r
            if r.key[pivot] not in pivots:
                pivots.append(r.key[pivot])
        pivots.sort(key=_numeric_first)
        cells_flat = [g[p].stats.get(m) for g in groups.values() for p in pivots if p in g]
        idx, why = (significant_best(cells_flat, mcfg.get("better"), spec["alpha"],
                                     spec["min_seeds"])
                    if tspec.get("bold", True) and mcfg.get("bold", True) else (None, ""))
        bold_cell = cells_flat[idx] if idx is not None else None
        header = (["sweep"] if many else []) + [_short(k) for k in rest_names] + \
            [f"{_short(pivot)}={p}" for p in pivots]
        body = []
        for gkey, g in groups.items():
            kv = dict(gkey[1:] if many else gkey)
            cells = ([Cell(gkey[0], kind="key")] if many else []) + \
                [Cell(kv.get(k, ""), kind="key") for k in rest_names]
            for p in pivots:
                c = format_ours(g[p].stats.get(m) if p in g else None, mcfg)
                c.bold = p in g and bold_cell is not None and g[p].stats.get(m) is bold_cell
                cells.append(c)
            body.append(cells)
        if why:
            table.footnotes.append(f"{mcfg['label']} grid: {why}.")
        if m == tspec["columns"][0]:
            for gkey, g in groups.items():
                for p in pivots:
                    if p in g and g[p].selected is not None:
                        where = ", ".join(f"{_short(k)}={v}" for k, v in
                                          [*(gkey[1:] if many else gkey), (pivot, p)])
                        table.footnotes.append(f"selected at {where}: {selected_text(g[p])}")
        table.blocks.append(Block(caption=f"ours: {mcfg['label']}{_arrow(mcfg)}",
                                  header=header, rows=body))
        # paper: the same grid from the reference rows that give this metric
        prows = [p for p in (ref or {}).get("rows", []) if m in p["values"] and pivot in p["key"]]
        if prows:
            ppivots: list[str] = []
            pgroups: dict[str, dict[str, Cell]] = {}
            for p in prows:
                pv = axis_label(p["key"][pivot])
                ppivots += [pv] if pv not in ppivots else []
                label = ", ".join(f"{_short(k)}={axis_label(v)}"
                                  for k, v in p["key"].items() if k != pivot)
                pgroups.setdefault(label, {})[pv] = format_paper(p["values"][m], mcfg)
            pbody = [[Cell(label, kind="label")] + [g.get(pv, Cell("—", kind="paper"))
                                                    for pv in ppivots]
                     for label, g in pgroups.items()]
            table.blocks.append(Block(caption=f"paper: {mcfg['label']}",
                                      header=["paper row"] + [f"{_short(pivot)}={p}"
                                                              for p in ppivots],
                                      rows=pbody))


def _analytic_flops_block(table: Table) -> None:
    """Our analytic GFLOPs count (e3lib.flops) at each paper row's configuration.

    Optional: without e3lib.flops the table shows the paper's values and our runs' costs.
    """
    try:
        from e3lib import flops
        compared = flops.compare_with_paper(table.id)
    except Exception as err:  # noqa: BLE001 - optional part; say why it is absent
        table.footnotes.append(f"Analytic GFLOPs at the paper's configurations unavailable "
                               f"({type(err).__name__}: {err}).")
        return
    body = [[Cell(c["label"], kind="label"), Cell(f"{c['paper']:.2f}", kind="paper"),
             Cell(f"{c['ours']:.2f}"), Cell(f"{100 * c['rel']:+.2f} %")] for c in compared]
    table.blocks.append(Block(
        caption="analytic GFLOPs per image (e3lib.flops) at the paper's configurations, "
                "computed, not measured from runs",
        header=["paper row", "GFLOPs paper", "GFLOPs analytic", "difference"], rows=body))
