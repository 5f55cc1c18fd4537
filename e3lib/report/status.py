"""Where a sweep stands: its jobs counted by state, per sweep and per table, the jobs
that failed (with their logs), those running, device-hours spent and left.

Input is a sweep's entries (``e3lib.sweep`` expansion, or the rows of its index.json:
the same format) and the files its jobs write (``e3lib.report.jobstate``: the rule of
each state; ``e3lib.report.status_cost``: device-hours and the estimate). A table's jobs
are the entries its rows select (``where:`` of ``tables.yaml``) and their upstreams; a
job shared by several tables or sweeps is read once and counted in each, once in the total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from e3lib.report import status_cost
from e3lib.report.jobstate import STAGES, STATES, Job, job_state
from e3lib.report.spec import default_spec

STATUS_FORMAT = 1
DEFAULT_STALE_MINUTES = 30.0
PROBLEMS = ("failed", "diverged", "member_failed")


@dataclass
class SweepEntries:
    """What the status of a sweep needs: its name, file, tables and index entries."""

    name: str
    file: str
    variant: str
    reproduces: list[str]
    entries: list[dict] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)  # in the sweep's order (rows in words)


def axis_text(value: object) -> str:
    """The text of an axis value as ``e3lib.aggregate.axes.axis_label`` writes it (whole
    floats as integers, booleans as true/false, None as "-"), here so that the status
    does not import the aggregate package (xarray, scipy: seconds at start-up);
    tests/test_status.py checks that the two agree."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def table_entries(entries: Sequence[dict], table: str, spec: Mapping) -> list[dict]:
    """The entries a table's rows come from: those matching a ``where`` selector of its
    spec (all entries for a table without one)."""
    where = (spec["tables"].get(table) or {}).get("where", {})
    wheres = [
        {k: axis_text(v) for k, v in w.items()}
        for w in (where if isinstance(where, list) else [where])
    ]
    return [
        e
        for e in entries
        if any(all(axis_text(e["axes"].get(k, v)) == v for k, v in w.items()) for w in wheres)
    ]


def entry_jobs(entries: Iterable[dict], runs: Mapping[str, dict]) -> dict[tuple, dict | None]:
    """(stage, id) → run config of the entries, their ensembles' members and their
    upstreams; None for an ensemble, or a run whose entry has no config (a hand-written
    index: then no upstream and no estimate). ``runs``: run id → index entry of every run
    of the sweep (a sweep's ensemble members are its runs)."""
    jobs: dict[tuple, dict | None] = {}
    for e in entries:
        if e["kind"] == "ensemble":
            jobs[("ensemble", e["id"])] = None
        for rid in e["members"] if e["kind"] == "ensemble" else [e["id"]]:
            run = runs.get(rid)
            if run is None:
                continue
            cfg = run.get("config")
            jobs[("finetune", rid)] = cfg
            if cfg and not cfg["upstream"]["checkpoint"]:  # else no pretraining job
                jobs[("upstream", run["upstream_id"])] = cfg
    return jobs


class Reader:
    """Reads each job's files once, over all the sweeps of one status."""

    def __init__(self, results: str, logs: str, now: float, stale_minutes: float):
        self.results, self.logs, self.now = results, logs, now
        self.stale = stale_minutes * 60
        self.jobs: dict[tuple, Job] = {}
        self.finished: dict[tuple, tuple[tuple, status_cost.Finished]] = {}  # key, took

    def read(self, key: tuple, cfg: Mapping | None) -> Job:
        if key not in self.jobs:
            job = job_state(self.results, self.logs, *key, self.now, self.stale)
            if job.state == "done" and key[0] != "ensemble":
                steps = status_cost.stage_steps(key[0], cfg) if cfg else 0
                f = status_cost.done_cost(job, self.results, steps)
                if f is not None:
                    self.finished[key] = (status_cost.group_key(key[0], cfg), f)
            self.jobs[key] = job
        return self.jobs[key]


def counts(jobs: Iterable[Job]) -> dict[str, dict[str, int]]:
    out = {s: dict.fromkeys(("total", *STATES), 0) for s in STAGES}
    for j in jobs:
        out[j.stage]["total"] += 1
        out[j.stage][j.state] += 1
    return {s: c for s, c in out.items() if c["total"]}


def scope_status(
    jobs: Mapping[tuple, dict | None], reader: Reader, rates: Mapping, prior=None
) -> dict:
    read = [(reader.read(k, cfg), cfg) for k, cfg in jobs.items()]
    return {"jobs": counts(j for j, _ in read), **status_cost.summarize(read, rates, prior)}


