"""The state of one workflow job, read from the files the job itself writes (never from
Snakemake's metadata or lock), so it can be read while a fleet runs the sweep.

Files of a job (``workflow/rules/*.smk``, ``workflow/scripts/stage.py``), below the results
root ``R`` and the logs folder ``L``:

    stage     done file              progress / checkpoints                      log
    upstream  R/upstream/ID/done.json  R/upstream/ID/progress.json, .../ckpt/    L/upstream/ID.log
    finetune  R/runs/ID/done.json      R/runs/ID/progress.json, R/checkpoints/ID/ L/finetune/ID.log
    ensemble  R/ensembles/ID/done.json (none)                                    L/ensemble/ID.log

stage.py appends ``=== <start time> <command>`` to the log before each attempt and
``=== exit code N`` after it. The rule, first match wins:

    done           done.json says "ok"
    diverged       done.json says "diverged", or diverged.json is in the job's folder (an
                   upstream has no status file: its job fails with exit code 3)
    member_failed  done.json says "member_failed" (a deep ensemble with a member not ok)
    failed         no done.json and the log's last attempt ended with an exit code (4:
                   preempted or interrupted, a rerun resumes from the checkpoint; 0: its
                   done.json was set aside as damaged, or its outputs are missing), or it
                   has no exit code and nothing of the job changed for ``stale`` seconds
                   (a killed process or a lost host), or progress/checkpoints exist with
                   no log and no recent change
    running        no done.json, the last attempt has no exit code (or there is no log)
                   and the log, progress.json or a checkpoint changed within ``stale``
    not_started    none of these files exists
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

STATES = ("done", "running", "failed", "diverged", "member_failed", "not_started")
STAGES = ("upstream", "finetune", "ensemble")
EXIT_PREEMPTED = 4
LOG_TAIL_BYTES = 256 * 1024
_HEADER = re.compile(r"^=== (\d{4}-\d\d-\d\dT\S+) ", re.M)
_EXIT = re.compile(r"^=== exit code (-?\d+)\s*$", re.M)


@dataclass
class Job:
    stage: str  # one of STAGES
    id: str
    state: str  # one of STATES
    reason: str = ""  # why failed / diverged / member_failed, in words
    log: str | None = None  # its log file, where it exists
    step: int | None = None  # from progress.json (running or stopped jobs)
    steps: int | None = None
    wall_seconds: float | None = None  # this attempt so far (progress.json)
    num_devices: int | None = None
    device_hours: float | None = None  # spent so far (done: the whole run's record)
    last_change: float | None = None  # POSIX time of its newest file (not done jobs)


def job_dirs(results: str | Path, stage: str, job_id: str) -> tuple[str, str | None]:
    """(folder of its done.json and progress.json, its checkpoint folder or None). Paths
    are strings: a status reads a few files of each of thousands of jobs."""
    r = os.fspath(results)
    if stage == "upstream":
        return f"{r}/upstream/{job_id}", f"{r}/upstream/{job_id}/ckpt"
    if stage == "finetune":
        return f"{r}/runs/{job_id}", f"{r}/checkpoints/{job_id}"
    return f"{r}/ensembles/{job_id}", None


def log_path(logs: str | Path, stage: str, job_id: str) -> str:
    return f"{os.fspath(logs)}/{stage}/{job_id}.log"


def read_json(path: str | Path) -> dict | None:
    """A small JSON record, or None where it is absent or unreadable (being replaced)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def last_attempt(log: str) -> tuple[bool, int | None] | None:
    """(the log has an attempt header, exit code of its last attempt or None while open),
    or None without a log."""
    try:
        size = os.stat(log).st_size
        with open(log, "rb") as f:
            f.seek(max(0, size - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    headers = list(_HEADER.finditer(text))
    if not headers:
        return False, None
    after = text[headers[-1].end() :]
    codes = _EXIT.findall(after)
    return True, int(codes[-1]) if codes else None


def newest_change(paths: list[str | None]) -> float | None:
    """Newest mtime of the files given, and of the entries of the folders given (a new
    checkpoint step is a new entry)."""
    times = []
    for p in paths:
        try:
            st = os.stat(p) if p else None
        except OSError:
            continue
        if st is None:
            continue
        times.append(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            times.extend(_entry_mtimes(p))
    return max(times) if times else None


def _entry_mtimes(folder: str) -> list[float]:
    """The mtimes of a folder's entries; one removed meanwhile (Orbax renames a step's
    temporary folder when it completes) is skipped."""
    out = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                try:
                    out.append(e.stat().st_mtime)
                except OSError:
                    continue
    except OSError:
        pass
    return out


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _set_aside(folder: str) -> bool:
    """Whether a done file of the folder was set aside (``e3lib.integrity.set_aside``)."""
    try:
        return any(n.startswith("done.json.damaged-") for n in os.listdir(folder))
    except OSError:
        return False


def _iso_time(text: object) -> float | None:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def progress_of(job: Job, progress: dict | None) -> float | None:
    """Fill step, steps, wall time and devices from a progress record; its update time."""
    if not progress:
        return None
    job.step, job.steps = progress.get("step"), progress.get("steps")
    job.wall_seconds, job.num_devices = progress.get("wall_seconds"), progress.get("num_devices")
    if isinstance(job.wall_seconds, (int, float)) and isinstance(job.num_devices, int):
        job.device_hours = job.wall_seconds * job.num_devices / 3600
    return _iso_time(progress.get("updated"))


def _done_state(job: Job, done: dict) -> Job:
    status = done.get("status")
    if status == "ok":
        job.state = "done"
    elif status == "diverged":
        job.state, job.reason = "diverged", "diverged (done.json)"
    elif status == "member_failed":
        members = done.get("members") or {}
        named = ", ".join(f"{Path(p).parent.name}: {s}" for p, s in sorted(members.items()))
        job.state, job.reason = "member_failed", f"members not ok: {named}"
    else:
        job.state, job.reason = "failed", f"done.json status {status!r}"
    return job


def job_state(
    results: str | Path, logs: str | Path, stage: str, job_id: str, now: float, stale: float
) -> Job:
    """The state of one job (module docstring: the rule); ``now`` POSIX seconds, ``stale``
    seconds without a change after which an open attempt counts as failed."""
    out_dir, ckpt = job_dirs(results, stage, job_id)
    log = log_path(logs, stage, job_id)
    job = Job(stage, job_id, "not_started", log=log if os.path.exists(log) else None)
    done = read_json(f"{out_dir}/done.json")
    if done is not None:
        return _done_state(job, done)
    diverged = read_json(f"{out_dir}/diverged.json")
    if diverged is not None:
        at = f" at step {diverged['step']}" if "step" in diverged else ""
        job.state, job.reason = "diverged", f"diverged{at} (diverged.json)"
        return job
    updated = progress_of(job, read_json(f"{out_dir}/progress.json"))
    changes = [t for t in (newest_change([log, f"{out_dir}/progress.json", ckpt]), updated) if t]
    if not changes:
        return job  # not_started
    job.last_change = max(changes)
    attempt = last_attempt(log)
    quiet = now - job.last_change
    if attempt is not None and attempt[1] is not None:
        code = attempt[1]
        job.state = "failed"
        if code == EXIT_PREEMPTED:
            job.reason = "interrupted (exit 4): a rerun resumes from its checkpoint"
        elif code == 0 and _set_aside(out_dir):
            job.reason = "its done.json was set aside as damaged: a rerun recomputes it"
        elif code == 0:
            job.reason = "exit 0 but no done.json: its outputs are missing"
        elif code < 0:  # the command died of a signal (subprocess's convention)
            job.reason = f"killed by signal {-code} ({_signal_name(-code)})"
        else:
            job.reason = f"exit code {code}"
        return job
    if quiet <= stale:
        job.state = "running"
        return job
    job.state = "failed"
    minutes = quiet / 60
    if attempt is not None and attempt[0]:
        job.reason = (
            f"no exit code and no change for {minutes:.0f} min: the process was killed "
            "or its host lost"
        )
    else:
        job.reason = f"stopped: no log, no done.json, no change for {minutes:.0f} min"
    return job
