#!/usr/bin/env python3
"""Snakemake jobs as SkyPilot managed jobs (the `skypilot` profile's submit / status / cancel).

Snakemake's cluster-generic executor calls

    sky_jobs.py submit JOBSCRIPT     prints the job's id, NAME@MANAGED_JOB_ID (or local:NAME)
    sky_jobs.py status ID            prints running | success | failed
    cancel ID ...                    (profiles/skypilot/cancel: returns at once)

and by hand:

    sky_jobs.py task JOBSCRIPT       prints the SkyPilot task YAML (calls nothing)

(sky_cleanup.py lists and cancels what a crashed driver left.)

`submit` names the job from its stage and id (sky_task.py: ``e3-ft-<run id>``) and first
asks SkyPilot's queue for a live managed job of that name: one is reattached to (a driver
killed and started again, or a resubmission while the job still runs), none is launched
with ``sky jobs launch --detach-run``. Jobs without an accelerator run on this machine.
The controller of SkyPilot recovers preemptions and exit code 4 (e3's preempted code) by
itself; `status` reports what it gave up on as failed (STATUS below).

Everything goes through the ``sky`` command (E3_SKY: another one, e.g. in a separate
virtual environment), so this script needs only the standard library and PyYAML.
Other settings: sky_task.Settings (E3_SKY_*); E3_SKY_STATE_DIR (default
.snakemake/sky-jobs: task files, local jobs, the queue cache); E3_SKY_QUEUE_TTL (seconds a
queue listing serves every status check, default 20); E3_SKY_SUBMIT_TRIES (default 3) and
E3_SKY_RETRY_SECONDS (first wait, doubled each time, default 30) when `sky` fails at submit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sky_task  # noqa: E402

# SkyPilot managed-job states → Snakemake's. CANCELLING is on its way to CANCELLED: failed,
# and never reattached to. Unknown states count as running (a new intermediate state),
# unless they start with FAILED.
RUNNING = ("PENDING", "SUBMITTED", "STARTING", "RUNNING", "RECOVERING")
STATUS = {
    **dict.fromkeys(RUNNING, "running"),
    "SUCCEEDED": "success",
    **dict.fromkeys(
        (
            "CANCELLING",
            "CANCELLED",
            "FAILED",
            "FAILED_SETUP",
            "FAILED_PRECHECKS",
            "FAILED_NO_RESOURCE",
            "FAILED_CONTROLLER",
        ),
        "failed",
    ),
}
LIVE = RUNNING  # a job of one of these states is reattached to, never launched twice


def snakemake_status(state: str) -> str:
    if state in STATUS:
        return STATUS[state]
    return "failed" if state.startswith("FAILED") else "running"


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def state_dir() -> str:
    d = env("E3_SKY_STATE_DIR", os.path.join(".snakemake", "sky-jobs"))
    os.makedirs(d, exist_ok=True)
    return d


def write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def sky(*args: str) -> str:
    """Run `sky ARGS`; its stdout, or RuntimeError with its message."""
    exe = env("E3_SKY", "sky")
    try:
        r = subprocess.run([exe, *args], text=True, capture_output=True)
    except OSError as err:
        raise RuntimeError(
            f"{exe}: {err.strerror}; install SkyPilot (pip install -e '.[skypilot]') "
            "or name its command in E3_SKY"
        ) from None
    if r.returncode != 0:
        raise RuntimeError(f"sky {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def queue(max_age: float = 0.0) -> list[dict]:
    """Managed jobs of this user (all states), from a listing at most ``max_age`` s old."""
    cache = os.path.join(state_dir(), "queue.json")
    try:
        if time.time() - os.path.getmtime(cache) <= max_age:
            with open(cache) as f:
                return json.load(f)
    except (OSError, ValueError):
        pass
    out = sky("jobs", "queue", "--all", "--output", "json")
    start = 0 if out.startswith("[") else out.find("\n[") + 1  # after any notice lines
    try:
        records = json.loads(out[start:] or "[]")
    except ValueError:
        raise RuntimeError(f"sky jobs queue: not a JSON list: {out[:300]!r}") from None
    write_atomic(cache, json.dumps(records))
    return records


def live_job(name: str, records: list[dict]) -> dict | None:
    live = [r for r in records if r.get("job_name") == name and r.get("status") in LIVE]
    return max(live, key=lambda r: r["job_id"]) if live else None


# ----------------------------------------------------------------------------- local jobs


def local_path(name: str, ext: str) -> str:
    return os.path.join(state_dir(), f"{name}.{ext}")


def submit_local(name: str, jobscript: str) -> str:
    """Run the jobscript here, detached; a run of the same job still going is reattached to."""
    if status_local(name) == "running" and not os.path.exists(local_path(name, "rc")):
        print(f"sky_jobs.py: reattached to the local job {name}", file=sys.stderr)
        return f"local:{name}"
    rc = local_path(name, "rc")
    if os.path.exists(rc):
        os.remove(rc)
    log = open(local_path(name, "log"), "a")
    proc = subprocess.Popen(
        ["sh", "-c", 'bash "$1"; echo $? > "$2"', "sh", jobscript, rc],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    write_atomic(local_path(name, "pid"), str(proc.pid))
    return f"local:{name}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def status_local(name: str) -> str:
    try:
        with open(local_path(name, "rc")) as f:
            return "success" if f.read().strip() == "0" else "failed"
    except OSError:
        pass
    try:
        with open(local_path(name, "pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return "failed"
    return "running" if alive(pid) else "failed"


# ----------------------------------------------------------------------------- commands


def cmd_submit(args: argparse.Namespace) -> int:
    settings = sky_task.Settings.from_env()
    job = sky_task.Job.read(args.jobscript)
    name = job.name(settings.project)
    if sky_task.accelerators(job.resources, settings)[0] is None:
        print(submit_local(name, os.path.abspath(args.jobscript)))
        return 0
    doc = sky_task.task(job, os.getcwd(), settings)
    path = os.path.join(state_dir(), f"{name}.yaml")
    write_atomic(path, sky_task.to_yaml(doc))
    tries, wait = int(env("E3_SKY_SUBMIT_TRIES", "3")), float(env("E3_SKY_RETRY_SECONDS", "30"))
    for attempt in range(tries):
        try:
            print(f"{name}@{launch_or_reattach(name, path)}")
            return 0
        except RuntimeError as err:  # an API server or cloud hiccup: look again, later
            print(f"sky_jobs.py submit {name}: {err}", file=sys.stderr)
            if attempt + 1 < tries:
                time.sleep(wait * 2**attempt)
    return 1


def launch_or_reattach(name: str, path: str) -> int:
    """The managed job id of the live job ``name``, launched from ``path`` if none is."""
    live = live_job(name, queue())
    if live:
        print(
            f"sky_jobs.py: reattached to {name} (managed job {live['job_id']}, {live['status']})",
            file=sys.stderr,
        )
        return live["job_id"]
    sky("jobs", "launch", path, "--name", name, "--yes", "--detach-run")
    records = [r for r in queue() if r.get("job_name") == name]
    if not records:
        raise RuntimeError(f"{name} launched but not in `sky jobs queue`")
    return (live_job(name, records) or max(records, key=lambda r: r["job_id"]))["job_id"]


def cmd_status(args: argparse.Namespace) -> int:
    if args.job.startswith("local:"):
        print(status_local(args.job.split(":", 1)[1]))
        return 0
    if "@" not in args.job:  # not an id of this profile (e.g. one of the former gcloud driver)
        print("failed")
        return 0
    job_id = int(args.job.rsplit("@", 1)[1])
    ttl = float(env("E3_SKY_QUEUE_TTL", "20"))
    try:
        record = next((r for r in queue(ttl) if r.get("job_id") == job_id), None)
        if record is None:  # launched after the cached listing
            record = next((r for r in queue() if r.get("job_id") == job_id), None)
    except RuntimeError as err:  # API server unreachable: ask again later
        print(f"sky_jobs.py status: {err}", file=sys.stderr)
        print("running")
        return 0
    print(snakemake_status(record["status"]) if record else "failed")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Local jobs are stopped; managed jobs are cancelled by a detached `sky jobs cancel`
    (Snakemake gives a cancel command 2 seconds)."""
    ids = []
    for job in args.jobs:
        if job.startswith("local:"):
            try:
                with open(local_path(job.split(":", 1)[1], "pid")) as f:
                    os.killpg(int(f.read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        elif "@" in job:
            ids.append(job.rsplit("@", 1)[1])
    if ids:
        subprocess.Popen(
            [env("E3_SKY", "sky"), "jobs", "cancel", "--yes", *ids],
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(state_dir(), "cancel.log"), "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    job = sky_task.Job.read(args.jobscript)
    print(sky_task.to_yaml(sky_task.task(job, os.getcwd(), sky_task.Settings.from_env())), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sky_jobs.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("submit", "task"):
        sub.add_parser(name).add_argument("jobscript")
    sub.add_parser("status").add_argument("job")
    sub.add_parser("cancel").add_argument("jobs", nargs="*")
    args = ap.parse_args(argv)
    commands = {
        "submit": cmd_submit,
        "status": cmd_status,
        "cancel": cmd_cancel,
        "task": cmd_task,
    }
    try:
        return commands[args.command](args)
    except (sky_task.TaskError, RuntimeError) as err:
        print(f"sky_jobs.py {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
