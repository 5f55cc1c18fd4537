"""Metrics of the paper (§5, Appendices A.5, I, J, L): predictive quality, calibration,
ensemble diversity, OOD detection and linear few-shot error.

Notation: N examples, C classes, M members, D feature size, k shots per class.
``probs`` is (N, C) (one predictive distribution per example); ``member_probs`` is
(M, N, C). All functions take NumPy arrays and return Python floats; they compute in
float64 so results do not depend on the model's dtype.

Metric names used in result records (``METRICS``):

- ``nll``: mean of −log p(y|x) of the (ensemble-mean) prediction.
- ``error``: fraction of examples whose argmax class is not the label.
- ``ece``: expected calibration error with 15 equal-width confidence bins; example n
  falls in bin b = min(⌊conf_n·15⌋, 14) with conf_n = max_c p_nc (so [0,1/15), …,
  [14/15, 1]); ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|.
- ``brier``: mean over examples of Σ_c (p_nc − 1[c = y_n])² (multi-class form, range [0,2]).
- ``kl_diversity``: the paper's §2.2 formula, KL(p_m ‖ p_m′) averaged over test inputs
  and all ordered pairs m ≠ m′ of members.
- ``cos_similarity``: cosine similarity of the probability vectors of two members,
  averaged over inputs and pairs m < m′ (Table 15).
- ``disagreement``: normalized disagreement (Table 15, after Fort et al. 2019): the
  fraction of inputs on which the argmax of two members differ, averaged over pairs
  m < m′, divided by the error of the ensemble prediction.
- ``auroc``, ``aupr``, ``fpr95``: OOD detection with the max-softmax-probability score.
  OOD examples are the positive class with score s = 1 − max_c p_c. AUPR is average
  precision (the step-wise area of scikit-learn's ``average_precision_score``); FPR@95 is
  the fraction of in-distribution examples flagged as OOD at the highest threshold that
  flags ≥ 95% of the OOD examples.
- ``fewshot_error``: linear few-shot error (App. A.5): closed-form ridge regression on
  frozen pre-logits features to ±1 targets, see ``fewshot_errors``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from e3lib.config import CHOICES

METRICS = (
    "nll",
    "error",
    "ece",
    "brier",
    "kl_diversity",
    "cos_similarity",
    "disagreement",
    "auroc",
    "aupr",
    "fpr95",
    "fewshot_error",
)
DIVERSITY_METRICS = ("kl_diversity", "cos_similarity", "disagreement")
ECE_BINS = 15
_TINY = 1e-12  # floor on probabilities inside logarithms (p = 0 exactly)


def _probs(probs) -> np.ndarray:
    return np.asarray(probs, dtype=np.float64)


def nll(probs, labels) -> float:
    p = _probs(probs)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], _TINY))))


def error(probs, labels) -> float:
    return float(np.mean(np.argmax(_probs(probs), axis=-1) != np.asarray(labels)))


def ece(probs, labels, num_bins: int = ECE_BINS) -> float:
    p = _probs(probs)
    conf = p.max(axis=-1)
    correct = (p.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
    bins = np.minimum((conf * num_bins).astype(np.int64), num_bins - 1)
    total = 0.0
    for b in range(num_bins):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(total)


def brier(probs, labels) -> float:
    p = _probs(probs)
    onehot = np.eye(p.shape[-1])[np.asarray(labels)]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))


def _pairs(m: int, ordered: bool):
    return [(a, b) for a in range(m) for b in range(m) if a != b and (ordered or a < b)]


def kl_diversity(member_probs) -> float:
    p = _probs(member_probs)
    logp = np.log(np.maximum(p, _TINY))
    vals = [
        np.mean(np.sum(p[a] * (logp[a] - logp[b]), axis=-1))
        for a, b in _pairs(p.shape[0], ordered=True)
    ]
    return float(np.mean(vals))


def cos_similarity(member_probs) -> float:
    p = _probs(member_probs)
    unit = p / np.linalg.norm(p, axis=-1, keepdims=True)
    vals = [np.mean(np.sum(unit[a] * unit[b], axis=-1)) for a, b in _pairs(p.shape[0], False)]
    return float(np.mean(vals))


def disagreement(member_probs, labels) -> float:
    """Normalized disagreement; NaN when the ensemble makes no error (undefined ratio)."""
    p = _probs(member_probs)
    pred = p.argmax(axis=-1)  # (M, N)
    raw = np.mean([np.mean(pred[a] != pred[b]) for a, b in _pairs(p.shape[0], False)])
    ens_error = error(p.mean(axis=0), labels)
    return float(raw / ens_error) if ens_error > 0 else float("nan")


def ood_score(probs) -> np.ndarray:
    """Max-softmax OOD score: higher = more likely OOD."""
    return 1.0 - _probs(probs).max(axis=-1)


def _roc_points(scores_in, scores_out):
    """TPR/FPR at each distinct threshold, highest first (positive = OOD)."""
    scores = np.concatenate([scores_out, scores_in])
    is_pos = np.concatenate([np.ones(len(scores_out)), np.zeros(len(scores_in))])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(is_pos)[last_of_tie]
    fp = np.cumsum(1 - is_pos)[last_of_tie]
    return tp, fp, tp / len(scores_out), fp / len(scores_in)


def auroc_from_scores(scores_in, scores_out) -> float:
    tp, fp, tpr, fpr = _roc_points(scores_in, scores_out)
    tpr, fpr = np.r_[0.0, tpr], np.r_[0.0, fpr]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids (ties = ½)


def aupr_from_scores(scores_in, scores_out) -> float:
    tp, fp, tpr, _ = _roc_points(scores_in, scores_out)
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, tpr]) * precision))


def fpr95_from_scores(scores_in, scores_out) -> float:
    _, _, tpr, fpr = _roc_points(scores_in, scores_out)
    return float(fpr[np.argmax(tpr >= 0.95)])


def auroc(probs_in, probs_out) -> float:
    return auroc_from_scores(ood_score(probs_in), ood_score(probs_out))


def aupr(probs_in, probs_out) -> float:
    return aupr_from_scores(ood_score(probs_in), ood_score(probs_out))


def fpr95(probs_in, probs_out) -> float:
    return fpr95_from_scores(ood_score(probs_in), ood_score(probs_out))


def prediction_metrics(member_probs, labels) -> dict[str, dict[str, float]]:
    """Metrics of each member ("0", "1", …) and of the ensemble mean ("ensemble").

    The ensemble entry adds the diversity metrics when M > 1.
    """
    p = _probs(member_probs)
    labels = np.asarray(labels)
    out: dict[str, dict[str, float]] = {}
    ensemble = p.mean(axis=0)
    for name, q in [("ensemble", ensemble)] + [(str(m), p[m]) for m in range(p.shape[0])]:
        out[name] = dict(
            nll=nll(q, labels), error=error(q, labels), ece=ece(q, labels), brier=brier(q, labels)
        )
    if p.shape[0] > 1:
        out["ensemble"].update(
            kl_diversity=kl_diversity(p),
            cos_similarity=cos_similarity(p),
            disagreement=disagreement(p, labels),
        )
    return out


def ood_metrics(member_probs_in, member_probs_out) -> dict[str, float]:
    """OOD metrics of the ensemble-mean prediction (M, N, C) in vs (M, N', C) out."""
    pin, pout = _probs(member_probs_in).mean(axis=0), _probs(member_probs_out).mean(axis=0)
    return dict(auroc=auroc(pin, pout), aupr=aupr(pin, pout), fpr95=fpr95(pin, pout))


# ----------------------------------------------------------------------------------------
# Linear few-shot evaluation (App. A.5).

FEWSHOT_L2_GRID = tuple(2.0**i for i in range(-10, 20))
FEWSHOT_BIAS = 100.0  # constant feature appended after whitening: an almost free bias


def ridge_fit_predict(x_train, y_train, x_test, num_classes: int, l2: float) -> np.ndarray:
    """Scores (N_test, C) of a closed-form ridge regression to targets 2·onehot − 1.

    Features are whitened with the training mean/std (std + 1e-5), a constant
    ``FEWSHOT_BIAS`` column is appended, and w = (XᵀX + l2·I)⁻¹ Xᵀ Y is solved via the
    eigendecomposition of XᵀX (D ≤ N) or of XXᵀ (D > N, then w = Xᵀ (XXᵀ + l2·I)⁻¹ Y).
    """
    x_train = np.asarray(x_train, np.float64)
    x_test = np.asarray(x_test, np.float64)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-5
    xtr = np.c_[(x_train - mean) / std, np.full(len(x_train), FEWSHOT_BIAS)]  # (N, D+1)
    xte = np.c_[(x_test - mean) / std, np.full(len(x_test), FEWSHOT_BIAS)]
    y = 2.0 * np.eye(num_classes)[np.asarray(y_train)] - 1.0  # (N, C)
    n, d = xtr.shape
    if n >= d:
        eigs, vecs = np.linalg.eigh(xtr.T @ xtr)  # (D, D)
        w = vecs @ np.diag(1.0 / (eigs + l2)) @ vecs.T @ xtr.T @ y  # (D, C)
    else:
        eigs, vecs = np.linalg.eigh(xtr @ xtr.T)  # (N, N)
        w = xtr.T @ vecs @ np.diag(1.0 / (eigs + l2)) @ vecs.T @ y  # (D, C)
    return xte @ w


def fewshot_sample(labels, shots: int, seed: int, task: str) -> np.ndarray:
    """Indices of ``shots`` examples per class, drawn from (seed, task, shots)."""
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), shots])
    labels = np.asarray(labels)
    idx = [rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(idx))


