"""The ``e3 aggregate`` command."""

from __future__ import annotations

import argparse
import sys

from e3lib import integrity
from e3lib.aggregate.curves import build_curves, curves_path
from e3lib.aggregate.dataset import (
    build_dataset,
    damaged_entries,
    load_index,
    write_netcdf_atomic,
)
from e3lib.aggregate.schemas import AggregateError
from e3lib.aggregate.selection import select_grid


def cli_aggregate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="e3 aggregate",
        description="Gather the results of all entries of a sweep (each entry's status from "
        "its done.json) into one netCDF dataset.",
    )
    parser.add_argument("--index", required=True, help="results/sweeps/{sweep}/index.json")
    parser.add_argument("--results-root", default="results")
    parser.add_argument("--out", required=True, help="results/sweeps/{sweep}/dataset.nc")
    parser.add_argument(
        "--curves",
        default=None,
        help="training curves of the runs and upstreams (default: curves.nc beside --out)",
    )
    args = parser.parse_args(argv)
    try:
        index = load_index(args.index)
        damaged = damaged_entries(index, args.results_root)
        for done, problem in damaged.items():
            integrity.set_aside(done, problem)
            print(f"e3 aggregate: damaged entry set aside: {problem}", file=sys.stderr)
        if damaged:
            print(
                f"e3 aggregate: {len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'}"
                " set aside (done.json renamed); run the same command again to recompute "
                "and aggregate them",
                file=sys.stderr,
            )
            return 2
        ds = build_dataset(index, args.results_root, index_path=args.index)
        curves = build_curves(index, args.results_root)
    except AggregateError as err:
        print(f"e3 aggregate: {err}", file=sys.stderr)
        return 2
    write_netcdf_atomic(ds, args.out)
    write_netcdf_atomic(curves, args.curves or curves_path(args.out))
    a = ds.attrs
    print(
        f"e3 aggregate: {a['sweep']}: {a['entries_ok']} ok, {a['entries_missing']} missing, "
        f"{a['entries_diverged']} diverged, {a['entries_member_failed']} member_failed "
        f"→ {args.out}; {int((curves['note'] == '').sum())} of {curves.sizes['curve']} "
        f"training curves → {args.curves or curves_path(args.out)}"
    )
    if index.get("select"):
        view = select_grid(ds)
        flagged = int((~view["select_ok"]).sum())
        print(
            f"e3 aggregate: {a['sweep']}: selection over {index['select']['over']} by "
            f"{index['select']['split']} {index['select']['metric']}: "
            f"{int(view['select_ok'].size)} cells, {flagged} flagged (incomplete grid, "
            f"incomplete choice or no validation metric)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli_aggregate(sys.argv[1:]))
