"""Tables in the paper's layout: our seed statistics beside the paper's values, bolding.

One renderer serves every table: ``build_table`` turns a spec (tables.yaml) and the
datasets that reproduce it into a ``Table`` of text cells (``cells``); the Jinja2
templates ``table.{html,md,tex}.j2`` only lay those cells out. Rows and their seed
statistics come from ``rows``, the paper row each one is shown beside from ``alignment``
(matched by the relationship the table is about), the claims from ``verdicts``.

Hyperparameter selection: a dataset whose sweep declares ``select`` is shown through
``e3lib.aggregate.select_grid`` (one row per cell of the other axes, at the grid point
chosen on the validation split); the chosen values form a "selected" column (row layout)
or footnotes (pivot layout), marked † where the grid or the chosen point lacks seeds.

Bolding rule: in each metric column (or pivot grid) the row with the best mean is bold
only if a Welch t-test (unequal variances, two-sided) of its seed values against the
runner-up's gives p < alpha (0.05); rows with fewer than ``min_seeds`` values take no part,
and a test that is not computable bolds nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import xarray as xr

from e3lib.aggregate import axis_label, select_grid, selection_of
from e3lib.report import alignment, verdicts
from e3lib.report.cells import (
    Block,
    Cell,
    Table,
    _arrow,
    format_ours,
    format_paper,
    significant_best,
)
from e3lib.report.pivot import pivot_blocks
from e3lib.report.rows import (
    MEMBERS,
    Row,
    display_key,
    key_cell,
    selected_text,
    short,
    sweep_rows,
)
from e3lib.report.spec import default_spec, load_reference

# --------------------------------------------------------------------------- titles

_PAPER_CONFIG = [
    r"\s*\((?:[^()]|\([^()]*\))*\)",  # "(E³-B/32, K=M=2, E=32)"
    r"-[SBLH]/\d+",  # "V-MoE-B/32" → "V-MoE"
    r",?\s*\b(?:ImageNet|CIFAR10|CIFAR100)\b,?",
]  # the paper's dataset


def subject(title: str) -> str:
    """The paper's table title without the paper's configuration (size, E, dataset)."""
    prefix, _, rest = title.partition(": ")
    for pattern in _PAPER_CONFIG:
        rest = re.sub(pattern, "", rest)
    rest = re.sub(r"\s+", " ", rest).strip(" ,")
    return f"{prefix}: {rest}" if rest else prefix


def _ran(ds: xr.Dataset) -> dict:
    config = alignment.run_configuration(ds)
    return {
        "sweep": ds.attrs["sweep"],
        "variant": ds.attrs.get("variant", ""),
        "config": config,
        "text": alignment.describe_run(ds, config),
    }


# --------------------------------------------------------------------------- building


def build_table(
    table_id: str,
    datasets: Sequence[xr.Dataset],
    spec: Mapping | None = None,
    reference: Mapping | None = None,
) -> Table | None:
    """The rendered-to-text table ``table_id`` from the datasets that reproduce it.

    Returns None when no dataset declares the table in ``reproduces`` (nothing to show).
    """
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
    ran = [_ran(ds) for ds in mine]
    rows: list[Row] = []
    config_of: dict[str, dict] = {}
    for ds, r in zip(mine, ran):
        rows.extend(sweep_rows(ds, columns, extra, spec))
        config_of[ds.attrs["sweep"]] = r["config"]
    # where: one {axis: value} selector, or a list of them (a row matching any is kept)
    where = tspec.get("where", {})
    wheres = [
        {k: axis_label(v) for k, v in w.items()}
        for w in (where if isinstance(where, list) else [where])
    ]
    rows = [r for r in rows if any(all(r.key.get(k, v) == v for k, v in w.items()) for w in wheres)]
    align = (ref or {}).get("align")
    for sweep, config in config_of.items():
        mine_rows = [r for r in rows if r.sweep == sweep]
        dens = alignment.our_denominators(align, [r.key for r in mine_rows], config)
        for i, r in enumerate(mine_rows):
            r.ref, r.ref_note = alignment.match_reference(r.key, ref, config, dens.get(i))
            if align:
                r.align_ratio = alignment.ratio_text(alignment.our_ratio(align, r.key, dens.get(i)))
    paper_title = (ref or {}).get("title") or tspec.get("title") or table_id
    at_paper = all(r["variant"] == "paper" for r in ran)
    variants = ", ".join(sorted({r["variant"] or "?" for r in ran}))
    title = paper_title if at_paper or not ref else f"{subject(paper_title)} — {variants} variant"
    table = Table(
        id=table_id,
        title=title,
        source=(ref or {}).get("source", ""),
        setting=(ref or {}).get("setting", ""),
        note=(ref or {}).get("note", ""),
        rows=rows,
        sweeps=[dict(ds.attrs) for ds in mine],
        paper_title=paper_title,
        ran=ran,
    )
    if tspec.get("layout", "rows") == "pivot":
        pivot_blocks(table, tspec, spec, ref, len(mine) > 1)
    else:
        _row_blocks(table, tspec, spec, ref, len(mine) > 1)
    if tspec.get("analytic_flops"):
        _analytic_flops_block(table)
    table.footnotes += [
        (
            "Ours: mean ± standard error over seeds (std with ddof=1 / √n); (n=1): a single seed, "
            "no error bar. † marks a cell with fewer seeds than the sweep requested "
            "(n/requested); it is never shown as complete."
        ),
        (
            f"paper: the values printed in the paper ({table.source}), in the same units; — "
            "where the paper gives none."
            if ref and ref.get("rows")
            else "paper: no values of the paper are transcribed for this table."
        ),
    ]
    notes = [
        f"{r.sweep} {', '.join(f'{short(k)}={v}' for k, v in r.key.items())} → "
        f"{r.ref.get('label', '?')} ({r.ref_note})"
        for r in rows
        if r.ref and r.ref_note
    ]
    if notes:
        why = (
            f"by {align['label']}, the relationship this table is about, not by absolute value"
            if align
            else "under the stated reading"
        )
        table.footnotes.append(f"Paper rows matched {why}: " + "; ".join(notes) + ".")
    for ds in mine:
        sel = selection_of(ds)
        if sel is not None:
            table.footnotes.append(
                f"{ds.attrs['sweep']}: one row per configuration at the grid point of "
                f"{', '.join(short(a) for a in sel['over'])} with the best mean over seeds of "
                f"{sel['split']} {sel['metric']} ({sel['mode']}, member {sel['member']}; ties: "
                f"first in grid order); † where a grid point or the chosen one lacks seeds. "
                f"The full grid is on the sweep page."
            )
    table.verdicts = verdicts.evaluate_all(tspec.get("verdicts", []), rows, spec)
    return table


def _row_blocks(
    table: Table, tspec: Mapping, spec: Mapping, ref: Mapping | None, many: bool
) -> None:
    columns = tspec["columns"]
    key_names: list[str] = []
    for r in table.rows:
        key_names += [k for k in r.key if k not in key_names]
    if ref and not key_names:
        key_names = list(ref.get("key", []))  # only paper rows: show the paper's key
    key_names = display_key(key_names)  # model.ensemble_size, ensemble.runs → M
    with_paper = bool(ref and ref.get("rows"))  # no paper columns for the demo table
    align = (ref or {}).get("align") if with_paper else None
    header = (
        (["sweep"] if many else [])
        + (["paper row"] if with_paper else [])
        + ([align["label"]] if align else [])
        + [short(k) for k in key_names]
        + ["seeds"]
    )
    with_selected = any(r.selected is not None for r in table.rows)
    if with_selected:
        header.append("selected (val)")
    for m in columns:
        mcfg = spec["metrics"][m]
        header += [f"{mcfg['label']}{_arrow(mcfg)} ours"] + (
            [f"{mcfg['label']} paper"] if with_paper else []
        )

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
            idx, why = significant_best(
                [r.stats.get(m) for r in ours_rows],
                spec["metrics"][m].get("better"),
                spec["alpha"],
                spec["min_seeds"],
            )
            bold[m] = id(ours_rows[idx]) if idx is not None else None
            if why:
                table.footnotes.append(f"{spec['metrics'][m]['label']}: {why}.")
        table.footnotes.append(
            f"Bold: best mean of its column, only where a Welch t-test against the runner-up "
            f"gives two-sided p < {spec['alpha']} (rows with ≥ {spec['min_seeds']} seeds)."
        )

    body = []
    for r, prow in ordered:
        cells = [Cell(r.sweep if r else "", kind="key")] if many else []
        if with_paper:
            cells.append(Cell(prow.get("label", "") if prow else "", kind="label"))
        if align:  # the aligned quantity: ours, or the paper row's when we ran none
            text = (
                r.align_ratio
                if r is not None
                else alignment.ratio_text(alignment.paper_ratio(align, (prow or {}).get("key", {})))
            )
            cells.append(Cell(text, kind="key"))
        for k in key_names:
            if r is not None:
                cells.append(Cell(key_cell(r.key, k), kind="key"))
            else:  # a paper row we did not run: its key, unless it is on another scale
                pkey = (prow or {}).get("key", {})
                on_scale = k == MEMBERS or k in pkey and not (align and k == align["axis"])
                cells.append(Cell(key_cell(pkey, k) if on_scale else "", kind="key"))
        if r is None:
            cells.append(Cell("not run", kind="seeds"))
        else:
            cells.append(
                Cell(
                    f"{r.runs_ok}/{r.runs_requested}"
                    + (" †" if r.runs_ok < r.runs_requested else ""),
                    kind="seeds",
                    flag=r.runs_ok < r.runs_requested,
                )
            )
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


def _analytic_flops_block(table: Table) -> None:
    """Our analytic GFLOPs count (e3lib.cost) at each paper row's configuration."""
    from e3lib.report.flops_reference import compare_with_paper

    compared = compare_with_paper(table.id)
    body = [
        [
            Cell(c["label"], kind="label"),
            Cell(f"{c['paper']:.2f}", kind="paper"),
            Cell(f"{c['ours']:.2f}"),
            Cell(f"{100 * c['rel']:+.2f} %"),
        ]
        for c in compared
    ]
    table.blocks.append(
        Block(
            caption="analytic GFLOPs per image (e3lib.cost) at the paper's configurations, "
            "computed, not measured from runs",
            header=["paper row", "GFLOPs paper", "GFLOPs analytic", "difference"],
            rows=body,
        )
    )