def _labels(entries: Sequence[dict], order: Sequence[str] = ()) -> dict[str, str]:
    """Run or ensemble id → its row in words (axis values in the sweep's ``order``, seed or
    replicate); upstream id → the methods and number of the runs that fine-tune from it."""
    out, users = {}, {}
    for e in entries:
        names = [a for a in order if a in e["axes"]] + [a for a in e["axes"] if a not in order]
        axes = ", ".join(f"{k}={axis_text(e['axes'][k])}" for k in names)
        pos = f"replicate={e['replicate']}" if e["kind"] == "ensemble" else f"seed={e['seed']}"
        out.setdefault(e["id"], f"{axes}, {pos}")
        if e["kind"] == "run" and e.get("upstream_id"):
            users.setdefault(e["upstream_id"], []).append(axis_text(e["axes"].get("method")))
    for up, methods in users.items():
        out.setdefault(up, f"pretraining of {len(methods)} runs: {', '.join(sorted(set(methods)))}")
    return out


def job_row(job: Job, label: str = "") -> dict:
    return {
        "stage": job.stage,
        "id": job.id,
        "state": job.state,
        "reason": job.reason,
        "log": job.log,
        "row": label,
        "step": job.step,
        "steps": job.steps,
        "device_hours": job.device_hours,
        "minutes_since_change": None,
    }


def sweep_status(sw: SweepEntries, reader: Reader, rates: Mapping, prior=None) -> dict:
    runs = {e["id"]: e for e in sw.entries if e["kind"] == "run"}
    spec = default_spec()
    jobs = entry_jobs(sw.entries, runs)
    out = {
        "sweep": sw.name,
        "file": sw.file,
        "variant": sw.variant,
        "reproduces": list(sw.reproduces),
        **scope_status(jobs, reader, rates, prior),
    }
    out["tables"] = [
        {
            "table": t,
            **scope_status(
                entry_jobs(table_entries(sw.entries, t, spec), runs), reader, rates, prior
            ),
        }
        for t in sw.reproduces
    ]
    labels = _labels(sw.entries, sw.axes)
    rows = {"problems": [], "running": []}
    for key in sorted(jobs, key=lambda k: (STAGES.index(k[0]), k[1])):
        job = reader.jobs[key]
        group = (
            "problems" if job.state in PROBLEMS else "running" if job.state == "running" else None
        )
        if group:
            row = job_row(job, labels.get(job.id, ""))
            if job.last_change is not None:
                row["minutes_since_change"] = round((reader.now - job.last_change) / 60, 1)
            rows[group].append(row)
    return {**out, **rows}


def status(
    sweeps: Sequence[SweepEntries],
    results: str,
    logs: str,
    now: float | None = None,
    stale_minutes: float = DEFAULT_STALE_MINUTES,
    prior: status_cost.Prior | None = None,
) -> dict:
    """The status of several sweeps (``--json`` of ``e3 status``; schema
    ``e3lib/schemas/status.schema.json``)."""
    now = datetime.now(timezone.utc).timestamp() if now is None else now
    reader = Reader(results, logs, now, stale_minutes)
    every: dict[tuple, dict | None] = {}
    for sw in sweeps:
        runs = {e["id"]: e for e in sw.entries if e["kind"] == "run"}
        every.update(entry_jobs(sw.entries, runs))
    for key, cfg in every.items():  # read first: the rates come from every finished job
        reader.read(key, cfg)
    rates = status_cost.group_rates(reader.finished.values())
    return {
        "format": STATUS_FORMAT,
        "generated": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "results": str(results),
        "logs": str(logs),
        "stale_minutes": stale_minutes,
        "sweeps": [sweep_status(sw, reader, rates, prior) for sw in sweeps],
        "total": scope_status(every, reader, rates, prior),
    }


def _hours(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def cost_line(s: dict) -> str:
    spent = f"device-hours spent {_hours(s['device_hours_spent'])}"
    if s["jobs_without_cost"]:
        spent += f" (+{s['jobs_without_cost']} jobs that recorded no device-hours)"
    if s["jobs_without_estimate"] and not (s["hours_left"] or s["device_hours_left"]):
        left = f"left: no estimate ({s['jobs_without_estimate']} jobs)"
    else:
        left = (
            f"left ~{_hours(s['device_hours_left'])} device-hours, "
            f"~{_hours(s['hours_left'])} job-hours"
        )
        if s["estimate_from"]:
            left += f" (from {', '.join(s['estimate_from'])})"
        if s["jobs_without_estimate"]:
            left += f", {s['jobs_without_estimate']} jobs with no estimate"
    return f"{spent}; {left}"


def from_index(index: Mapping, file: str | Path = "") -> SweepEntries:
    """The entries of a sweep's index.json (what ``e3 aggregate`` read)."""
    return SweepEntries(
        index["sweep"],
        str(index.get("file") or file),
        index.get("variant", ""),
        list(index.get("reproduces") or []),
        list(index["entries"]),
        list(index.get("axes") or []),
    )


def from_sweep(sweep) -> SweepEntries:
    """The entries of an expanded ``e3lib.sweep.Sweep``."""
    return SweepEntries(
        sweep.name, sweep.file, sweep.variant, list(sweep.reproduces), sweep.entries, sweep.axes
    )
