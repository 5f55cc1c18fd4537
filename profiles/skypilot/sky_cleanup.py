#!/usr/bin/env python3
"""The project's live SkyPilot managed jobs, and the cancelling of the orphans a crashed
or abandoned driver left (docs/launch.md):

    sky_cleanup.py [--dry-run] [--results DIR] [--sweeps F ...] [--variant V] [--all]

One line per live job of the project (``E3_SKY_PROJECT``, default e3): job id, name, state,
verdict. An orphan is a job whose entry is finished (its done.json exists under
``--results``) or, with ``--sweeps``, whose id is in none of those sweeps' plan; the
others are kept, since a rerun of the workflow reattaches to them.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sky_jobs  # noqa: E402
import sky_task  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


ENTRY_DIRS = {"finetune": "runs", "upstream": "upstream", "ensemble": "ensembles"}


def plan_ids(sweeps: list[str], variant: str) -> set[str]:
    """Run, upstream and ensemble ids of the sweeps' plan (e3lib.sweep, as the workflow)."""
    sys.path.insert(0, REPO)
    from e3lib import sweep

    plan = sweep.Catalog(sweeps, variant, "sweeps").configured
    return set(plan.runs) | set(plan.upstreams) | set(plan.ensembles)


def entry_of(record: dict, project: str) -> tuple[str, str] | None:
    """(stage, id) of a managed job of this project: from its labels, or from its name
    ``<project>-<ft|up|ens>-<id>`` (SkyPilot lists labels only once a cluster is up)."""
    labels = record.get("labels") or {}
    if labels.get("e3-project") == project and labels.get("e3-stage") and labels.get("e3-run"):
        return labels["e3-stage"], labels["e3-run"]
    name = str(record.get("job_name", ""))
    stage, _, ident = name[len(project) + 1 :].partition("-")
    if name.startswith(f"{project}-") and stage in sky_task.ABBREV_STAGE and ident:
        return sky_task.ABBREV_STAGE[stage], ident
    return None


def orphan_reason(entry: tuple[str, str], results: str, known: set[str] | None) -> str | None:
    """Why a live job of this project is an orphan, or None when a rerun still needs it."""
    stage, ident = entry
    done = os.path.join(results, ENTRY_DIRS.get(stage, stage), ident, "done.json")
    if os.path.exists(done):
        return f"finished: {done} exists"
    if known is not None and ident not in known:
        return "not in the plan of the given sweeps"
    return None


def cmd_cleanup(args: argparse.Namespace) -> int:
    """List the project's live managed jobs and cancel the orphans (or all, with --all)."""
    project = sky_task.Settings.from_env().project
    known = plan_ids(args.sweeps, args.variant) if args.sweeps else None
    mine = [
        (r, entry_of(r, project))
        for r in sky_jobs.queue()
        if r.get("status") in sky_jobs.LIVE
        and (
            (r.get("labels") or {}).get("e3-project") == project
            or str(r.get("job_name", "")).startswith(f"{project}-")
        )
    ]
    orphans = []
    for r, entry in sorted(mine, key=lambda m: m[0]["job_id"]):
        if args.all:
            why = "--all"
        elif entry is None:
            why = f"not named {project}-<ft|up|ens>-<id>"
            print(f"{r['job_id']}\t{r.get('job_name')}\t{r.get('status')}\tleft alone ({why})")
            continue
        else:
            why = orphan_reason(entry, args.results, known)
        verdict = f"orphan ({why})" if why else "kept (a rerun of the workflow reattaches to it)"
        print(f"{r['job_id']}\t{r.get('job_name')}\t{r.get('status')}\t{verdict}")
        if why:
            orphans.append(str(r["job_id"]))
    if not orphans:
        print(f"no orphaned managed jobs of project {project!r}")
    elif args.dry_run:
        print(f"would cancel {len(orphans)} managed job(s): {' '.join(orphans)}")
    else:
        sky_jobs.sky("jobs", "cancel", "--yes", *orphans)
        print(f"cancelled {len(orphans)} managed job(s): {' '.join(orphans)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sky_cleanup.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list, cancel nothing")
    ap.add_argument("--results", default="results", help="the workflow's results root")
    ap.add_argument("--sweeps", nargs="*", default=[], help="jobs of other runs are orphans")
    ap.add_argument("--variant", default="small")
    ap.add_argument("--all", action="store_true", help="cancel every live job of the project")
    args = ap.parse_args(argv)
    try:
        return cmd_cleanup(args)
    except (sky_task.TaskError, RuntimeError) as err:
        print(f"sky_cleanup.py: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
