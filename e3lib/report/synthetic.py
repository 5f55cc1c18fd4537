"""Synthetic result sets with known statistics, in the exact on-disk formats of the workflow.

Used by the tests of aggregation and report, and to render the example report in the
docs. Nothing here is a measured result: every value is chosen by the caller, and the
written ``provenance.code_commit`` is ``"synthetic"`` so a report built from it says so.

A *cell* is one combination of axis values; ``write_sweep`` gets, per cell, the metric
values of each seed (a seed whose value list is ``None`` gets no results.json, i.e. a
missing run; the string ``"diverged"`` writes ``diverged.json`` instead).

Deep ensembles follow the expansion's layout (``e3lib.sweep.ensembles``): a sweep whose
``axes`` include ``ensemble.runs`` gives every run cell ``ensemble.runs: 1`` unless set; an
ensemble cell (``kind: "ensemble"``) with ``ensemble.runs: n`` has that many members and,
like the expansion, ``len(seeds) // n`` replicates (``replicates`` overrides) at seed
positions 0, 1, …; its metric lists are indexed by replicate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from e3lib import tree
from e3lib.sweep.ensembles import ENSEMBLE_RUNS_AXIS


def _entry_id(sweep: str, axes: Mapping[str, Any], seed: int) -> str:
    text = json.dumps([sweep, dict(sorted(axes.items())), seed], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_sweep(
    root: str | Path,
    sweep: str,
    axes: Sequence[str],
    seeds: Sequence[int],
    cells: Sequence[Mapping[str, Any]],
    reproduces: Sequence[str] = (),
    title: str = "",
    with_predictions: bool = False,
    select: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    variant: str = "small",
) -> Path:
    """Write index.json plus one results.json per (cell, seed); return the index path.

    Each cell: ``{"axes": {...}, "metrics": {name: [v_seed0, v_seed1, ...]},
    "gflops": float, "params": int, "members": int (default 1),
    "member_metrics": {member: {name: [...]}} (optional),
    "val_metrics": {name: [...]} (optional; records of split "val", member "ensemble"),
    "split_metrics": {"SPLIT/CORRUPTION[/SEVERITY[/MEMBER]]": {name: [...]}} (optional;
    records of that split and corruption, severity 0 and member "ensemble" unless given,
    e.g. "corrupted/mean", "shifted/imagenet_a", "fewshot/mean/5/joint"),
    "throughput": {field: [...]} (optional; per seed, provenance.throughput fields),
    "seeds": {seed: None|"diverged"}}``; an ensemble cell also ``"kind": "ensemble"``,
    optionally ``"ensemble_kind"`` (downstream), ``"member_method"`` (the members' method,
    vmoe) and ``"replicates"``. ``select`` is written into the index as declared
    (a complete block: over, metric, split, mode, member). ``config`` (nested) is the run
    configuration every run shares; each run's results.json ``config`` holds it with the
    cell's axes set (``variant`` names the sweep variant in the index).
    """
    root = Path(root)
    entries = []
    for cell in cells:
        kind = cell.get("kind", "run")
        cell_axes = dict(cell["axes"])
        n_runs = cell_axes.get(ENSEMBLE_RUNS_AXIS)
        if ENSEMBLE_RUNS_AXIS in axes and n_runs is None:
            if kind == "ensemble":
                raise ValueError(f"ensemble cell {cell_axes} lacks the axis {ENSEMBLE_RUNS_AXIS}")
            cell_axes[ENSEMBLE_RUNS_AXIS] = n_runs = 1  # every ordinary run: one run
        cell_seeds = list(seeds)
        if kind == "ensemble" and n_runs is not None:  # replicate r sits at seed r
            cell_seeds = list(range(cell.get("replicates", len(seeds) // int(n_runs))))
        for si, seed in enumerate(cell_seeds):
            rid = _entry_id(sweep, cell_axes, seed)
            sub = "ensembles" if kind == "ensemble" else "runs"
            run_dir = root / sub / rid
            entry = {
                "id": rid,
                "kind": kind,
                "seed": seed,
                "axes": cell_axes,
                "result": f"results/{sub}/{rid}/results.json",
            }
            members_ids: list[str] = []
            if kind == "ensemble":
                members_ids = [f"{rid}-m{m}" for m in range(int(n_runs or 2))]
                entry.update(
                    replicate=si,
                    members=members_ids,
                    ensemble_kind=cell.get("ensemble_kind", "downstream"),
                )
            entries.append(entry)
            fate = (cell.get("seeds") or {}).get(seed, "ok")
            if fate is None:
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            if fate == "diverged":
                (run_dir / "diverged.json").write_text(json.dumps({"step": 3, "loss": "nan"}))
                (run_dir / "done.json").write_text(json.dumps({"status": "diverged"}))
                continue
            records = []
            members = {"ensemble": cell["metrics"], **cell.get("member_metrics", {})}
            for member, metrics in members.items():
                for name, per_seed in metrics.items():
                    records.append(
                        {
                            "split": "clean",
                            "corruption": "none",
                            "severity": 0,
                            "member": str(member),
                            "metric": name,
                            "value": per_seed[si],
                        }
                    )
            for name, per_seed in (cell.get("val_metrics") or {}).items():
                records.append(
                    {
                        "split": "val",
                        "corruption": "none",
                        "severity": 0,
                        "member": "ensemble",
                        "metric": name,
                        "value": per_seed[si],
                    }
                )
            for where, metrics in (cell.get("split_metrics") or {}).items():
                split, corruption, *rest = where.split("/")
                severity = int(rest[0]) if rest else 0
                member = rest[1] if len(rest) > 1 else "ensemble"
                for name, per_seed in metrics.items():
                    records.append(
                        {
                            "split": split,
                            "corruption": corruption,
                            "severity": severity,
                            "member": member,
                            "metric": name,
                            "value": per_seed[si],
                        }
                    )
            run_config = tree.merge(
                config or {},
                tree.unflatten({k: v for k, v in cell_axes.items() if k != ENSEMBLE_RUNS_AXIS}),
            )
            run_config = {"axes": cell_axes, "seed": seed, **run_config}
            if kind == "ensemble":  # as e3lib.evaluate.ensemble writes it
                member = {**run_config, "method": cell.get("member_method", "vmoe")}
                run_config = {
                    "kind": entry["ensemble_kind"],
                    "runs": members_ids,
                    "method": member["method"],
                    "run_configs": [member] * len(members_ids),
                }
            result = {
                "run_id": rid,
                "status": "ok",
                "config": run_config,
                "upstream_id": "synthetic",
                "provenance": {
                    "code_commit": "synthetic",
                    "packages": {"jax": "0.0"},
                    "host": "synthetic",
                    "started": "",
                    "finished": "",
                },
                "cost": {
                    "gflops_per_image_train": cell.get("gflops", 1.0),
                    "params": cell.get("params", 1000),
                    "train_seconds": 1.0,
                },
                "records": records,
            }
            if "throughput" in cell:
                result["provenance"]["throughput"] = {
                    k: v[si] for k, v in cell["throughput"].items()
                }
            (run_dir / "results.json").write_text(json.dumps(result))
            (run_dir / "done.json").write_text(json.dumps({"status": "ok"}))
            if with_predictions:
                _write_predictions(run_dir, seed, cell.get("members", 1))
    index = {
        "sweep": sweep,
        "file": f"sweeps/{sweep}.yaml",
        "file_sha256": "0" * 64,
        "variant": variant,
        "reproduces": list(reproduces),
        "title": title or sweep,
        "axes": list(axes),
        "seeds": list(seeds),
        "entries": entries,
    }
    if select is not None:
        index["select"] = dict(select)
    index_path = root / "sweeps" / sweep / "index.json"
    index_path.parent.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(index, indent=1))
    return index_path


def _write_predictions(
    run_dir: Path, seed: int, members: int, n: int = 200, classes: int = 4
) -> None:
    """Deterministic over-confident predictions: confidence 0.9, accuracy 0.7."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    correct = rng.random(n) < 0.7
    predicted = np.where(correct, labels, (labels + 1) % classes)
    probs = np.full((members, n, classes), 0.1 / (classes - 1))
    probs[:, np.arange(n), predicted] = 0.9  # (M, N, C)
    np.savez(run_dir / "predictions.npz", probs=probs, labels=labels)
