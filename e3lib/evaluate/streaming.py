"""Evaluation of a streamed run (or a deep ensemble of streamed runs) batch by batch:
every set of a ``StreamSuite`` is read through ``e3lib.data.stream.eval_dataset`` (the
eval pp) and fed to the accumulators of ``e3lib.metrics_stream``, so memory does not grow
with the split. The records are those of ``records_from_predictions`` on the same
predictions (tests/test_evaluate_stream.py).

Notation: M members of a run, R runs of a deep ensemble, B eval batch, C classes,
D feature size, N examples of a set.

A predictor maps float images (B, H, W, 3) to (probs (M, B, C), features (M, B, D)). One
predictor is one run. Several are a deep ensemble, combined as
``e3lib.evaluate.ensemble.combine_predictions`` does: the ensemble's members are the R
runs' member-mean probabilities (R, B, C); few-shot features are all members of all runs
concatenated (ΣM, B, D). What stays in memory: the sums of each accumulator, one 8-byte
OOD score per in- and out-of-distribution example, the drawn few-shot shots' features
and each few-shot task's test features.

Several processes (P > 1, docs/scale.md): each reads only its block of b = B/P rows of
every batch (``eval_dataset``, the training stream's sharding), predicts them (on a mesh,
``make_predict_fn(..., local=True)``: one global batch, each process keeping its rows of
the outputs) and accumulates them; before any metric is computed, every accumulator is
gathered from all processes (``e3lib.parallel.distributed.gather_objects``) and merged in
process order, so each example counts once and the records equal one process's.
B is then a multiple of group_images × D (D devices): whole routing groups, the same
consecutive images, in every process's block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from e3lib import metrics_stream as ms
from e3lib.evaluate.records import fewshot_modes, records_from_metrics

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def run_predictor(model, params, predict_fn=None, placement=None) -> Predictor:
    """One run's predictor of this process's rows; ``placement`` (e3lib.parallel) runs it
    on the run's mesh."""
    from e3lib.evaluate.inference import make_predict_fn
    from e3lib.parallel.distributed import process_count

    fn = predict_fn or make_predict_fn(model, placement, local=process_count() > 1)

    def predict(images):
        probs, feats = fn(params, images)
        return np.asarray(probs), np.asarray(feats)

    return predict


def combined(predictors: Sequence[Predictor]) -> Predictor:
    """One run as is; R runs as a deep ensemble (module docstring)."""
    if len(predictors) == 1:
        return predictors[0]

    def predict(images):
        outs = [p(images) for p in predictors]
        probs = np.stack([np.asarray(pr, np.float64).mean(axis=0) for pr, _ in outs])
        return probs, np.concatenate([f for _, f in outs], axis=0)  # (R,B,C), (ΣM,B,D)

    return predict


def _batches(source, pp: str, batch_size: int, threads: int, procs) -> Iterator[dict]:
    from e3lib.data.stream import Stream, eval_dataset

    stream = Stream(eval_dataset(source, pp, batch_size, *procs), threads=threads, prefetch=2)
    try:
        yield from stream
    finally:
        stream.close()


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _merged(acc):
    """``acc`` merged with the same accumulator of every other process (module docstring)."""
    from e3lib.parallel.distributed import gather_objects

    return ms.merge_all(gather_objects(acc))


def eval_batch_size(cfg: RunConfig, test_size: int, devices: int = 1) -> int:
    """B of every set: no larger than the test set needs, whole routing groups; with
    several processes a multiple of group_images × ``devices`` (module docstring)."""
    group = cfg.model.group_images
    bs = min(cfg.eval.batch_size, _round_up(test_size, group))
    return bs if devices == 1 else _round_up(bs, group * devices)


def _processes(processes) -> tuple[int, int]:
    from e3lib.parallel.distributed import process_count, process_index

    if processes is not None:
        return tuple(processes)
    return (process_index(), process_count()) if process_count() > 1 else (0, 1)


def stream_records(
    predictors: Sequence[Predictor],
    suite,
    cfg: RunConfig,
    threads: int = 4,
    processes: tuple[int, int] | None = None,
) -> tuple[list[dict], dict]:
    """(records, sizes) of the sets the run's ``eval`` section asks for; ``sizes`` gives
    the examples read per set. ``processes``: (p, P), default JAX's (each process reads
    its share; the accumulators are merged across processes)."""
    ev = cfg.eval
    predict = combined(predictors)
    procs = _processes(processes)
    devices = 1
    if procs[1] > 1:
        import jax

        devices = max(jax.device_count(), procs[1])
    bs = eval_batch_size(cfg, len(suite.test), devices)
    sizes: dict[str, int] = {}

    def accumulate(source, name, ood_sides=()):
        acc = None
        for b in _batches(source, suite.pp_eval, bs, threads, procs):
            probs, _ = predict(b["image"])
            if acc is None:
                acc = ms.PredictionAccumulator(probs.shape[0])
            acc.update(probs, b["label"], b["valid"])
            for o in ood_sides:
                o.update("in", probs, b["valid"])
        sizes[name] = len(source)
        return _merged(acc).result()

    oods = {
        s: ms.OODAccumulator()
        for s in ("ood_near", "ood_far")
        if ev.ood and getattr(suite, s) is not None
    }
    clean = accumulate(suite.test, "test", tuple(oods.values()))
    val = accumulate(suite.val, "val") if suite.val is not None and len(suite.val) else None
    corrupted, shifted = {}, {}
    if ev.corrupted:
        for name, by_sev in suite.corrupted.items():
            for sev, src in by_sev.items():
                corrupted[(name, sev)] = accumulate(src, f"corrupted.{name}.{sev}")
        shifted = {k: accumulate(src, f"shifted.{k}") for k, src in suite.shifted.items()}
    ood = {}
    for split, acc in oods.items():
        source = getattr(suite, split)
        for b in _batches(source, suite.pp_eval, bs, threads, procs):
            acc.update("out", predict(b["image"])[0], b["valid"])
        sizes[split] = len(source)
        ood[split] = _merged(acc).result()
    fewshot = {}
    if ev.fewshot and suite.fewshot:
        fewshot = _fewshot(predict, suite, cfg, bs, threads, sizes, procs)
    records = records_from_metrics(clean, val, corrupted, shifted, ood, fewshot, ev.fewshot_shots)
    return records, sizes


