"""The report site: index, one page per sweep, one page per table (+ .md/.tex), figures.

Every link is relative, so ``reports/index.html`` opens from disk with no network; every
file is written atomically (temporary file + rename). Layout under ``out``:

    index.html               tables, sweeps and their status, figures, provenance, commands
    sweep_{sweep}.html       provenance, cost per run group, run list, figures
    curves_{sweep}.html      training curves and plateau table (e3lib.report.curves)
    pretrainings.html        every upstream of the report, by configuration
    {table_id}.html|.md|.tex one table, its paper values and its verdicts
    figures/fig_*.png
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import xarray as xr

from e3lib import atomic
from e3lib.aggregate import STATUS_FLAGS, axis_dim, dataset_axes
from e3lib.aggregate.curves import curves_path
from e3lib.report.costs import cost_summary
from e3lib.report.curves import (
    PRETRAININGS_PAGE,
    curves_page,
    load_curves,
    page_context,
    pretrainings_context,
)
from e3lib.report.selection import selection_summary
from e3lib.report.spec import TABLE_IDS, default_spec
from e3lib.report.status_page import sweep_status_views
from e3lib.report.tables import Table, build_table
from e3lib.report.templating import env

STATUS_NAMES = {v: k for k, v in STATUS_FLAGS.items()}


def write_atomic(path: Path, data: str | bytes) -> None:
    atomic.write_bytes(path, data.encode() if isinstance(data, str) else data)


@dataclass
class Input:
    path: Path  # the dataset.nc it was read from
    ds: xr.Dataset


@dataclass
class Site:
    out: Path
    inputs: list[Input]
    tables: dict[str, Table | None] = field(default_factory=dict)
    figures: dict[str, list] = field(default_factory=dict)  # sweep → [Figure]
    curves: dict[str, tuple] = field(default_factory=dict)  # dataset → load_curves(it), once
    logs: str = "logs"  # the jobs' logs (the index's status links the failing ones)


def _common() -> dict:
    try:
        version = metadata.version("e3lib")
    except metadata.PackageNotFoundError:
        version = "unknown"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"version": version, "generated": now}


def _rel(target: str | Path, out: Path) -> str | None:
    """Relative link from ``out`` to an existing file, or None."""
    target = Path(target)
    if not target.exists():
        return None
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def report_command(inputs: Sequence[Input], out: Path, only: str | None = None) -> str:
    parts = ["e3", "report", "--datasets", *[str(i.path) for i in inputs], "--out", str(out)]
    if only:
        parts += ["--only", only]
    return shlex.join(parts)


def _table_commands(table_id: str, inputs: Sequence[Input], out: Path) -> list[str]:
    return [
        f"snakemake {out.as_posix()}/{table_id}.html   # runs only the jobs this table needs",
        report_command(inputs, out, table_id) + "   # from existing datasets",
    ]


def _sweep_page(inp: Input) -> str:
    return f"sweep_{inp.ds.attrs['sweep']}.html"


def _sweep_summary(inp: Input, linked: bool) -> dict:
    a = inp.ds.attrs
    return {
        "sweep": a["sweep"],
        "page": _sweep_page(inp) if linked else None,
        "sweep_file": a.get("sweep_file", ""),
        "title": a.get("title", ""),
        "sweep_file_sha256": a.get("sweep_file_sha256", ""),
        "variant": a.get("variant", ""),
        "reproduces": ", ".join(json.loads(a.get("reproduces", "[]"))),
        "entries_ok": a.get("entries_ok", 0),
        "entries_missing": a.get("entries_missing", 0),
        "entries_diverged": a.get("entries_diverged", 0),
        "entries_member_failed": a.get("entries_member_failed", 0),
        # "ens (member: status, ...)" of each ensemble with a member that failed
        "failed_members": "; ".join(
            f"{ens} ({', '.join(f'{m}: {st}' for m, st in members.items())})"
            for ens, members in json.loads(a.get("failed_members", "{}")).items()
        ),
        "code_commits": ", ".join(json.loads(a.get("code_commits", "[]"))),
    }


def render_table_files(site: Site, table: Table, linked: bool) -> None:
    """{id}.html, {id}.md and {id}.tex of one table."""
    inputs = [i for i in site.inputs if table.id in json.loads(i.ds.attrs.get("reproduces", "[]"))]
    commands = _table_commands(table.id, site.inputs, site.out)
    figures = []
    if linked:
        for i in inputs:
            for f in site.figures.get(i.ds.attrs["sweep"], []):
                figures.append({"href": _rel(f.path, site.out), "title": f.title})
    ctx = dict(
        _common(),
        table=table,
        commands=commands,
        figures=figures,
        sweeps=[_sweep_summary(i, linked) for i in inputs],
        index_link=linked or (site.out / "index.html").exists(),
    )
    html = env(True).get_template("table.html.j2").render(title=table.title, **ctx)
    write_atomic(site.out / f"{table.id}.html", html)
    text_env = env(False)
    write_atomic(site.out / f"{table.id}.md", text_env.get_template("table.md.j2").render(**ctx))
    write_atomic(site.out / f"{table.id}.tex", text_env.get_template("table.tex.j2").render(**ctx))


def _runs(inp: Input, out: Path) -> tuple[list[str], list[dict]]:
    ds = inp.ds
    axes = dataset_axes(ds)
    dims = [axis_dim(a) for a in axes]
    status = ds["status"].transpose(*dims, "seed")
    ids = ds["run_id"].transpose(*dims, "seed")
    paths = ds["result_path"].transpose(*dims, "seed")
    runs = []
    for pos in np.ndindex(status.shape):
        code = int(status.values[pos])
        if code == STATUS_FLAGS["not_requested"]:
            continue
        labels = [str(ds[d].values[p]) for d, p in zip(dims, pos[:-1])]
        path = str(paths.values[pos])
        runs.append(
            {
                "axes": labels,
                "seed": int(ds["seed"].values[pos[-1]]),
                "status": STATUS_NAMES[code],
                "id": str(ids.values[pos]),
                "href": _rel(path, out) if code == STATUS_FLAGS["ok"] else None,
            }
        )
    return axes, runs


def render_sweep_page(site: Site, inp: Input) -> None:
    a = inp.ds.attrs
    sweep = a["sweep"]
    provenance = [
        (k, a.get(k, ""))
        for k in (
            "sweep_file",
            "sweep_file_sha256",
            "variant",
            "reproduces",
            "axes",
            "seeds_requested",
            "code_commits",
            "run_packages",
            "aggregate_packages",
            "index_path",
            "results_root",
        )
    ]
    provenance.insert(0, ("dataset", str(inp.path)))
    tables = []
    for tid in json.loads(a.get("reproduces", "[]")):
        t = site.tables.get(tid)
        tables.append(
            {
                "id": tid,
                "href": f"{tid}.html" if t else None,
                "title": t.title if t else tid,
                "why": "no table definition with this id"
                if tid not in TABLE_IDS
                else "not rendered",
            }
        )
    axes, runs = _runs(inp, site.out)
    figures = [
        {"href": _rel(f.path, site.out), "title": f.title} for f in site.figures.get(sweep, [])
    ]
    index_path = a.get("index_path") or f"results/sweeps/{sweep}/index.json"
    commands = [
        f"snakemake {inp.path}",
        shlex.join(
            [
                "e3",
                "aggregate",
                "--index",
                index_path,
                "--results-root",
                a.get("results_root", "results"),
                "--out",
                str(inp.path),
            ]
        ),
    ]
    html = (
        env(True)
        .get_template("sweep.html.j2")
        .render(
            title=f"Sweep {sweep}",
            s=_sweep_summary(inp, True),
            provenance=provenance,
            tables=tables,
            axes=axes,
            runs=runs,
            figures=figures,
            commands=commands,
            selection=selection_summary(inp),
            cost=cost_summary(inp.ds),
            curves_page=curves_page(sweep),
            index_link=True,
            **_common(),
        )
    )
    write_atomic(site.out / _sweep_page(inp), html)


def render_curves_page(site: Site, inp: Input) -> None:
    """``curves_{sweep}.html``: the training curves of the sweep's runs and upstreams."""
    sweep = inp.ds.attrs["sweep"]
    cds, why = site.curves[str(inp.path)]
    ctx = page_context(cds, why, site.out / "figures", sweep)
    back = (_sweep_page(inp), f"sweep {sweep}")
    head = {"title": f"Training curves: sweep {sweep}", "sweep": sweep, "back": back}
    commands = [f"snakemake {curves_path(inp.path)}", report_command(site.inputs, site.out)]
    _write_curves_page(site, ctx, head, commands, curves_page(sweep))