def best_l2_index(table) -> int:
    """Column of ``table`` (tasks, l2 grid) of errors with the lowest mean rank across
    tasks (rank 0 = lowest error of a task; ties broken towards the smaller index)."""
    ranks = np.argsort(np.argsort(np.asarray(table), axis=1, kind="stable"), axis=1, kind="stable")
    return int(np.argmin(ranks.mean(axis=0)))


FEWSHOT_L2_SELECTION = CHOICES["eval.fewshot_l2_selection"]  # ("test", "holdout")


def _fewshot_grid_errors(
    ftr, ytr, idx, fte, yte, num_classes: int, mode: str, l2_grid: Sequence[float]
) -> np.ndarray:
    """Error on (fte, yte) of the ridge classifier fit on ftr[:, idx], for each l2."""
    m = ftr.shape[0]
    row = []
    for l2 in l2_grid:
        if mode == "joint":
            xs = ftr[:, idx].transpose(1, 0, 2).reshape(len(idx), -1)  # (k·C, M·D)
            xt = fte.transpose(1, 0, 2).reshape(fte.shape[1], -1)  # (N', M·D)
            scores = ridge_fit_predict(xs, ytr[idx], xt, num_classes, l2)
        else:
            scores = np.mean(
                [
                    ridge_fit_predict(ftr[j, idx], ytr[idx], fte[j], num_classes, l2)
                    for j in range(m)
                ],
                axis=0,
            )
        row.append(np.mean(scores.argmax(axis=-1) != np.asarray(yte)))
    return np.asarray(row)