def _fewshot(predict, suite, cfg, bs, threads, sizes, procs) -> dict:
    """Few-shot errors by record member. Each pool is read whole, in order (an MoE's
    routing, hence a feature, depends on the other images of its batch: reading only the
    drawn shots would batch them differently); only the drawn shots' features are kept."""
    from e3lib.data.stream_suite import source_labels

    ev = cfg.eval
    tasks, members = {}, None
    for task, src in sorted(suite.fewshot.items()):
        collector = ms.FewShotFeatures(
            task,
            source_labels(src.pool),
            ev.fewshot_shots,
            cfg.seed,
            ev.fewshot_l2_selection,
        )
        for b in _batches(src.pool, suite.pp_eval, bs, threads, procs):
            valid = np.asarray(b["valid"], bool)
            collector.update(predict(b["image"])[1][:, valid], np.asarray(b["index"])[valid])
        test = ms.TestFeatures()
        for b in _batches(src.test, suite.pp_eval, bs, threads, procs):
            valid = np.asarray(b["valid"], bool)
            feats = predict(b["image"])[1][:, valid]
            test.update(feats, np.asarray(b["label"])[valid], np.asarray(b["index"])[valid])
        collector, test = _merged(collector), _merged(test)
        fte, yte = test.arrays()
        num_classes = int(max(collector.labels.max(), yte.max())) + 1
        tasks[task] = (collector, fte, yte, num_classes)
        members = fte.shape[0]
        sizes[f"fewshot.{task}"] = len(src.pool) + len(yte)
    return {member: ms.fewshot_errors(tasks, mode) for member, mode in fewshot_modes(members)}


PARAMS_DIR = "params"  # a streamed run's final parameters (Orbax), under its out dir
STREAMED_KEY = "streamed"  # the one array of a streamed run's predictions.npz


def evaluate_streamed(model, params, suite, cfg: RunConfig, out):
    """(records, compact predictions, None, cost) of a streamed run. Its predictions.npz
    holds only ``streamed`` (no per-example arrays); the final parameters are written to
    ``out/params`` (4 bytes per parameter in float32), from which a deep ensemble
    re-evaluates the run batch by batch (``e3lib.evaluate.ensemble``)."""
    import shutil
    from pathlib import Path

    from e3lib.evaluate.records import run_cost
    from e3lib.models.convert import save_params
    from e3lib.parallel.distributed import barrier, is_writer
    from e3lib.parallel.placement import Placement

    placement = Placement.for_config(cfg)  # [parallel hook]
    records, sizes = stream_records([run_predictor(model, params, placement=placement)], suite, cfg)
    path = Path(out) / PARAMS_DIR
    if path.exists() and is_writer():  # a rerun after a crash between this save and results
        shutil.rmtree(path)
    barrier("streamed_params")
    save_params(path, params)  # every process saves its own shards (Orbax)
    cost = run_cost(cfg, suite.num_classes)
    cost["eval_examples"] = sizes
    return records, {STREAMED_KEY: np.asarray(True)}, None, cost


def ensemble_streamed_records(run_dirs, results: Sequence[Mapping]) -> list[dict]:
    """Records of a deep ensemble of streamed runs: each member's model is rebuilt from its
    config and parameters (``run/params``) and every set is re-read batch by batch."""
    from pathlib import Path

    from e3lib.config import resolve
    from e3lib.data.stream_suite import open_stream_suite
    from e3lib.models import build_model
    from e3lib.models.convert import restore_params

    cfgs = [resolve(res["config"]) for res in results]  # stored as plain dicts
    cfg0 = cfgs[0]
    suite = open_stream_suite(cfg0)
    predictors = []
    for run_dir, cfg in zip(run_dirs, cfgs):
        model = build_model(cfg, suite.num_classes)
        params = restore_params(Path(run_dir) / PARAMS_DIR, key=None)
        predictors.append(run_predictor(model, params))
    return stream_records(predictors, suite, cfg0)[0]
