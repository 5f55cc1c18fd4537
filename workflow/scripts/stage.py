"""Run one workflow stage command and record its outcome in a small status file.

    python workflow/scripts/stage.py [--status results/runs/ID/done.json] \
        --log logs/finetune/ID.log \
        [--write results/configs/ID.json TEXT] [--expect results/runs/ID/results.json] \
        [--require-ok MEMBER_DONE.json ...] -- e3 run ...

``--write PATH TEXT`` (repeatable) first writes the file the command reads (a run config
from the workflow's in-memory plan), atomically and only when its content changed.

Exit codes of the ``e3`` commands:
    0  ok           the status file records "ok" and, under ``files``, the size and SHA-256
                    of each ``--expect`` file (paths relative to the status file's folder),
                    checked before the files are used (``e3lib.integrity``)
    3  diverged     a deterministic outcome of the config: recorded as "diverged" and the
                    job succeeds, so the sweep's aggregate still runs and counts it
    4  preempted    (SIGTERM) the job fails; Snakemake retries it and the command resumes
                    from its checkpoint directory
    other           the job fails
With ``--require-ok``, the command is not run unless every listed status file says "ok";
otherwise "member_failed" is recorded (a deep ensemble of a diverged run). A member whose
files no longer match their checksums is set aside (its status file renamed) and the job
fails: rerunning the same command recomputes the member, then the ensemble.

The log is appended to, one header per attempt, so a retried job keeps its history.
With ``E3_EXIT_CODE_FILE`` set, the command's exit code is also written to that file, for
a launcher that must tell a preemption (4) from other failures through Snakemake, whose
own exit code is 1 for every failed job (the ``skypilot`` profile's run script).

Multi-host jobs (a TPU slice through the ``tpu`` profile, a multi-node Slurm allocation):
every host runs this script with the same arguments. Only process 0 (``E3_PROCESS_ID``,
else ``SLURM_PROCID``, else the TPU worker id ``CLOUD_TPU_TASK_ID`` / ``TPU_WORKER_ID``;
0 when none is set) writes the status file and checks ``--expect``; the others log to
``LOG.p<id>`` and return the same job outcome (0 for a recorded "diverged" too), from the
command's exit code, which e3 agrees across processes: srun's exit code, the largest of its
tasks', is then the job's (docs/scale.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the e3lib of this checkout
from e3lib import atomic, integrity  # noqa: E402

EXIT_DIVERGED = 3
EXIT_PREEMPTED = 4
PROCESS_ID_VARS = ("E3_PROCESS_ID", "SLURM_PROCID", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")
TPU_VARS = ("CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")
# libtpu, installed where no TPU is (the `tpu-plan` extra compiles for abstract slices), sets
# the TPU variables of the environment its process hands on to a warning sentence that
# starts with this: no value.
LIBTPU_PLACEHOLDER = "WARNING"


def process_id() -> int:
    """This host's process index in a multi-host job (0 for a single-host one)."""
    for var in PROCESS_ID_VARS:
        value = os.environ.get(var, "").strip()
        if value.startswith(LIBTPU_PLACEHOLDER) and var in TPU_VARS:
            continue
        if value:
            if not value.isdigit():
                raise SystemExit(f"stage.py: {var}={value!r}: expected a process index")
            return int(value)
    return 0


def write_status(path: str, status: dict) -> None:
    atomic.write_text(path, json.dumps(status, indent=1, sort_keys=True) + "\n")


def read_status(path: str) -> str:
    try:
        with open(path) as f:
            return json.load(f).get("status", "unknown")
    except (OSError, ValueError):
        return "unreadable"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("stage.py: missing '--' before the command", file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="stage.py")
    ap.add_argument(
        "--status",
        help="status file to write; without it the command's own "
        "exit code is the job's (a diverged upstream fails its job)",
    )
    ap.add_argument("--log", required=True)
    ap.add_argument("--expect", nargs="*", default=[])
    ap.add_argument("--require-ok", nargs="*", default=[])
    ap.add_argument("--write", nargs=2, action="append", default=[], metavar=("PATH", "TEXT"))
    args = ap.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        print("stage.py: no command after '--'", file=sys.stderr)
        return 2
    proc = process_id()
    recorded = bool(args.status)  # the job's outcome follows the status file on every process
    if proc != 0:  # one writer of the status file: process 0
        args.status, args.expect = None, []
        args.log = f"{args.log}.p{proc}"

    damaged = {
        p: why
        for p in args.require_ok
        if os.path.exists(p) and (why := integrity.check(p, deep=True))
    }
    if damaged:
        for path, why in damaged.items():
            integrity.set_aside(path, why)
            print(f"stage.py: damaged member set aside: {why}", file=sys.stderr)
        print("stage.py: run the same command again to recompute it", file=sys.stderr)
        return 1

    not_ok = {p: s for p in args.require_ok if (s := read_status(p)) != "ok"}
    if not_ok and recorded:
        if args.status:
            write_status(args.status, {"status": "member_failed", "members": not_ok})
        return 0

    for path, text in args.write:
        atomic.write_text_if_changed(path, text)
    os.makedirs(os.path.dirname(args.log) or ".", exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(args.log, "a") as log:
        log.write(f"=== {started} {' '.join(command)}\n")
        log.flush()
        rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        log.write(f"=== exit code {rc}\n")
    if os.environ.get("E3_EXIT_CODE_FILE"):
        atomic.write_text(os.environ["E3_EXIT_CODE_FILE"], f"{rc}\n")
    if rc == 0:
        missing = [p for p in args.expect if not os.path.exists(p)]
        if missing:
            print(
                f"stage.py: command succeeded but did not write {missing}; see {args.log}",
                file=sys.stderr,
            )
            return 1
        if args.status:
            files = integrity.record(args.expect, os.path.dirname(args.status) or ".")
            write_status(
                args.status, {"status": "ok", "exit_code": 0, "started": started, "files": files}
            )
        return 0
    if rc == EXIT_DIVERGED and recorded:
        if args.status:
            write_status(args.status, {"status": "diverged", "exit_code": rc})
        return 0
    what = "preempted; a retry resumes from the checkpoint" if rc == EXIT_PREEMPTED else "failed"
    print(
        f"stage.py: {' '.join(command[:3])} ... {what} (exit {rc}); see {args.log}", file=sys.stderr
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
