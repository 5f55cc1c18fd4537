"""Time of `e3 status` on paper-scale sweeps half done (target: a few seconds on 2 cores).

    .venv/bin/python benchmarks/bench_status.py [--sweeps sweeps/model_sizes.yaml ...]
        [--variant paper] [--done 0.5] [--record-kb 50]

Expands the sweeps (default: the largest, model_sizes, then the union of every sweep file
but the demo), writes a scratch results and logs folder as a sweep's jobs leave it part-way
(every upstream done; of the fine-tunes a fraction ``--done`` done with a results.json of
about ``--record-kb`` KB, 2% failed with an exit code in their log, 1% running with a fresh
progress.json; of the ensembles the same fraction done), then runs `e3 status --json`
on it in a subprocess and prints its wall-clock and CPU seconds and the counts it found.
Wall time on a shared machine includes waiting for the CPU; CPU seconds does not.
"""

from __future__ import annotations

import argparse
import glob
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def populate(root: Path, plan, done: float, record_kb: int) -> None:
    rec = {"split": "clean", "corruption": "none", "severity": 0, "member": "ensemble"}
    n_rec = max(1, record_kb * 1024 // 110)
    records = [{**rec, "metric": f"m{i}", "value": 0.1 * i} for i in range(n_rec)]
    results = {
        "format": 2,
        "status": "ok",
        "provenance": {"devices": {"num_devices": 8}},
        "cost": {"train_seconds": 3600.0},
        "records": records,
    }
    text = json.dumps(results, indent=1) + "\n"
    ok = json.dumps({"status": "ok", "exit_code": 0})
    for up in plan.upstreams:
        write(root / "results/upstream" / up / "done.json", json.dumps({"status": "ok"}))
    runs = sorted(plan.runs)
    n_done, n_fail, n_run = int(len(runs) * done), len(runs) // 50, len(runs) // 100
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    for i, rid in enumerate(runs):
        if i < n_done:
            write(root / "results/runs" / rid / "results.json", text)
            write(root / "results/runs" / rid / "done.json", ok)
        elif i < n_done + n_fail:
            write(
                root / "logs/finetune" / f"{rid}.log", f"=== {now} e3 run\nboom\n=== exit code 1\n"
            )
        elif i < n_done + n_fail + n_run:
            write(root / "logs/finetune" / f"{rid}.log", f"=== {now} e3 run\n")
            progress = {"step": 10, "steps": 100, "updated": now, "wall_seconds": 60.0}
            write(
                root / "results/runs" / rid / "progress.json",
                json.dumps(progress | {"num_devices": 8}),
            )
    for eid in sorted(plan.ensembles)[: int(len(plan.ensembles) * done)]:
        write(root / "results/ensembles" / eid / "done.json", ok)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweeps", nargs="+", default=None)
    ap.add_argument("--variant", default="paper", choices=["small", "paper"])
    ap.add_argument("--done", type=float, default=0.5)
    ap.add_argument("--record-kb", type=int, default=50)
    args = ap.parse_args()
    union = sorted(p for p in glob.glob(str(REPO / "sweeps/*.yaml")) if not p.endswith("demo.yaml"))
    cases = [args.sweeps] if args.sweeps else [[str(REPO / "sweeps/model_sizes.yaml")], union]
    sys.path.insert(0, str(REPO))
    from e3lib.sweep import expand_sweeps

    for files in cases:
        plan = expand_sweeps(files, args.variant)
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            populate(root, plan, args.done, args.record_kb)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "e3lib.cli",
                    "status",
                    *files,
                    "--variant",
                    args.variant,
                    "--results",
                    str(root / "results"),
                    "--logs",
                    str(root / "logs"),
                    "--json",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        total = json.loads(out)["total"]["jobs"]
        name = Path(files[0]).stem if len(files) == 1 else f"union of {len(files)} sweeps"
        print(
            f"{name} ({args.variant}): {len(plan.runs)} runs, {len(plan.upstreams)} upstreams, "
            f"{len(plan.ensembles)} ensembles: e3 status {wall:.1f} s wall, {cpu:.1f} s CPU"
        )
        for stage, c in total.items():
            print(f"  {stage}: " + ", ".join(f"{k} {v}" for k, v in c.items() if v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
