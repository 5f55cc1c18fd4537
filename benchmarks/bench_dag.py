"""Dry-run time of the union of all paper-scale sweeps (target: at most 20 s on 2 cores).

    .venv/bin/python benchmarks/bench_dag.py [--variant paper] [--repeats 2]

Runs `snakemake -n -q` over every sweep file except the demo, in a scratch results root,
and prints the wall-clock and CPU seconds of each dry run (parsing writes nothing, so
every repeat does the same work), then one `--quiet rules` dry run for Snakemake's job
count, and the expansion alone (e3lib.sweep.expand_sweeps) and the parse-time fit and cost
checks (``check_fits``, ``sweep_costs``) for comparison; it checks that
the dry runs left the scratch results root empty. The budget is raised for these dry runs
(the union of the paper sweeps costs more than the default). Wall time on a shared machine includes
waiting for the CPU; CPU seconds is the part that does not depend on other load.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="paper", choices=["small", "paper"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    sweeps = sorted(
        p for p in glob.glob(str(REPO / "sweeps" / "*.yaml")) if not p.endswith("demo.yaml")
    )
    sys.path.insert(0, str(REPO))
    from e3lib import sweep as S

    with tempfile.TemporaryDirectory() as scratch:
        t = time.perf_counter()
        plan = S.expand_sweeps(sweeps, args.variant)
        expand_s = time.perf_counter() - t
        print(
            f"expansion: {len(plan.sweeps)} sweeps, {len(plan.runs)} runs, "
            f"{len(plan.ensembles)} ensembles, {len(plan.upstreams)} upstreams "
            f"in {expand_s:.2f} s"
        )
        t = time.perf_counter()
        S.check_fits(plan, args.variant)
        costs = S.sweep_costs(plan)
        print(
            f"fit and cost checks: {sum(c['total'] for c in costs.values()):,.0f} estimated "
            f"device-hours in {time.perf_counter() - t:.2f} s"
        )
        rel = [os.path.relpath(p, REPO) for p in sweeps]
        base = [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "2",
            "--config",
            f"variant={args.variant}",
            f"results={scratch}/results",
            f"sweeps=[{','.join(rel)}]",
            # the union of the paper sweeps is over the default budget: measure, not refuse
            "budget_device_hours=1e12",
            "budget_run_device_hours=1e12",
        ]
        # `-q`: the dry run as a user runs it at scale (no per-job listing). The job-count
        # table needs `--quiet rules`, whose per-job reasons cost about as much again, so
        # it runs last and separately.
        runs = (
            [("-q", ["-q"], "first")]
            + [("-q", ["-q"], "again")] * (args.repeats - 1)
            + [("--quiet rules", ["--quiet", "rules"], "with the job table")]
        )
        for flag, extra, label in runs:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            r = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if r.returncode != 0:
                print(r.stdout[-2000:], r.stderr[-2000:])
                return 1
            m = re.search(r"^total\s+(\d+)$", r.stdout, re.M)
            jobs = f"{m.group(1)} jobs" if m else "(jobs not listed)"
            print(
                f"snakemake -n {flag} ({label}): {jobs}, {wall:.1f} s wall, {cpu:.1f} s CPU; "
                f"wall / 20 s target = {wall / 20:.2f}"
            )
        if os.path.exists(f"{scratch}/results"):
            print(f"a dry run wrote {scratch}/results")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
