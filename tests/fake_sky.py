"""A stand-in for SkyPilot's `sky` command (the `jobs launch | queue | cancel` the skypilot
profile uses), for tests without a cloud.

State in $FAKE_SKY_DIR: jobs.json (the managed-job records `sky jobs queue -o json` lists)
and calls.jsonl (every call's arguments). Two ways to play a job:

- replay (FAKE_SKY_STATES="PENDING,RUNNING,RECOVERING,SUCCEEDED" at launch, or a seeded
  record's `_replay` list): every `jobs queue` lists the current state, then moves each
  replayed job one state along its list, staying on the last;
- execute (no FAKE_SKY_STATES): a detached runner runs the task's `run` in its workdir, as
  SkyPilot's controller would: RUNNING, then SUCCEEDED on exit 0; an exit code in
  job_recovery.recover_on_exit_codes is RECOVERING and the run starts again, up to
  FAKE_SKY_MAX_RECOVERIES (default 3) times; any other is FAILED.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import yaml

STATE = os.environ["FAKE_SKY_DIR"]
JOBS = os.path.join(STATE, "jobs.json")


class Jobs:
    """jobs.json under an exclusive lock (the runner and the CLI write it)."""

    def __enter__(self) -> list[dict]:
        self.lock = open(os.path.join(STATE, "jobs.lock"), "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.jobs = json.load(open(JOBS)) if os.path.exists(JOBS) else []
        return self.jobs

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            with open(JOBS + ".tmp", "w") as f:
                json.dump(self.jobs, f)
            os.replace(JOBS + ".tmp", JOBS)
        self.lock.close()


def set_status(job_id: int, status: str, **extra) -> None:
    with Jobs() as jobs:
        for j in jobs:
            if j["job_id"] == job_id and j["status"] not in ("CANCELLED", "CANCELLING"):
                j.update(status=status, **extra)


def launch(path: str, name: str) -> None:
    task = yaml.safe_load(open(path))
    with Jobs() as jobs:
        job_id = max([j["job_id"] for j in jobs], default=0) + 1
        states = [s for s in os.environ.get("FAKE_SKY_STATES", "").split(",") if s]
        record = {
            "job_id": job_id,
            "job_name": name,
            "status": states[0] if states else "PENDING",
            "labels": task["resources"].get("labels", {}),
            "recovery_count": 0,
            "_replay": states[1:],
        }
        jobs.append(record)
    if not states:
        runner = subprocess.Popen(
            [sys.executable, __file__, "_run", str(job_id), path],
            stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(STATE, f"job{job_id}.log"), "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        set_status(job_id, "PENDING", _runner=runner.pid)
    print(f"Managed job ID: {job_id}")


def run(job_id: int, path: str) -> None:
    """The controller of one executed job."""
    task = yaml.safe_load(open(path))
    recover = task["resources"]["job_recovery"].get("recover_on_exit_codes", [])
    env = {
        **os.environ,
        "SKYPILOT_NUM_NODES": str(task.get("num_nodes", 1)),
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NODE_IPS": "127.0.0.1",
    }
    for attempt in range(int(os.environ.get("FAKE_SKY_MAX_RECOVERIES", "3")) + 1):
        set_status(job_id, "RUNNING", recovery_count=attempt)
        rc = subprocess.call(["bash", "-c", task["run"]], cwd=task["workdir"], env=env)
        if rc == 0:
            set_status(job_id, "SUCCEEDED", exit_code=rc)
            return
        if rc not in recover:
            break
        set_status(job_id, "RECOVERING", exit_code=rc)
    set_status(job_id, "FAILED", exit_code=rc)


def queue() -> None:
    with Jobs() as jobs:
        out = [{k: v for k, v in j.items() if not k.startswith("_")} for j in jobs]
        for j in jobs:
            if j["_replay"]:
                j["status"] = j["_replay"].pop(0)
    print(json.dumps(out))


def cancel(ids: list[int]) -> None:
    with Jobs() as jobs:
        for j in jobs:
            if j["job_id"] in ids and j["status"] not in ("SUCCEEDED", "FAILED"):
                if j.get("_runner"):
                    try:
                        os.killpg(j["_runner"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                j["status"] = "CANCELLED"


def main(args: list[str]) -> int:
    with open(os.path.join(STATE, "calls.jsonl"), "a") as f:
        f.write(json.dumps(args) + "\n")
    if args[:1] == ["_run"]:
        run(int(args[1]), args[2])
    elif args[:2] == ["jobs", "launch"]:
        assert "--yes" in args and "--detach-run" in args, args
        failures = os.path.join(STATE, "launch_failures")
        done = len(open(failures).read()) if os.path.exists(failures) else 0
        if done < int(os.environ.get("FAKE_SKY_LAUNCH_FAILS", "0")):  # the first N fail
            open(failures, "a").write("x")
            print("sky: ResourcesUnavailableError: quota exceeded", file=sys.stderr)
            return 1
        launch(args[2], args[args.index("--name") + 1])
    elif args[:2] == ["jobs", "queue"]:
        assert "--all" in args and args[args.index("--output") + 1] == "json", args
        if os.environ.get("FAKE_SKY_DOWN"):
            print("sky: API server unreachable", file=sys.stderr)
            return 1
        if os.environ.get("FAKE_SKY_NOTICE"):
            print("Tip: a newer SkyPilot is available.\n")
        queue()
    elif args[:2] == ["jobs", "cancel"]:
        assert "--yes" in args, args
        time.sleep(float(os.environ.get("FAKE_SKY_CANCEL_SECONDS", "0")))  # a slow API server
        cancel([int(a) for a in args[2:] if a.isdigit()])
    else:
        print(f"fake sky: unknown command {args}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
