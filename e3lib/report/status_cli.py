"""``e3 status``: where the sweeps stand, read from the files their jobs write.

    e3 status                                   # the workflow's default sweeps and folders
    e3 status sweeps/table3_overlap.yaml --variant paper --results /shared/results --json

The sweeps are expanded in memory (``e3lib.sweep``, as the Snakefile does: the same ids),
then each job's done file, progress record, checkpoints and log are read
(``e3lib.report.jobstate``). Nothing is written and no lock is taken, so it runs beside a
Snakemake driver or a fleet writing the same results folder. Defaults (sweeps, variant,
results, logs) are the workflow's (``workflow/schemas/config.schema.yaml``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e3lib import safeyaml, tree
from e3lib.errors import ConfigError
from e3lib.report.jobstate import STATES
from e3lib.report.status import DEFAULT_STALE_MINUTES, cost_line, from_sweep, status
from e3lib.sweep import VARIANTS, SweepError, expand_sweeps

CONFIG_SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
COLUMNS = ("total", *STATES)
HEADS = ("jobs", "done", "running", "failed", "diverged", "member failed", "not started")


def workflow_defaults() -> dict:
    """Default of each workflow config key (what ``snakemake`` runs without --config)."""
    props = safeyaml.load_file(CONFIG_SCHEMA)["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def grid(rows: list[tuple[str, dict]]) -> list[str]:
    """Aligned rows: a label, then the count of each state."""
    cells = [("", *HEADS)] + [(label, *(str(c[k]) for k in COLUMNS)) for label, c in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADS) + 1)]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    ]


def render_text(st: dict) -> str:
    out = []
    for s in st["sweeps"]:
        out.append(f"sweep {s['sweep']}  ({s['file']}, variant {s['variant']})")
        rows = [(stage, c) for stage, c in s["jobs"].items()]
        for t in s["tables"]:
            if t["jobs"] != s["jobs"]:  # a table with a part of the sweep
                rows += [(f"{t['table']} {stage}", c) for stage, c in t["jobs"].items()]
        out += ["  " + line for line in grid(rows)]
        tables = ", ".join(t["table"] for t in s["tables"] if t["jobs"] == s["jobs"])
        if tables:
            out.append(f"  tables with every job of the sweep: {tables}")
        out.append("  " + cost_line(s))
        for r in s["problems"]:
            where = r["log"] or "no log"
            out.append(f"  {r['state']:<13} {r['stage']} {r['id']} ({r['row']}): {r['reason']}")
            out.append(f"                {where}")
        for r in s["running"]:
            step = (
                f"step {r['step']}/{r['steps']}" if r["step"] is not None else "no progress record"
            )
            out.append(
                f"  running       {r['stage']} {r['id']} ({r['row']}): {step}, "
                f"changed {r['minutes_since_change']} min ago"
            )
        out.append("")
    if len(st["sweeps"]) > 1:
        out.append("all sweeps (each job once)")
        out += ["  " + line for line in grid(list(st["total"]["jobs"].items()))]
        out.append("  " + cost_line(st["total"]))
        out.append("")
    out.append(
        f"running: a change within {st['stale_minutes']:g} min and no exit code in its log "
        "(docs/workflow.md, 'Watching a sweep')"
    )
    return "\n".join(out)


def cli_status(argv: list[str]) -> int:
    """e3 status [SWEEP.yaml ...] [--results DIR] [--logs DIR] [--variant V] [--json]"""
    d = workflow_defaults()
    ap = argparse.ArgumentParser(prog="e3 status", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="*", help=f"sweep files (default: {' '.join(d['sweeps'])})")
    ap.add_argument("--results", default=d["results"], help="results root of the workflow")
    ap.add_argument("--logs", default=d["logs"], help="logs folder of the workflow")
    ap.add_argument("--variant", default=d["variant"], choices=VARIANTS)
    ap.add_argument("--json", action="store_true", help="print the status as JSON")
    ap.add_argument(
        "--stale-minutes",
        type=float,
        default=DEFAULT_STALE_MINUTES,
        help="a job with no exit code counts as running while one of its files changed "
        "within this many minutes, as failed after (default: %(default)g)",
    )
    ap.add_argument("--max-runs", type=int, default=None)
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    args = ap.parse_args(argv)
    if args.stale_minutes <= 0:
        print("e3 status: --stale-minutes must be > 0", file=sys.stderr)
        return 2
    try:
        checkpoints = tree.parse_assignments(args.checkpoint, "--checkpoint")
        files = args.sweeps or d["sweeps"]
        plan = expand_sweeps(files, args.variant, args.max_runs, checkpoints, "--checkpoint")
    except (SweepError, ConfigError) as err:
        print(f"e3 status: {err}", file=sys.stderr)
        return 2
    st = status(
        [from_sweep(s) for s in plan.sweeps.values()],
        args.results,
        args.logs,
        stale_minutes=args.stale_minutes,
    )
    print(json.dumps(st, indent=1) if args.json else render_text(st))
    return 0
