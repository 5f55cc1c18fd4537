"""Held-out evaluation during training: the loss and error of the model on examples it never
trains on, every ``Job.heldout_every`` steps (e3lib.train.loop, e3lib.curves).

Notation: M predictions per image (members), N held-out examples, C classes, S packed seeds.

A held-out set is either in memory (a ``Labeled``: the upstream demo's ``upstream_heldout``,
a fine-tuning suite's ``val`` split) or ``(source, pp)``: a streamed source read in order
through the eval pipeline, its first ``max_examples`` examples at each evaluation. The
members' probabilities are averaged before the NLL and error, as the final evaluation's
ensemble metrics are (e3lib.metrics).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

HELDOUT_EXAMPLES = 2048  # of a streamed held-out source, read at each evaluation
EVAL_BATCH = 256


def heldout_metrics(
    model, heldout, packed: bool = False, placement=None, max_examples: int = HELDOUT_EXAMPLES
) -> Callable:
    """params → {"loss": [NLL per seed], "error": [error per seed]} of ``model`` on
    ``heldout``; ``packed``: params carry a leading seed axis S (one entry per seed)."""
    import jax

    from e3lib.evaluate import make_predict_fn
    from e3lib.metrics import error, nll
    from e3lib.train.loop import unstack_state

    fn = make_predict_fn(model, placement)
    if isinstance(heldout, tuple):
        (source, pp), data, n = heldout, None, max_examples
    else:
        source, pp, data, n = None, None, heldout, len(heldout)

    def one(params) -> tuple[float, float]:
        probs, labels = subset_probs(fn, params, data, source, pp, n)
        probs = probs.mean(0)  # (M, N, C) → (N, C)
        return nll(probs, labels), error(probs, labels)

    def metrics(params) -> dict:
        if not packed:
            per_seed = [one(params)]
        else:
            s = len(jax.tree_util.tree_leaves(params)[0])
            per_seed = [one(unstack_state(params, i)) for i in range(s)]
        return {"loss": [p[0] for p in per_seed], "error": [p[1] for p in per_seed]}

    return metrics


def subset_probs(fn, params, data, source, pp, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (M, n', C) and labels (n',) of the first n' = min(N, n) examples of
    ``data`` (in memory) or of ``source`` (read in order through the eval pipeline)."""
    from e3lib.evaluate import predict

    if source is None:
        n = min(len(data), n)
        return predict(None, params, data.images[:n], EVAL_BATCH, fn)[0], data.labels[:n]
    from e3lib.data.stream import Stream, Subset, eval_dataset

    subset = Subset(source, np.arange(min(len(source), n)))
    probs, labels = [], []
    batches = Stream(eval_dataset(subset, pp, EVAL_BATCH, 0, 1), threads=2, prefetch=1)
    try:
        for b in batches:
            valid = np.asarray(b["valid"], bool)
            probs.append(np.asarray(fn(params, b["image"])[0])[:, valid])
            labels.append(np.asarray(b["label"])[valid])
    finally:
        batches.close()
    return np.concatenate(probs, axis=1), np.concatenate(labels)
