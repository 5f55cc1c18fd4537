"""The status of each sweep of the report, for its index page: jobs by state per stage
(and per table where a table has part of the sweep), device-hours, the jobs that failed
linked to their logs, those running, and whether the dataset lags the results folder.

Read when the page is rendered (``e3lib.report.status``, from the sweep's index.json and
the files its jobs write), so it states the folder's state at that time; a sweep whose
index or results folder cannot be read says so instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from e3lib.report.jobstate import STATES
from e3lib.report.status import cost_line, from_index, status

HEADS = ("jobs", "done", "running", "failed", "diverged", "member failed", "not started")
FLAGGED = ("failed", "diverged", "member_failed")


def _rows(s: dict) -> list[dict]:
    scopes = [("", s["jobs"])] + [
        (t["table"] + " ", t["jobs"]) for t in s["tables"] if t["jobs"] != s["jobs"]
    ]
    return [
        {
            "label": prefix + stage,
            "cells": [{"n": c[k], "flag": k in FLAGGED and c[k] > 0} for k in ("total", *STATES)],
        }
        for prefix, jobs in scopes
        for stage, c in jobs.items()
    ]


def _job(r: dict, rel: Callable[[str], str | None]) -> dict:
    step = f"step {r['step']}/{r['steps']}" if r["step"] is not None else ""
    return {**r, "href": rel(r["log"]) if r["log"] else None, "progress": step}


def sweep_status_views(inputs: Sequence, logs: str, rel: Callable[[str], str | None]) -> list[dict]:
    """One view per input dataset (same order); ``rel``: a link from the report's folder."""
    loaded, views = {}, []
    for inp in inputs:
        a = inp.ds.attrs
        path = Path(a.get("index_path") or f"results/sweeps/{a['sweep']}/index.json")
        try:
            loaded[id(inp)] = (
                a.get("results_root") or "results",
                from_index(json.loads(path.read_text())),
            )
        except (OSError, ValueError, KeyError) as err:
            loaded[id(inp)] = f"index {path} cannot be read ({type(err).__name__}: {err})"
    by_root: dict[str, list] = {}
    for v in loaded.values():
        if not isinstance(v, str):
            by_root.setdefault(v[0], []).append(v[1])
    read = {root: status(sws, root, logs) for root, sws in by_root.items()}
    for inp in inputs:
        v = loaded[id(inp)]
        if isinstance(v, str):
            views.append({"sweep": inp.ds.attrs["sweep"], "why": v})
            continue
        s = next(x for x in read[v[0]]["sweeps"] if x["sweep"] == v[1].name)
        jobs = s["jobs"]
        finished = sum(jobs.get(k, {}).get("done", 0) for k in ("finetune", "ensemble"))
        in_dataset = int(inp.ds.attrs.get("entries_ok", 0))
        lag = None
        if finished != in_dataset:
            lag = f"the results folder holds {finished} finished entries, the dataset {in_dataset}"
        views.append(
            {
                "sweep": s["sweep"],
                "why": None,
                "results": v[0],
                "heads": HEADS,
                "rows": _rows(s),
                "cost": cost_line(s),
                "lag": lag,
                "aggregate": f"snakemake {inp.path}",
                "problems": [_job(r, rel) for r in s["problems"]],
                "running": [_job(r, rel) for r in s["running"]],
            }
        )
    return views
