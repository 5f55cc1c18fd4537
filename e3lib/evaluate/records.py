"""Metric records of a prediction dict, and the results.json they are written to
(layout: ``e3lib.evaluate``). Notation: M members, N examples, C classes, D feature size."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from e3lib import metrics
from e3lib.checkpoint import atomic_save_npz, atomic_write_json

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

SEP = "."
RESULTS_FORMAT = 2  # results.json layout; e3lib.aggregate.formats reads 1 and 2


def _clean_value(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _records(split: str, corruption: str, severity: int, by_member: Mapping[str, Mapping]):
    return [
        {
            "split": split,
            "corruption": corruption,
            "severity": int(severity),
            "member": member,
            "metric": metric,
            "value": _clean_value(value),
        }
        for member, values in by_member.items()
        for metric, value in values.items()
    ]


def _fewshot_record(task: str, shots: int, member: str, value: float) -> dict:
    return {
        "split": "fewshot",
        "task": task,
        "shots": int(shots),
        "member": member,
        "metric": "fewshot_error",
        "value": _clean_value(value),
    }


def records_from_predictions(
    preds: Mapping[str, np.ndarray],
    fewshot_shots: Sequence[int],
    fewshot_seed: int,
    fewshot_l2_selection: str = "test",
) -> list[dict]:
    """All metric records of a prediction dict (see the module docstring)."""
    clean = metrics.prediction_metrics(preds["probs"], preds["labels"])
    val = None
    val_key = SEP.join(["probs", "val"])
    if val_key in preds:
        val = metrics.prediction_metrics(preds[val_key], preds[SEP.join(["labels", "val"])])
    corrupted, shifted = {}, {}
    for key in sorted(preds):
        parts = key.split(SEP)
        if parts[:2] == ["probs", "corrupted"]:
            name, sev = parts[2], int(parts[3])
            corrupted[(name, sev)] = metrics.prediction_metrics(
                preds[key], preds[SEP.join(["labels", "corrupted", name, str(sev)])]
            )
        elif parts[:2] == ["probs", "shifted"]:
            shifted[parts[2]] = metrics.prediction_metrics(
                preds[key], preds[SEP.join(["labels", "shifted", parts[2]])]
            )
    ood = {}
    for split in ("ood_near", "ood_far"):
        key = SEP.join(["probs", split])
        if key in preds:
            ood[split] = metrics.ood_metrics(preds["probs"], preds[key])
    tasks = {}
    for key in sorted(preds):
        parts = key.split(SEP)
        if parts[:2] == ["features", "fewshot"] and parts[3] == "train":
            task = parts[2]
            part = {
                (kind, split): preds[SEP.join([kind, "fewshot", task, split])]
                for kind in ("features", "labels")
                for split in ("train", "test")
            }
            tasks[task] = (
                part["features", "train"],
                part["labels", "train"],
                part["features", "test"],
                part["labels", "test"],
                int(preds[SEP.join(["num_classes", "fewshot", task])]),
            )
    fewshot = {}
    if tasks:
        members = next(iter(tasks.values()))[0].shape[0]
        for member, mode in fewshot_modes(members):
            fewshot[member] = metrics.fewshot_errors(
                tasks, fewshot_shots, fewshot_seed, mode=mode, l2_selection=fewshot_l2_selection
            )
    return records_from_metrics(clean, val, corrupted, shifted, ood, fewshot, fewshot_shots)


def fewshot_modes(members: int) -> list[tuple[str, str]]:
    """(record member, feature mode) of the few-shot records of an M-member model."""
    return (
        [("ensemble", "joint")] if members == 1 else [("joint", "joint"), ("disjoint", "disjoint")]
    )


def records_from_metrics(
    clean: Mapping,
    val: Mapping | None,
    corrupted: Mapping[tuple[str, int], Mapping],
    shifted: Mapping[str, Mapping],
    ood: Mapping[str, Mapping],
    fewshot: Mapping[str, Mapping[tuple[str, int], float]],
    fewshot_shots: Sequence[int],
) -> list[dict]:
    """Records of computed metrics: ``prediction_metrics`` dicts per split (corrupted by
    (type, severity)), ``ood_metrics`` by split, few-shot errors by record member."""
    records = _records("clean", "none", 0, clean)
    if val is not None:
        records += _records("val", "none", 0, val)
    for name, sev in sorted(corrupted, key=lambda k: (k[0], str(k[1]))):
        records += _records("corrupted", name, sev, corrupted[(name, sev)])
    for name in sorted(shifted):
        records += _records("shifted", name, 0, shifted[name])
    if corrupted:
        first = next(iter(corrupted.values()))
        mean = {
            member: {
                m: float(np.mean([c[member][m] for c in corrupted.values()])) for m in first[member]
            }
            for member in first
        }
        records += _records("corrupted", "mean", 0, mean)
    for split in ("ood_near", "ood_far"):
        if split in ood:
            records += _records(split, "none", 0, {"ensemble": ood[split]})
    for member, errs in fewshot.items():
        for (task, shots), value in errs.items():
            records.append(_fewshot_record(task, shots, member, value))
        tasks = sorted({t for t, _ in errs})
        for shots in fewshot_shots:
            value = float(np.mean([errs[(t, shots)] for t in tasks]))
            records.append(_fewshot_record("mean", shots, member, value))
    return records


def run_cost(cfg: RunConfig, num_classes: int) -> dict:
    """Analytic GFLOPs per image (training step, Table 20) and parameter count of ``cfg``."""
    from e3lib.cost.analytic import analytic_gflops, analytic_params

    return {
        "gflops_per_image_train": float(analytic_gflops(cfg, num_classes)),
        "params": int(analytic_params(cfg, num_classes)),
    }


def write_results(
    out: str | os.PathLike,
    results: Mapping[str, Any],
    preds: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
) -> None:
    """predictions.npz first, results.json last (both atomic), stamped with its format."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(out / "predictions.npz", **{k: np.asarray(v) for k, v in preds.items()})
    atomic_write_json(out / "results.json", {"format": RESULTS_FORMAT, **results})
