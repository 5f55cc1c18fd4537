"""The evaluation suite of one run, and deep ensembles of independent runs
(the ``e3 ensemble`` command).

Notation: M members (predictions per image), N examples, C classes, D feature size,
R runs in a deep ensemble.

A run's model is applied once to every evaluation set; what comes out is kept as a flat
dict of arrays (``predictions.npz``), and every metric record is computed from that dict
alone (``records_from_predictions``). A deep ensemble of runs concatenates the members
of its runs and goes through the same function, so runs and ensembles report the same
metrics in the same format.

``predictions.npz`` keys (``.`` separates parts):

- ``probs`` (M, N, C) and ``labels`` (N,): the clean test set (docs/architecture.md);
- ``probs.val`` (M, N_val, C) and ``labels.val`` (N_val,): the validation split (App. A.3
  fractions of train), read only for hyperparameter selection (e3lib.aggregate.select_grid);
- ``probs.corrupted.{type}.{severity}``, ``labels.corrupted.{type}.{severity}``;
- ``probs.shifted.{name}``, ``labels.shifted.{name}`` (e.g. ImageNet-A / -V2);
- ``probs.ood_near``, ``probs.ood_far`` (M, N', C);
- ``features.fewshot.{task}.{train|test}`` (M, N, D), ``labels.fewshot.{task}.{train|test}``,
  ``num_classes.fewshot.{task}`` ().

results.json (``RESULTS_FORMAT`` = 2, its ``format`` field): run/ensemble fields and
``records``, each ``{"split", "member", "metric", "value"}`` plus where it was measured:
``"corruption", "severity"`` for every split but few-shot, ``"task", "shots"`` for
``fewshot`` (format 1, read by ``e3 aggregate``, put task and shots in corruption and
severity). Records:

- ``val``: nll, error, ece, brier per member and "ensemble" (+ diversity when M > 1),
  corruption "none", severity 0 — the split hyperparameters are selected on.
- ``clean`` / ``corrupted`` (type, 1..5; plus ``mean`` severity 0 = average over all
  types × severities) / ``shifted``: nll, error, ece, brier per member "0", "1", … and
  "ensemble" (mean of member probabilities); the ensemble adds kl_diversity,
  cos_similarity and disagreement when M > 1.
- ``ood_near`` / ``ood_far``: auroc, aupr, fpr95 of the ensemble prediction (member
  "ensemble"), the clean test set being in-distribution.
- ``fewshot``: fewshot_error per ``task`` (or ``mean`` over tasks) and ``shots``. member =
  "ensemble" when M = 1; with M > 1 two records, member "joint" (concatenated member
  features, the paper's default) and "disjoint" (App. A.5.1).

Metric values that are undefined (e.g. normalized disagreement when the ensemble makes no
error) are written as null.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e3lib import metrics
from e3lib.checkpoint import atomic_save_npz, atomic_write_json
from e3lib.provenance import provenance, utc_now

SEP = "."
RESULTS_FORMAT = 2  # results.json layout; e3lib.aggregate.formats reads 1 and 2


def make_predict_fn(model):
    """Jitted eval-mode apply: images (B,H,W,3) → (probs (M,B,C), features (M,B,D))."""
    import jax
    import jax.numpy as jnp

    def fn(params, images):
        logits, aux = model.apply({"params": params}, images, train=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # (B, M, C)
        return probs.transpose(1, 0, 2), aux["features"].astype(jnp.float32).transpose(1, 0, 2)

    return jax.jit(fn)


def predict(
    model, params, images_uint8: np.ndarray, batch_size: int, predict_fn=None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (M, N, C) and pre-logits features (M, N, D) of a uint8 image set.

    Batches have a fixed size (the last one padded with copies of its last image and the
    padding dropped), so each set compiles once.
    """
    from e3lib.data import to_float

    fn = predict_fn or make_predict_fn(model)
    n = len(images_uint8)
    probs, feats = [], []
    for lo in range(0, n, batch_size):
        chunk = images_uint8[lo : lo + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        p, f = fn(params, to_float(chunk))
        probs.append(np.asarray(p)[:, : batch_size - pad])
        feats.append(np.asarray(f)[:, : batch_size - pad])
    return np.concatenate(probs, axis=1), np.concatenate(feats, axis=1)


def run_predictions(model, params, suite, cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Apply the model to every set the run's ``eval`` section asks for."""
    ev = cfg["eval"]
    fn = make_predict_fn(model)
    # No larger than needed for the test set, and whole routing groups of images.
    bs = min(ev["batch_size"], _round_up(len(suite.test), cfg["model"]["group_images"]))

    def probs_of(images):
        return predict(model, params, images, bs, fn)[0]

    out = {"labels": suite.test.labels}
    out["probs"], _ = predict(model, params, suite.test.images, bs, fn)
    if suite.val is not None and len(suite.val.labels):
        out[SEP.join(["probs", "val"])] = probs_of(suite.val.images)
        out[SEP.join(["labels", "val"])] = suite.val.labels
    if ev["corrupted"]:
        for name, by_sev in suite.corrupted.items():
            for sev, data in by_sev.items():
                out[SEP.join(["probs", "corrupted", name, str(sev)])] = probs_of(data.images)
                out[SEP.join(["labels", "corrupted", name, str(sev)])] = data.labels
        for name, data in suite.shifted.items():
            out[SEP.join(["probs", "shifted", name])] = probs_of(data.images)
            out[SEP.join(["labels", "shifted", name])] = data.labels
    if ev["ood"]:
        for split in ("ood_near", "ood_far"):
            images = getattr(suite, split)
            if images is not None:
                out[SEP.join(["probs", split])] = probs_of(images)
    if ev["fewshot"]:
        for task, t in suite.fewshot.items():
            for part, data in (("train", t.train), ("test", t.test)):
                out[SEP.join(["features", "fewshot", task, part])] = predict(
                    model, params, data.images, bs, fn
                )[1]
                out[SEP.join(["labels", "fewshot", task, part])] = data.labels
            out[SEP.join(["num_classes", "fewshot", task])] = np.asarray(t.num_classes)
    return out


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


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
    records = _records(
        "clean", "none", 0, metrics.prediction_metrics(preds["probs"], preds["labels"])
    )
    val_key = SEP.join(["probs", "val"])
    if val_key in preds:
        records += _records(
            "val",
            "none",
            0,
            metrics.prediction_metrics(preds[val_key], preds[SEP.join(["labels", "val"])]),
        )
    corrupted = {}
    for key in sorted(preds):
        parts = key.split(SEP)
        if parts[:2] == ["probs", "corrupted"]:
            name, sev = parts[2], int(parts[3])
            corrupted[(name, sev)] = metrics.prediction_metrics(
                preds[key], preds[SEP.join(["labels", "corrupted", name, str(sev)])]
            )
            records += _records("corrupted", name, sev, corrupted[(name, sev)])
        elif parts[:2] == ["probs", "shifted"]:
            records += _records(
                "shifted",
                parts[2],
                0,
                metrics.prediction_metrics(
                    preds[key], preds[SEP.join(["labels", "shifted", parts[2]])]
                ),
            )
    if corrupted:
        mean = {}
        for member in next(iter(corrupted.values())):
            names = next(iter(corrupted.values()))[member]
            mean[member] = {
                m: float(np.mean([c[member][m] for c in corrupted.values()])) for m in names
            }
        records += _records("corrupted", "mean", 0, mean)
    for split in ("ood_near", "ood_far"):
        key = SEP.join(["probs", split])
        if key in preds:
            records += _records(
                split, "none", 0, {"ensemble": metrics.ood_metrics(preds["probs"], preds[key])}
            )
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
    if tasks:
        members = next(iter(tasks.values()))[0].shape[0]
        modes = (
            [("ensemble", "joint")]
            if members == 1
            else [("joint", "joint"), ("disjoint", "disjoint")]
        )
        for member, mode in modes:
            errs = metrics.fewshot_errors(
                tasks, fewshot_shots, fewshot_seed, mode=mode, l2_selection=fewshot_l2_selection
            )
            for (task, shots), value in errs.items():
                records.append(_fewshot_record(task, shots, member, value))
            for shots in fewshot_shots:
                value = float(np.mean([errs[(t, shots)] for t in tasks]))
                records.append(_fewshot_record("mean", shots, member, value))
    return records


def run_cost(cfg: Mapping[str, Any], num_classes: int) -> dict:
    """GFLOPs per image and parameter count from ``e3lib.flops`` (null if unavailable)."""
    cost = {"gflops_per_image_train": None, "params": None}
    try:
        from e3lib import flops
    except ImportError:
        return cost
    if hasattr(flops, "analytic_gflops"):
        cost["gflops_per_image_train"] = float(flops.analytic_gflops(cfg, num_classes))
    if hasattr(flops, "count_params"):
        cost["params"] = int(flops.count_params(cfg, num_classes))
    return cost


def evaluate_run(model, params, suite, cfg: Mapping[str, Any]):
    """(records, predictions dict, clean labels, cost) of a trained run."""
    preds = run_predictions(model, params, suite, cfg)
    records = records_from_predictions(
        preds, cfg["eval"]["fewshot_shots"], cfg["seed"], cfg["eval"]["fewshot_l2_selection"]
    )
    return records, preds, preds["labels"], run_cost(cfg, suite.num_classes)


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


# ----------------------------------------------------------------------------------------
# Deep ensembles of independent runs.

ENSEMBLE_KINDS = ("downstream", "upstream")


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
    preds = combine_predictions([p for _, p in loaded], list(run_dirs))
    cfg0 = results[0]["config"]
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
