"""Tables, verdicts, figures and the HTML report of sweep datasets (``e3 report``).

    e3 report --datasets results/sweeps/*/dataset.nc --out reports            # whole site
    e3 report --datasets results/sweeps/*/dataset.nc --out reports --only table3

Modules: ``spec`` (tables.yaml and reference/*.yaml, validated), ``rows`` (seed
statistics per cell), ``alignment`` (which paper row each row stands beside; the
configuration that ran), ``cells`` (text cells and number formats), ``tables`` (paper
layout, significance bolding), ``verdicts`` (the paper's claims, tested with
``e3lib.stats``), ``figures`` (seaborn), ``html`` (Jinja2 pages), ``synthetic`` (result
sets with known statistics, for tests and docs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from e3lib import integrity
from e3lib.report.spec import TABLE_IDS, SpecError


def cli_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="e3 report",
        description="Render the paper's tables (ours beside the paper's), verdicts, figures "
        "and an offline HTML site from sweep datasets.",
    )
    parser.add_argument(
        "--datasets", nargs="+", required=True, help="dataset.nc files written by `e3 aggregate`"
    )
    parser.add_argument("--out", default="reports", help="output directory (default: reports)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="TABLE_ID",
        help=f"write only these tables' .html/.md/.tex; one of {list(TABLE_IDS)}",
    )
    parser.add_argument(
        "--logs",
        default="logs",
        help="the jobs' log folder: the index links the logs of failed jobs (default: logs)",
    )
    args = parser.parse_args(argv)

    bad = [t for t in args.only if t not in TABLE_IDS]
    if bad:
        print(
            f"e3 report: --only {bad[0]!r}: unknown table id; allowed: {list(TABLE_IDS)}",
            file=sys.stderr,
        )
        return 2
    missing = [p for p in args.datasets if not Path(p).is_file()]
    if missing:
        print(f"e3 report: --datasets {missing[0]}: file not found", file=sys.stderr)
        return 2

    for p in args.datasets:  # its checksum, recorded by `e3 aggregate` (dataset.done.json)
        done = Path(p).with_suffix(".done.json")
        if done.is_file() and (problem := integrity.check(done, deep=True)):
            integrity.set_aside(done, problem)
            print(
                f"e3 report: {problem}; set aside: run the same command again to re-aggregate it",
                file=sys.stderr,
            )
            return 2

    from e3lib.aggregate import open_dataset
    from e3lib.report.html import Input, build_site

    inputs = []
    for p in args.datasets:
        try:
            ds = open_dataset(p)
        except (OSError, ValueError) as err:
            print(f"e3 report: --datasets {p}: cannot read as netCDF ({err})", file=sys.stderr)
            return 2
        for attr in ("sweep", "axes", "reproduces"):
            if attr not in ds.attrs:
                print(
                    f"e3 report: --datasets {p}: attribute {attr!r} missing; "
                    f"was it written by `e3 aggregate`?",
                    file=sys.stderr,
                )
                return 2
        inputs.append(Input(Path(p), ds))
    try:
        site = build_site(inputs, args.out, args.only, args.logs)
    except SpecError as err:
        print(f"e3 report: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.only:
        absent = [t for t in args.only if site.tables.get(t) is None]
        for t in args.only:
            if t not in absent:
                print(f"e3 report: wrote {out / (t + '.html')} (+ .md, .tex)")
        if absent:
            print(
                f"e3 report: {', '.join(absent)}: no given dataset reproduces it "
                f"(`reproduces:` of the sweep files); nothing written",
                file=sys.stderr,
            )
            return 1
        return 0
    rendered = [t for t, v in site.tables.items() if v is not None]
    print(
        f"e3 report: {out / 'index.html'}: {len(rendered)} tables ({', '.join(rendered)}), "
        f"{sum(len(f) for f in site.figures.values())} figures"
    )
    return 0
