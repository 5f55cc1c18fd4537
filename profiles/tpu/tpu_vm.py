#!/usr/bin/env python3
"""Run Snakemake jobs on Cloud TPU VMs (the `tpu` profile's submit / status / cancel).

Snakemake's cluster-generic executor calls

    tpu_vm.py submit --accelerator-type v3-8 --runtime 240 --name e3-finetune-12 JOBSCRIPT
    tpu_vm.py status JOB_ID          prints running | success | failed
    tpu_vm.py cancel JOB_ID [...]

`submit` creates a (spot) queued resource through `gcloud compute tpus queued-resources
create`, starts a detached `drive` process and prints the job id (the queued resource's
name). `drive` waits for the TPU to be ACTIVE, runs the jobscript on every worker with
`gcloud compute tpus tpu-vm ssh --worker=all`, records the exit code and deletes the queued
resource. A spot preemption (queued resource SUSPENDING / SUSPENDED / FAILED, or the ssh
dropping) is reported as `failed`; Snakemake then resubmits the job (`retries:` in the
profile) and the training command resumes from its checkpoint directory, which is not a
Snakemake output. Jobs whose `tpu_type` resource is `none` run on this machine.

The TPU VMs must see the repository (and the same Python environment) at the same
absolute paths, e.g. a Filestore / NFS mount: the jobscript cds there.

Environment: E3_TPU_ZONE, E3_TPU_PROJECT (default: gcloud's configured ones),
E3_TPU_RUNTIME_VERSION (default tpu-ubuntu2204-base), E3_TPU_SPOT (1 = spot, default 1),
E3_TPU_STATE_DIR (default .snakemake/tpu-jobs), E3_TPU_POLL_SECONDS (default 30),
E3_TPU_PROVISION_TIMEOUT (seconds waiting for capacity, default 86400), E3_GCLOUD (the
gcloud binary, default `gcloud` on PATH).

Standard library only: it runs before any environment is activated.
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
import uuid

LOCAL_TYPES = ("none", "local", "")
PREEMPTED_STATES = ("SUSPENDING", "SUSPENDED", "FAILED", "DELETING")
WAITING_STATES = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING")


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def state_dir() -> str:
    d = env("E3_TPU_STATE_DIR", os.path.join(".snakemake", "tpu-jobs"))
    os.makedirs(d, exist_ok=True)
    return d


def state_path(job: str) -> str:
    return os.path.join(state_dir(), f"{job}.json")


def read_state(job: str) -> dict | None:
    try:
        with open(state_path(job)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def update_state(job: str, **fields) -> dict:
    st = read_state(job) or {}
    st.update(fields)
    fd, tmp = tempfile.mkstemp(dir=state_dir(), prefix=f".{job}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(st, f, indent=1, sort_keys=True)
    os.replace(tmp, state_path(job))
    return st


def gcloud(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [env("E3_GCLOUD", "gcloud"), *args]
    return subprocess.run(cmd, text=True, capture_output=capture)


def location_flags(st: dict) -> list[str]:
    flags = []
    if st.get("zone"):
        flags.append(f"--zone={st['zone']}")
    if st.get("project"):
        flags.append(f"--project={st['project']}")
    return flags


def queued_resource_state(st: dict) -> str:
    r = gcloud(
        "compute",
        "tpus",
        "queued-resources",
        "describe",
        st["name"],
        *location_flags(st),
        "--format=value(state.state)",
        capture=True,
    )
    if r.returncode != 0:
        return "UNKNOWN"
    return r.stdout.strip() or "UNKNOWN"


def delete_queued_resource(st: dict) -> None:
    gcloud(
        "compute",
        "tpus",
        "queued-resources",
        "delete",
        st["name"],
        *location_flags(st),
        "--force",
        "--quiet",
        "--async",
        capture=True,
    )


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child that nobody reaped is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


# ----------------------------------------------------------------------------- commands


def cmd_submit(args: argparse.Namespace) -> int:
    jobscript = os.path.abspath(args.jobscript)
    local = args.accelerator_type in LOCAL_TYPES
    name = f"{args.name}-{uuid.uuid4().hex[:6]}".lower().replace("_", "-")
    st = {
        "name": name,
        "jobscript": jobscript,
        "local": local,
        "accelerator_type": args.accelerator_type,
        "runtime_minutes": args.runtime,
        "zone": env("E3_TPU_ZONE", ""),
        "project": env("E3_TPU_PROJECT", ""),
        "submitted": time.time(),
    }
    update_state(name, **st)
    if not local:
        create = [
            "compute",
            "tpus",
            "queued-resources",
            "create",
            name,
            f"--node-id={name}",
            f"--accelerator-type={args.accelerator_type}",
            f"--runtime-version={env('E3_TPU_RUNTIME_VERSION', 'tpu-ubuntu2204-base')}",
            *location_flags(st),
            "--quiet",
        ]
        if env("E3_TPU_SPOT", "1") == "1":
            create.append("--spot")
        r = gcloud(*create, capture=True)
        if r.returncode != 0:
            update_state(name, rc=r.returncode, reason="create failed")
            print(
                f"tpu_vm.py: gcloud queued-resources create {name} failed "
                f"(exit {r.returncode}): {r.stderr.strip()}",
                file=sys.stderr,
            )
            return 1
    log = open(os.path.join(state_dir(), f"{name}.log"), "a")
    driver = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "drive", name],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    update_state(name, driver_pid=driver.pid)
    print(name)
    return 0


def cmd_drive(args: argparse.Namespace) -> int:
    """Wait for the TPU, run the jobscript on all workers, record the exit code."""
    st = read_state(args.job)
    if st is None:
        print(f"tpu_vm.py drive: no state for {args.job}", file=sys.stderr)
        return 2
    poll = float(env("E3_TPU_POLL_SECONDS", "30"))
    if st["local"]:
        rc = subprocess.call(["bash", st["jobscript"]])
        update_state(args.job, rc=rc, finished=time.time())
        return 0
    deadline = time.time() + float(env("E3_TPU_PROVISION_TIMEOUT", "86400"))
    rc, reason = 1, "driver interrupted"
    try:
        while True:
            qr = queued_resource_state(st)
            if qr == "ACTIVE":
                break
            if qr in PREEMPTED_STATES or time.time() > deadline:
                rc, reason = 1, f"no TPU: queued resource {qr} before the job started"
                return 0
            time.sleep(poll)
        update_state(args.job, started=time.time())
        r = gcloud(
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            st["name"],
            *location_flags(st),
            "--worker=all",
            f"--command=bash {st['jobscript']}",
        )
        rc = r.returncode
        reason = "" if rc == 0 else f"ssh exit {rc} (state {queued_resource_state(st)})"
    finally:
        # Give the TPU back first: "success" / "failed" then also means it is released.
        delete_queued_resource(st)
        update_state(args.job, rc=rc, reason=reason, finished=time.time())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = read_state(args.job)
    if st is None:
        print("failed")
        return 0
    if "rc" in st:
        print("success" if st["rc"] == 0 else "failed")
        return 0
    if not alive(st.get("driver_pid")):
        update_state(args.job, rc=1, reason="driver process died")
        print("failed")
        return 0
    if not st["local"] and st.get("started"):
        qr = queued_resource_state(st)
        if qr in PREEMPTED_STATES:
            # Preempted while running: stop the driver, free the TPU, let Snakemake retry.
            stop_driver(st)
            delete_queued_resource(st)
            update_state(args.job, rc=1, reason=f"preempted (queued resource {qr})")
            print("failed")
            return 0
    print("running")
    return 0


def stop_driver(st: dict) -> None:
    pid = st.get("driver_pid")
    if alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def cmd_cancel(args: argparse.Namespace) -> int:
    for job in args.jobs:
        st = read_state(job)
        if st is None:
            continue
        stop_driver(st)
        if not st["local"]:
            delete_queued_resource(st)
        update_state(job, rc=st.get("rc", 130), reason=st.get("reason") or "cancelled")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tpu_vm.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit")
    s.add_argument("--accelerator-type", required=True, help="e.g. v3-8, v5litepod-8; none = local")
    s.add_argument("--runtime", type=int, default=0, help="expected minutes (recorded)")
    s.add_argument("--name", default="e3-job")
    s.add_argument("jobscript")
    d = sub.add_parser("drive")
    d.add_argument("job")
    st = sub.add_parser("status")
    st.add_argument("job")
    c = sub.add_parser("cancel")
    c.add_argument("jobs", nargs="*")
    args = ap.parse_args(argv)
    return {"submit": cmd_submit, "drive": cmd_drive, "status": cmd_status, "cancel": cmd_cancel}[
        args.command
    ](args)


if __name__ == "__main__":
    sys.exit(main())
