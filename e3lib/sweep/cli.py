"""``e3 expand``: sweep files -> run configs and readable indexes under a results root."""

from __future__ import annotations

import argparse
import sys

from e3lib import tree
from e3lib.errors import ConfigError
from e3lib.sweep.expand import expand_sweeps
from e3lib.sweep.load import VARIANTS
from e3lib.sweep.plan import write_plan
from e3lib.sweep.schema import SweepError


def cli_expand(argv: list[str]) -> int:
    """e3 expand SWEEP.yaml [...] --results-root results [--variant small|paper|public]
    [--checkpoint NAME=PATH ...]"""
    ap = argparse.ArgumentParser(prog="e3 expand", description=cli_expand.__doc__)
    ap.add_argument("sweeps", nargs="+", help="sweep YAML files")
    ap.add_argument("--results-root", default="results")
    ap.add_argument("--variant", default="small", choices=VARIANTS)
    ap.add_argument(
        "--max-runs",
        type=int,
        default=None,
        help="the most jobs one sweep file may expand to (default: the sweep's "
        "max_runs:, else 20000)",
    )
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="path of a published checkpoint named in the sweeps (repeatable; docs/checkpoints.md)",
    )
    args = ap.parse_args(argv)
    try:
        checkpoints = tree.parse_assignments(args.checkpoint, "--checkpoint")
        plan = expand_sweeps(args.sweeps, args.variant, args.max_runs, checkpoints, "--checkpoint")
    except (SweepError, ConfigError) as err:
        print(f"e3 expand: {err}", file=sys.stderr)
        return 2
    written = write_plan(plan, args.results_root)
    for s in plan.sweeps.values():
        n_runs = sum(e["kind"] == "run" for e in s.entries)
        print(
            f"{s.name}: {n_runs} runs, {len(s.entries) - n_runs} ensembles -> "
            f"{args.results_root}/sweeps/{s.name}/index.json"
        )
    print(
        f"{len(plan.runs)} distinct runs, {len(plan.upstreams)} upstreams; {written} files written"
    )
    return 0