def render_pretrainings_page(site: Site) -> None:
    """``pretrainings.html``: every upstream of the report once, by configuration."""
    given = [
        (i.path, site.curves[str(i.path)][0], i.ds.attrs.get("results_root") or "")
        for i in site.inputs
    ]
    ctx = pretrainings_context(given, site.out / "figures")
    head = {"title": "Pretrainings of the report", "sweep": None, "back": ("index.html", "report")}
    commands = [report_command(site.inputs, site.out)]
    _write_curves_page(site, ctx, head, commands, PRETRAININGS_PAGE)


def _write_curves_page(site: Site, ctx: dict, head: dict, commands: list, page: str) -> None:
    fig = ctx.pop("figure")
    figure = {"href": _rel(fig.path, site.out), "title": fig.title} if fig else None
    html = (
        env(True)
        .get_template("curves.html.j2")
        .render(figure=figure, commands=commands, index_link=True, **head, **ctx, **_common())
    )
    write_atomic(site.out / page, html)


def render_index(site: Site) -> None:
    rows = []
    for tid in TABLE_IDS:
        t = site.tables.get(tid)
        counts = ""
        if t is not None:
            outcomes = [v.outcome for v in t.verdicts]
            counts = " / ".join(
                str(outcomes.count(o))
                for o in ("held", "not held", "inconclusive", "not computable", "not enough seeds")
            )
        rows.append(
            {
                "id": tid,
                "href": f"{tid}.html" if t else None,
                "title": t.title if t else "",
                "counts": counts,
                "why": "no given dataset reproduces it",
                "command": f"snakemake {site.out.as_posix()}/{tid}.html",
            }
        )
    figures = [
        {"href": _rel(f.path, site.out), "title": f.title, "sweep": sweep}
        for sweep, figs in site.figures.items()
        for f in figs
    ]
    synthetic = any(
        "synthetic" in json.loads(i.ds.attrs.get("code_commits", "[]")) for i in site.inputs
    )
    html = (
        env(True)
        .get_template("index.html.j2")
        .render(
            title="E³ reproduction report",
            tables=rows,
            figures=figures,
            synthetic=synthetic,
            sweeps=[_sweep_summary(i, True) for i in site.inputs],
            status=sweep_status_views(site.inputs, site.logs, lambda p: _rel(p, site.out)),
            pretrainings_page=PRETRAININGS_PAGE,
            index_link=False,
            commands=[
                f"snakemake {site.out.as_posix()}/index.html",
                report_command(site.inputs, site.out),
            ],
            **_common(),
        )
    )
    write_atomic(site.out / "index.html", html)


def build_site(
    inputs: Sequence[Input], out: str | Path, only: Sequence[str] = (), logs: str = "logs"
) -> Site:
    """Render the whole site, or with ``only`` just those tables' three files."""
    from e3lib.report.figures import sweep_figures

    site = Site(out=Path(out), inputs=list(inputs), logs=logs)
    site.out.mkdir(parents=True, exist_ok=True)
    datasets = [i.ds for i in inputs]
    spec = default_spec()
    for tid in only or TABLE_IDS:
        site.tables[tid] = build_table(tid, datasets, spec) if tid in spec["tables"] else None
    if only:
        for tid in only:
            if site.tables[tid] is not None:
                render_table_files(site, site.tables[tid], linked=False)
        return site
    for inp in inputs:
        site.figures[inp.ds.attrs["sweep"]] = sweep_figures(inp.ds, site.out / "figures")
    for t in site.tables.values():
        if t is not None:
            render_table_files(site, t, linked=True)
    site.curves = {str(i.path): load_curves(i.path) for i in inputs}
    for inp in inputs:
        render_sweep_page(site, inp)
        render_curves_page(site, inp)
    render_pretrainings_page(site)
    render_index(site)
    return site
