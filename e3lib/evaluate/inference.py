"""Apply a trained model to every evaluation set of a run (eval mode, fixed batch size).
Notation: M members, N examples, B batch, C classes, D feature size."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from e3lib.evaluate.records import SEP, records_from_predictions, run_cost

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


def make_predict_fn(model, placement=None, local: bool = False):
    """Jitted eval-mode apply: images (B,H,W,3) → (probs (M,B,C), features (M,B,D)).
    ``placement`` (e3lib.parallel): on a mesh, sharded params and batch, host outputs;
    ``local``: images and outputs are this process's rows (``Placement.predict_fn``)."""
    import jax
    import jax.numpy as jnp

    def fn(params, images):
        logits, aux = model.apply({"params": params}, images, train=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # (B, M, C)
        return probs.transpose(1, 0, 2), aux["features"].astype(jnp.float32).transpose(1, 0, 2)

    if placement is None or placement.mesh is None:
        return jax.jit(fn)
    return placement.predict_fn(fn, local)  # [parallel hook]


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


def run_predictions(model, params, suite, cfg: RunConfig) -> dict[str, np.ndarray]:
    """Apply the model to every set the run's ``eval`` section asks for."""
    from e3lib.parallel.placement import Placement

    ev = cfg.eval
    fn = make_predict_fn(model, Placement.for_config(cfg))  # [parallel hook]
    # No larger than needed for the test set, and whole routing groups of images.
    bs = min(ev.batch_size, _round_up(len(suite.test), cfg.model.group_images))

    def probs_of(images):
        return predict(model, params, images, bs, fn)[0]

    out = {"labels": suite.test.labels}
    out["probs"], _ = predict(model, params, suite.test.images, bs, fn)
    if suite.val is not None and len(suite.val.labels):
        out[SEP.join(["probs", "val"])] = probs_of(suite.val.images)
        out[SEP.join(["labels", "val"])] = suite.val.labels
    if ev.corrupted:
        for name, by_sev in suite.corrupted.items():
            for sev, data in by_sev.items():
                out[SEP.join(["probs", "corrupted", name, str(sev)])] = probs_of(data.images)
                out[SEP.join(["labels", "corrupted", name, str(sev)])] = data.labels
        for name, data in suite.shifted.items():
            out[SEP.join(["probs", "shifted", name])] = probs_of(data.images)
            out[SEP.join(["labels", "shifted", name])] = data.labels
    if ev.ood:
        for split in ("ood_near", "ood_far"):
            images = getattr(suite, split)
            if images is not None:
                out[SEP.join(["probs", split])] = probs_of(images)
    if ev.fewshot:
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


def evaluate_run(model, params, suite, cfg: RunConfig):
    """(records, predictions dict, clean labels, cost) of a trained run."""
    preds = run_predictions(model, params, suite, cfg)
    records = records_from_predictions(
        preds, cfg.eval.fewshot_shots, cfg.seed, cfg.eval.fewshot_l2_selection
    )
    return records, preds, preds["labels"], run_cost(cfg, suite.num_classes)
