"""Readable names of a run for the trackers: the sweeps that list it and its axis values.

A run folder ``<results>/runs/<id>`` belongs to the sweeps whose index
(``<results>/sweeps/<sweep>/index.tsv``, written before any job runs) has an entry of kind
``run`` with that id. Its label is its axis values (``model.num_experts=8,seed=0``), and
process 0 links its event folder into ``<results>/tb/<sweep>/<label>`` (a relative symlink),
so ``tensorboard --logdir <results>/tb`` lists a sweep's runs by their axes, one folder per
sweep; ``--logdir <results>`` lists them by id (the links are followed too, so the first is
the readable one to use).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

TB_LINKS = "tb"  # <results>/tb/<sweep>/<label> → ../../runs/<id>/tb


def results_root(out: Path, kind: str = "runs") -> Path | None:
    """``<results>`` of a run folder ``<results>/runs/<id>`` (None for another layout)."""
    out = Path(out).absolute()
    return out.parent.parent if out.parent.name == kind else None


def sweep_memberships(root: Path | None, run_id: str) -> dict[str, dict[str, Any]]:
    """{sweep: {axis: value}} of every sweep index under ``root`` listing run ``run_id``."""
    found: dict[str, dict[str, Any]] = {}
    if root is None:
        return found
    for tsv in sorted((root / "sweeps").glob("*/index.tsv")):
        try:
            lines = tsv.read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split("\t")
        axes = header[4:-1]  # id, kind, seed, replicate, axes..., members
        for line in lines[1:]:
            cols = line.split("\t")
            if len(cols) == len(header) and cols[0] == run_id and cols[1] == "run":
                found[tsv.parent.name] = {a: json.loads(v) for a, v in zip(axes, cols[4:-1])}
                break
    return found


def label(axes: dict[str, Any], seed: int) -> str:
    """``axis=value,...,seed=N``, safe as one folder name."""
    parts = [f"{a}={_text(v)}" for a, v in axes.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))[:200]


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def link_event_dir(root: Path, sweep: str, name: str, target: Path) -> None:
    """``<root>/tb/<sweep>/<name>`` → ``target`` (relative), replacing a stale link."""
    link = root / TB_LINKS / sweep / name
    link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(Path(target).absolute(), link.parent.absolute())
    if link.is_symlink():
        if os.readlink(link) == rel:
            return
        link.unlink()
    tmp = link.with_name(f".{name}.{os.getpid()}")
    os.symlink(rel, tmp)
    os.replace(tmp, link)