def fewshot_errors(
    tasks: Mapping[str, tuple],
    shots: Sequence[int],
    seed: int,
    mode: str = "joint",
    l2_grid: Sequence[float] = FEWSHOT_L2_GRID,
    l2_selection: str = "test",
) -> dict[tuple[str, int], float]:
    """Few-shot test error per (task, shots).

    ``tasks[name] = (train_feats (M, N, D), train_labels, test_feats (M, N', D),
    test_labels, num_classes)``. ``mode``: "joint" concatenates the M member features
    into one (N, M·D) vector and fits one classifier; "disjoint" fits one classifier per
    member and averages their scores (App. A.5.1). With M = 1 both are the same.

    One l2 per shot count is chosen from ``l2_grid`` by the mean rank, across all tasks,
    of an error (ties: the smaller l2). ``l2_selection``:

    - "test" (the reference protocol): the test error itself, so the reported error is
      optimistic by the choice of l2;
    - "holdout": the error on the task's training images that were not drawn as shots;
      the test split is then used only for the reported error.
    """
    if mode not in ("joint", "disjoint"):
        raise ValueError(f"few-shot mode {mode!r}; allowed: ['joint', 'disjoint']")
    if l2_selection not in FEWSHOT_L2_SELECTION:
        raise ValueError(
            f"few-shot l2 selection {l2_selection!r}; allowed: {list(FEWSHOT_L2_SELECTION)}"
        )
    test_errs, select_errs = {}, {}  # (task, shots) -> (len(grid),)
    for name, (ftr, ytr, fte, yte, num_classes) in tasks.items():
        ftr, fte = np.asarray(ftr, np.float64), np.asarray(fte, np.float64)
        ytr = np.asarray(ytr)
        for k in shots:
            idx = fewshot_sample(ytr, k, seed, name)
            test_errs[(name, k)] = _fewshot_grid_errors(
                ftr, ytr, idx, fte, yte, num_classes, mode, l2_grid
            )
            if l2_selection == "holdout":
                rest = np.setdiff1d(np.arange(len(ytr)), idx)
                if rest.size == 0:
                    raise ValueError(
                        f"few-shot task {name!r}: {k} shots per class use every "
                        f"training image; l2_selection 'holdout' needs the rest"
                    )
                select_errs[(name, k)] = _fewshot_grid_errors(
                    ftr, ytr, idx, ftr[:, rest], ytr[rest], num_classes, mode, l2_grid
                )
            else:
                select_errs[(name, k)] = test_errs[(name, k)]
    out = {}
    for k in shots:
        best = best_l2_index(np.stack([select_errs[(name, k)] for name in tasks]))
        for name in tasks:
            out[(name, k)] = float(test_errs[(name, k)][best])
    return out
