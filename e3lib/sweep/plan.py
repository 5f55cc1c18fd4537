"""The plan: expanded sweeps, their runs / upstreams / ensembles by id, and their files.

A ``Plan`` is computed in memory (``e3lib.sweep.expand_sweeps``) and has no side effects;
files are written only by ``write_plan`` (``e3 expand``) or, in the workflow, by the jobs
that need them (docs/workflow.md). Paths, all below a results root:

    configs/{run_id}.json                 resolved config of a run (read by ``e3 run``)
    configs/upstream/{upstream_id}.json   a run config whose upstream this is (``e3 upstream``)
    configs/ensembles/{ensemble_id}.json  {"kind", "members"} (``e3 expand`` only)
    sweeps/{sweep}/index.json, index.tsv  the sweep's entries (ids <-> axis values)

Index format 2 (``INDEX_FORMAT``), one entry per row of the sweep's tables:

    run       id, kind "run", seed, axes, upstream_id, config, result, done
    ensemble  id, kind "ensemble", replicate, seed (= replicate: the position on the
              dataset's seed dimension), axes, members, ensemble_kind, result, done

``result`` and ``done`` read "results/..." and are relative to the results root (the
aggregate re-roots them), so an index stays valid when the results folder moves. ``done``
is the entry's status file (``ok``, ``diverged``, ``member_failed``; see
workflow/scripts/stage.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e3lib import atomic
from e3lib.config import canonical_json, short_hash
from e3lib.sweep.schema import SweepError

INDEX_FORMAT = 2
RESULT_PREFIX = "results"


@dataclass
class Sweep:
    """One expanded sweep: its index entries plus the configs its jobs need."""

    name: str
    file: str
    file_sha256: str
    variant: str
    title: str
    reproduces: list[str]
    axes: list[str]
    seeds: list[int]
    entries: list[dict] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)  # run_id -> resolved config
    run_upstream: dict[str, str] = field(default_factory=dict)  # run_id -> upstream_id
    ensembles: dict[str, dict] = field(default_factory=dict)  # ensemble_id -> {kind, members}
    select: dict | None = None  # `select:` block with defaults filled in, or None

    def index(self) -> dict:
        out = {
            "format": INDEX_FORMAT,
            "sweep": self.name,
            "file": self.file,
            "file_sha256": self.file_sha256,
            "variant": self.variant,
            "reproduces": self.reproduces,
            "title": self.title,
            "axes": self.axes,
            "seeds": self.seeds,
            "entries": self.entries,
        }
        if self.select is not None:
            out["select"] = self.select
        return out

    def fingerprint(self) -> str:
        """Hash of everything the index says (entry ids hash their configs)."""
        return short_hash(
            [
                INDEX_FORMAT,
                self.file_sha256,
                self.variant,
                self.axes,
                self.seeds,
                self.select,
                [(e["id"], e.get("seed"), e.get("replicate"), e["axes"]) for e in self.entries],
            ],
            16,
        )


@dataclass
class Plan:
    """The union of several sweeps: runs, upstreams and ensembles keyed by id (each once)."""

    sweeps: dict[str, Sweep] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    upstreams: dict[str, str] = field(default_factory=dict)  # upstream_id -> a run_id
    run_upstream: dict[str, str] = field(default_factory=dict)  # run_id -> upstream_id
    ensembles: dict[str, dict] = field(default_factory=dict)

    def add(self, sweep: Sweep) -> None:
        if sweep.name in self.sweeps:
            other = self.sweeps[sweep.name].file
            raise SweepError(
                sweep.file,
                "name",
                sweep.name,
                f"sweep name already used by {other}; names must be unique",
            )
        self.sweeps[sweep.name] = sweep
        for rid, cfg in sweep.runs.items():
            if rid not in self.runs:
                self.runs[rid] = cfg
                uid = sweep.run_upstream[rid]
                self.run_upstream[rid] = uid
                self.upstreams.setdefault(uid, rid)
        self.ensembles.update(sweep.ensembles)

    def upstream_config(self, uid: str) -> dict:
        """A run config whose upstream is ``uid`` (any one: the id hashes what it reads)."""
        return self.runs[self.upstreams[uid]]


# ----------------------------------------------------------------------------- entries


def _entry_paths(kind: str, entry_id: str) -> dict:
    d = f"{RESULT_PREFIX}/{kind}/{entry_id}"
    return {"result": f"{d}/results.json", "done": f"{d}/done.json"}


def run_entry(rid: str, seed: int, axes: dict, upstream: str, cfg: dict) -> dict:
    return {
        "id": rid,
        "kind": "run",
        "seed": seed,
        "axes": axes,
        "upstream_id": upstream,
        **_entry_paths("runs", rid),
        "config": cfg,
    }


def ensemble_entry(
    eid: str,
    replicate: int,
    axes: dict,
    members: Sequence[str],
    kind: str,
    overlapping: bool = False,
) -> dict:
    """An ensemble's index row; ``overlapping``: it shares member runs with another
    replicate of its row (replicates then are not independent draws)."""
    return {
        "id": eid,
        "kind": "ensemble",
        "replicate": replicate,
        "seed": replicate,
        "axes": axes,
        "members": list(members),
        "ensemble_kind": kind,
        "overlapping": overlapping,
        **_entry_paths("ensembles", eid),
    }


# ----------------------------------------------------------------------------- files


def config_path(root: str, run: str) -> str:
    return f"{root}/configs/{run}.json"


def upstream_config_path(root: str, up: str) -> str:
    return f"{root}/configs/upstream/{up}.json"


def ensemble_config_path(root: str, ens: str) -> str:
    return f"{root}/configs/ensembles/{ens}.json"


def index_path(root: str, sweep: str) -> str:
    return f"{root}/sweeps/{sweep}/index.json"


def index_tsv_path(root: str, sweep: str) -> str:
    return f"{root}/sweeps/{sweep}/index.tsv"


def report_stamp_path(reports: str, datasets: Sequence[str]) -> str:
    """The workflow report's record of the datasets it shows: ``{reports}/.rendered/{hash}``
    of their paths (in order). The report job writes it and removes the others, so another
    set of sweeps (or results root) finds its stamp missing and renders the report again,
    with every job its datasets still need."""
    return f"{reports}/.rendered/{short_hash([str(d) for d in datasets], 16)}"


def config_text(obj: Any) -> str:
    """The text of a config file: canonical JSON on one line (what ids hash)."""
    return canonical_json(obj) + "\n"


def index_text(sweep: Sweep) -> str:
    # Compact (C encoder): a paper-scale index holds thousands of resolved configs.
    return canonical_json(sweep.index()) + "\n"


def index_tsv(sweep: Sweep) -> str:
    """One row per entry: id, kind, seed, replicate, the axis values (JSON), members."""
    rows = ["\t".join(["id", "kind", "seed", "replicate", *sweep.axes, "members"])]
    for e in sweep.entries:
        seed, rep = ("", str(e["replicate"])) if e["kind"] == "ensemble" else (str(e["seed"]), "")
        rows.append(
            "\t".join(
                [
                    e["id"],
                    e["kind"],
                    seed,
                    rep,
                    *(json.dumps(e["axes"][a]) for a in sweep.axes),
                    ",".join(e.get("members", [])),
                ]
            )
        )
    return "\n".join(rows) + "\n"


def write_index(
    sweep: Sweep,
    json_path: str | os.PathLike,
    tsv_path: str | os.PathLike,
    only_if_changed: bool = True,
) -> int:
    """Write a sweep's index.json and index.tsv atomically; returns the files written.

    With ``only_if_changed=False`` both are rewritten (a workflow job's outputs must be
    newer than its inputs)."""
    n = 0
    for path, text in ((json_path, index_text(sweep)), (tsv_path, index_tsv(sweep))):
        if only_if_changed:
            n += atomic.write_text_if_changed(Path(path), text)
        else:
            atomic.write_text(path, text)
            n += 1
    return n


def write_plan(plan: Plan, results_root: str = "results") -> int:
    """Write configs and indexes of ``plan`` under ``results_root``; returns files written.

    Files whose content is unchanged are left alone (mtimes too). Files named by an id hold
    content that the id is a hash of, so existing ones are right and are not reread.
    """
    root = str(results_root)
    by_id = [(config_path(root, rid), cfg) for rid, cfg in plan.runs.items()]
    by_id += [
        (upstream_config_path(root, uid), plan.upstream_config(uid)) for uid in plan.upstreams
    ]
    by_id += [(ensemble_config_path(root, eid), ens) for eid, ens in plan.ensembles.items()]
    existing: dict[str, set[str]] = {}
    for d in {os.path.dirname(p) for p, _ in by_id}:
        os.makedirs(d, exist_ok=True)
        existing[d] = set(os.listdir(d))
    written = 0
    for path, obj in by_id:
        if os.path.basename(path) not in existing[os.path.dirname(path)]:
            written += atomic.write_text_if_changed(Path(path), config_text(obj))
    for sweep in plan.sweeps.values():
        written += write_index(
            sweep, index_path(root, sweep.name), index_tsv_path(root, sweep.name)
        )
    return written


def write_text_logged(path: str | os.PathLike, text: str, log: str | os.PathLike) -> None:
    """A workflow job's write: ``text`` to ``path`` atomically, one line to ``log``."""
    atomic.write_text(path, text)
    atomic.write_text(log, f"wrote {path} ({len(text)} bytes)\n")


def write_index_logged(sweep: Sweep, json_path: str, tsv_path: str, stamp: str, log: str) -> None:
    """The workflow's index job: rewrite index.json + index.tsv, drop the stamps of other
    plan fingerprints (so a sweep edited back to an earlier plan is rewritten again)."""
    write_index(sweep, json_path, tsv_path, only_if_changed=False)
    stamps = Path(stamp).parent
    dropped = [p.name for p in stamps.iterdir() if p.name != Path(stamp).name]
    for name in dropped:
        (stamps / name).unlink()
    atomic.write_text(
        log,
        f"wrote {json_path} and {tsv_path} ({len(sweep.entries)} entries, "
        f"plan {Path(stamp).name}); dropped plan stamps {dropped}\n",
    )
