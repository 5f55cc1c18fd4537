"""Deep ensembles of R independent runs from their saved predictions (``e3 ensemble``).
Notation: R runs, M members of a run, N examples, C classes, D feature size.

Streamed runs (``e3lib.evaluate.streaming``) save no per-example predictions: their
ensemble rebuilds each member from its parameters and re-reads every set batch by batch
(``ensemble_streamed_records``), so its memory does not grow with the sets either."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from e3lib.config import ENSEMBLE_KINDS
from e3lib.evaluate.records import records_from_predictions, write_results
from e3lib.evaluate.streaming import STREAMED_KEY, ensemble_streamed_records
from e3lib.provenance import provenance, utc_now


def load_run(run_dir: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    run_dir = Path(run_dir)
    res_file, pred_file = run_dir / "results.json", run_dir / "predictions.npz"
    for f in (res_file, pred_file):
        if not f.is_file():
            extra = " (the run diverged)" if (run_dir / "diverged.json").is_file() else ""
            raise FileNotFoundError(f"ensemble member {run_dir}: {f.name} missing{extra}")
    with open(res_file) as f:
        results = json.load(f)
    if results.get("status") != "ok":
        raise ValueError(f"ensemble member {run_dir}: status {results.get('status')!r}")
    with np.load(pred_file) as z:
        preds = {k: z[k] for k in z.files}
    return results, preds


def combine_predictions(
    run_preds: Sequence[Mapping[str, np.ndarray]], run_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Deep ensemble of R runs: run r's prediction is the mean of its members' probs; the
    ensemble's members are the R runs: probs (R, N, C). Few-shot features of all members
    of all runs are concatenated: (Σ M_r, N, D). Label arrays must agree across runs."""
    keys = set(run_preds[0])
    for preds, name in zip(run_preds[1:], run_names[1:]):
        if set(preds) != keys:
            missing = sorted(keys ^ set(preds))
            raise ValueError(
                f"run {name} has different evaluation sets than {run_names[0]}: {missing[:5]}"
            )
    out = {}
    for key in sorted(keys):
        arrays = [p[key] for p in run_preds]
        if key.startswith("probs"):
            out[key] = np.stack([a.mean(axis=0) for a in arrays])  # (R, N, C)
        elif key.startswith("features"):
            out[key] = np.concatenate(arrays, axis=0)  # (ΣM, N, D)
        else:
            for a, name in zip(arrays[1:], run_names[1:]):
                if not np.array_equal(a, arrays[0]):
                    raise ValueError(f"run {name}: {key} differs from {run_names[0]}")
            out[key] = arrays[0]
    return out


def ensemble_runs(run_dirs: Sequence[str], out: str | os.PathLike, kind: str) -> dict:
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"--kind {kind!r}; allowed: {list(ENSEMBLE_KINDS)}")
    if len(run_dirs) < 2:
        raise ValueError(f"a deep ensemble needs at least 2 runs, got {len(run_dirs)}")
    started = utc_now()
    loaded = [load_run(d) for d in run_dirs]
    results = [r for r, _ in loaded]
    ups = [r["upstream_id"] for r in results]
    if kind == "downstream" and len(set(ups)) != 1:
        raise ValueError(f"downstream ensemble: runs must share one upstream; got {ups}")
    if kind == "upstream" and len(set(ups)) != len(ups):
        raise ValueError(f"upstream ensemble: runs need distinct upstreams; got {ups}")
    ids = [r["run_id"] for r in results]
    if len(set(ids)) != len(ids):
        raise ValueError(f"ensemble lists the same run twice: {ids}")
    cfg0 = results[0]["config"]
    streamed = [STREAMED_KEY in p for _, p in loaded]
    if any(streamed):
        if not all(streamed):
            raise ValueError(f"ensemble mixes streamed and in-memory runs: {list(run_dirs)}")
        preds = {STREAMED_KEY: np.asarray(True)}
        records = ensemble_streamed_records(run_dirs, results)
    else:
        preds = combine_predictions([p for _, p in loaded], list(run_dirs))
        records = records_from_predictions(
            preds, cfg0["eval"]["fewshot_shots"], cfg0["seed"], cfg0["eval"]["fewshot_l2_selection"]
        )
    costs = [r.get("cost", {}) for r in results]

    def total(field):
        vals = [c.get(field) for c in costs]
        return None if any(v is None for v in vals) else sum(vals)

    res = {
        "run_id": Path(out).name,
        "status": "ok",
        "config": {
            "kind": kind,
            "runs": ids,
            "method": cfg0["method"],
            "run_configs": [r["config"] for r in results],
        },
        "upstream_id": ups[0] if kind == "downstream" else ups,
        "provenance": provenance(started),
        "cost": {
            "gflops_per_image_train": total("gflops_per_image_train"),
            "params": total("params"),
            "train_seconds": total("train_seconds"),
        },
        "records": records,
    }
    write_results(out, res, preds)
    return res


def cli_ensemble(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="e3 ensemble",
        description="Deep ensemble of independent runs, from their saved predictions.",
    )
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kind", choices=ENSEMBLE_KINDS, required=True)
    a = p.parse_args(argv)
    try:
        ensemble_runs(a.runs, a.out, a.kind)
    except (FileNotFoundError, ValueError) as err:
        print(f"e3 ensemble: {err}", file=sys.stderr)
        return 2
    return 0
