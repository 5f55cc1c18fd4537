"""The pivot layout of a table: one grid per metric, ours beside the paper's.

Rows are the values of the key axes other than the pivot axis, columns the pivot axis's
values (tables.yaml: ``layout: pivot``, ``pivot``, ``merge``); the best cell of each grid is
bold by the rule of ``cells.significant_best``, and chosen grid points become footnotes.
"""

from __future__ import annotations

from collections.abc import Mapping

from e3lib.aggregate import axis_label
from e3lib.report.cells import (
    Block,
    Cell,
    Table,
    _arrow,
    _numeric_first,
    format_ours,
    format_paper,
    significant_best,
)
from e3lib.report.rows import Row, display_key, key_cell, selected_text, short


def pivot_blocks(
    table: Table, tspec: Mapping, spec: Mapping, ref: Mapping | None, many: bool
) -> None:
    pivot = tspec["pivot"]
    for m in tspec["columns"]:
        mcfg = spec["metrics"][m]
        # ours: rows = the other key values, columns = pivot values
        groups: dict[tuple, dict[str, Row]] = {}
        pivots: list[str] = []
        rest_names: list[str] = []
        merge = set(tspec.get("merge", []))
        cells_seen = {
            (r.sweep, tuple((k, v) for k, v in r.key.items() if k not in merge)) for r in table.rows
        }
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
        idx, why = (
            significant_best(cells_flat, mcfg.get("better"), spec["alpha"], spec["min_seeds"])
            if tspec.get("bold", True) and mcfg.get("bold", True)
            else (None, "")
        )
        bold_cell = cells_flat[idx] if idx is not None else None
        shown = display_key(rest_names, exclude=[pivot])  # member axes → one column M
        header = (
            (["sweep"] if many else [])
            + [short(k) for k in shown]
            + [f"{short(pivot)}={p}" for p in pivots]
        )
        body = []
        for gkey, g in groups.items():
            kv = dict(gkey[1:] if many else gkey)
            cells = ([Cell(gkey[0], kind="key")] if many else []) + [
                Cell(key_cell(kv, k), kind="key") for k in shown
            ]
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
                        where = ", ".join(
                            f"{short(k)}={v}"
                            for k, v in [*(gkey[1:] if many else gkey), (pivot, p)]
                        )
                        table.footnotes.append(f"selected at {where}: {selected_text(g[p])}")
        table.blocks.append(
            Block(caption=f"ours: {mcfg['label']}{_arrow(mcfg)}", header=header, rows=body)
        )
        # paper: the same grid from the reference rows that give this metric
        prows = [p for p in (ref or {}).get("rows", []) if m in p["values"] and pivot in p["key"]]
        if prows:
            ppivots: list[str] = []
            pgroups: dict[str, dict[str, Cell]] = {}
            for p in prows:
                pv = axis_label(p["key"][pivot])
                ppivots += [pv] if pv not in ppivots else []
                label = ", ".join(
                    f"{short(k)}={axis_label(v)}" for k, v in p["key"].items() if k != pivot
                )
                pgroups.setdefault(label, {})[pv] = format_paper(p["values"][m], mcfg)
            pbody = [
                [Cell(label, kind="label")] + [g.get(pv, Cell("—", kind="paper")) for pv in ppivots]
                for label, g in pgroups.items()
            ]
            table.blocks.append(
                Block(
                    caption=f"paper: {mcfg['label']}",
                    header=["paper row"] + [f"{short(pivot)}={p}" for p in ppivots],
                    rows=pbody,
                )
            )
