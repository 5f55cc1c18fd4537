"""Device-hours a sweep's jobs spent, and an estimate of the time and device-hours left.

Spent, per training job (upstream, fine-tune; deep ensembles only evaluate and count 0):

    done      ``provenance.throughput.device_hours`` of its record (results.json of a
              fine-tune, done.json of an upstream), else its training time
              (``cost.train_seconds`` / ``train.train_seconds``, the last attempt's)
              × its devices (``provenance.devices.num_devices``, else progress.json's)
    others    progress.json: ``wall_seconds`` (this attempt so far) × ``num_devices``
    unknown   neither record: counted apart (``unknown``), never as 0

Left, per training job not yet finished (running, failed: rerun resumes; not started):

    running   its own rate: wall_seconds × (steps − step) / step, on its progress devices
              (an attempt resumed from a checkpoint counts its steps from 0, so this
              underestimates its time left)
    others    the mean wall seconds per step of the finished jobs of the same stage, model
              size and method, × its steps left (steps − the step of its progress record,
              if any), on their mean device count; else the ``prior`` hook (stage, run
              config) → (seconds per step, devices) of a compiled plan, if one is given;
              else it counts as ``no_estimate``

Hours left are job-hours run one after another: divide by the jobs that run at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from e3lib.report.jobstate import Job, job_dirs, read_json

# (stage, run config) -> (seconds per step, devices) or None: a compile-based estimate
Prior = Callable[[str, Mapping], "tuple[float, int] | None"]
UNFINISHED = ("running", "failed", "not_started")


@dataclass
class Finished:
    """What a done training job took: wall seconds over its steps, on its devices."""

    wall_seconds: float
    steps: int
    num_devices: int


def group_key(stage: str, cfg: Mapping) -> tuple[str, str, str]:
    """Jobs expected to cost the same per step: stage, model size, method."""
    method = cfg["upstream"]["method"] if stage == "upstream" else cfg["method"]
    return stage, cfg["model"]["size"], str(method)


def stage_steps(stage: str, cfg: Mapping) -> int:
    return int(cfg["upstream" if stage == "upstream" else "finetune"]["steps"])


def _number(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def read_head(path: str | Path, chunk: int = 1 << 16) -> dict | None:
    """The fields of a results.json before its ``records`` (the bulk of a paper run's file:
    hundreds of KB, where provenance and cost are the first few KB). The file is written
    by ``json.dumps(indent=1)``, so a top-level key is the only one at one space of
    indentation; without that key, or if the head does not parse, the whole file is read."""
    marker = '\n "records": '
    try:
        with open(path) as f:
            text = ""
            while marker not in text and (more := f.read(chunk)):
                text += more
    except OSError:
        return None
    if marker in text:
        head = text[: text.index(marker)].rstrip().rstrip(",") + "\n}"
        try:
            return json.loads(head)
        except ValueError:
            pass
    return read_json(path)


def done_cost(job: Job, results: str | Path, steps: int) -> Finished | None:
    """Fill ``job.device_hours`` of a done training job from its record; what it took."""
    out_dir, _ = job_dirs(results, job.stage, job.id)
    if job.stage == "finetune":
        record = read_head(f"{out_dir}/results.json")
    else:
        record = read_json(f"{out_dir}/done.json")
    if record is None:
        return None
    prov = record.get("provenance") or {}
    throughput = prov.get("throughput") or {}
    train = (record.get("cost") if job.stage == "finetune" else record.get("train")) or {}
    wall = _number(throughput.get("wall_seconds")) or _number(train.get("train_seconds"))
    devices = throughput.get("num_devices") or (prov.get("devices") or {}).get("num_devices")
    if not devices:  # an upstream's done.json records none: its last progress record
        devices = (read_json(f"{out_dir}/progress.json") or {}).get("num_devices")
    hours = _number(throughput.get("device_hours"))
    if hours is None and wall is not None and isinstance(devices, int):
        hours = wall * devices / 3600
    job.device_hours = hours
    if wall is None or not isinstance(devices, int) or steps <= 0:
        return None
    return Finished(wall, steps, devices)


@dataclass
class Rate:
    seconds_per_step: float
    num_devices: float


def group_rates(finished: Iterable[tuple[tuple, Finished]]) -> dict[tuple, Rate]:
    """Mean seconds per step and mean devices of the finished jobs of each group."""
    by: dict[tuple, list[Finished]] = {}
    for key, f in finished:
        by.setdefault(key, []).append(f)
    return {
        k: Rate(
            sum(f.wall_seconds / f.steps for f in fs) / len(fs),
            sum(f.num_devices for f in fs) / len(fs),
        )
        for k, fs in by.items()
    }


def time_left(
    job: Job, stage: str, cfg: Mapping, rates: Mapping[tuple, Rate], prior: Prior | None
) -> tuple[float, float, str] | None:
    """(wall seconds, device-hours, source) left of an unfinished training job, or None."""
    steps = stage_steps(stage, cfg)
    step = job.step if isinstance(job.step, int) and 0 <= job.step <= steps else 0
    if job.state == "running" and step > 0 and _number(job.wall_seconds):
        devices = job.num_devices if isinstance(job.num_devices, int) else None
        wall = job.wall_seconds * (steps - step) / step
        if devices:
            return wall, wall * devices / 3600, "own progress"
    rate = rates.get(group_key(stage, cfg))
    source = "finished runs"
    if rate is None and prior is not None and (p := prior(stage, cfg)) is not None:
        rate, source = Rate(*p), "plan"
    if rate is None:
        return None
    wall = rate.seconds_per_step * (steps - step)
    return wall, wall * rate.num_devices / 3600, source


def summarize(
    jobs: Iterable[tuple[Job, Mapping | None]],
    rates: Mapping[tuple, Rate],
    prior: Prior | None = None,
) -> dict:
    """Spent and left over jobs (Job, its run config or None for an ensemble)."""
    spent, unknown, left_s, left_dh, no_estimate, sources = 0.0, 0, 0.0, 0.0, 0, set()
    for job, cfg in jobs:
        if job.stage == "ensemble":
            continue
        if job.device_hours is not None:
            spent += job.device_hours
        elif job.state != "not_started":
            unknown += 1
        if job.state in UNFINISHED:
            est = None if cfg is None else time_left(job, job.stage, cfg, rates, prior)
            if est is None:
                no_estimate += 1
            else:
                left_s, left_dh = left_s + est[0], left_dh + est[1]
                sources.add(est[2])
    return {
        "device_hours_spent": spent,
        "jobs_without_cost": unknown,
        "hours_left": left_s / 3600,
        "device_hours_left": left_dh,
        "jobs_without_estimate": no_estimate,
        "estimate_from": sorted(sources),
    }
