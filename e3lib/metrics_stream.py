"""Evaluation metrics accumulated batch by batch, so memory does not grow with the split.

Notation: B examples in a batch, C classes, M members, D feature size, N examples seen.
The definitions are those of ``e3lib.metrics`` (the in-memory metrics, which the tests
compare against on the same predictions); here each is a sum kept per batch:

- nll, error, brier: Σ over examples, divided by N at the end;
- ece: per confidence bin b (15 equal-width bins), the count, Σ conf and Σ correct;
  ECE = Σ_b |Σ_b correct − Σ_b conf| / N (= Σ_b |B_b|/N · |acc_b − conf_b|);
- kl_diversity, cos_similarity, disagreement: Σ over examples per member pair;
- OOD (auroc, aupr, fpr95): the max-softmax score s = 1 − max_c p̄_c of every example is
  stored (8 bytes per example; exact metrics, no histogram);
- few-shot: only the pre-logits features the linear probe reads (the drawn shots of each
  shot count, for l2 selection "test"; the whole pool for "holdout") and the task's test
  features.

``merge(other)`` folds in the accumulator of other examples (another process's share of
the split): sums and bin counts add, OOD scores and few-shot rows are pooled. It is
associative, and the merged accumulator gives the metrics of the union of the examples
(tests/test_metrics_stream.py); ``merge_all`` merges a list in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from e3lib import metrics as m

_TINY = 1e-12


class _Sums:
    def __init__(self, bins: int):
        self.bins = bins
        self.n = 0
        self.nll = self.err = self.brier = 0.0
        self.count = np.zeros(bins, np.int64)
        self.conf = np.zeros(bins)
        self.correct = np.zeros(bins)

    def update(self, p: np.ndarray, labels: np.ndarray) -> None:  # p (B, C)
        rows = np.arange(len(labels))
        conf, pred = p.max(axis=-1), p.argmax(axis=-1)
        correct = (pred == labels).astype(np.float64)
        self.n += len(labels)
        self.nll += float(-np.sum(np.log(np.maximum(p[rows, labels], _TINY))))
        self.err += float(np.sum(1.0 - correct))
        sq = np.sum(p**2, axis=-1) - 2 * p[rows, labels] + 1.0  # Σ_c (p − y)²
        self.brier += float(np.sum(sq))
        b = np.minimum((conf * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(b, minlength=self.bins)
        self.conf += np.bincount(b, conf, minlength=self.bins)
        self.correct += np.bincount(b, correct, minlength=self.bins)

    def merge(self, o: _Sums) -> None:
        self.n += o.n
        self.nll += o.nll
        self.err += o.err
        self.brier += o.brier
        self.count += o.count
        self.conf += o.conf
        self.correct += o.correct

    def result(self) -> dict[str, float]:
        n = self.n
        return dict(
            nll=self.nll / n,
            error=self.err / n,
            ece=float(np.sum(np.abs(self.correct - self.conf)) / n),
            brier=self.brier / n,
        )


class PredictionAccumulator:
    """Streaming ``metrics.prediction_metrics``: ``update(member_probs (M, B, C), labels
    (B,), valid (B,) or None)``; ``result()`` has the same keys and values."""

    def __init__(self, num_members: int, num_bins: int = m.ECE_BINS):
        self.members = num_members
        self.sums = {
            name: _Sums(num_bins) for name in ["ensemble"] + [str(i) for i in range(num_members)]
        }
        self.ordered = [(a, b) for a in range(num_members) for b in range(num_members) if a != b]
        self.unordered = [(a, b) for a, b in self.ordered if a < b]
        self.kl = np.zeros(len(self.ordered))
        self.cos = np.zeros(len(self.unordered))
        self.disagree = np.zeros(len(self.unordered))

    def update(self, member_probs, labels, valid=None) -> None:
        p = np.asarray(member_probs, np.float64)  # (M, B, C)
        labels = np.asarray(labels)
        if valid is not None:
            valid = np.asarray(valid, bool)
            p, labels = p[:, valid], labels[valid]
        if not len(labels):
            return
        self.sums["ensemble"].update(p.mean(axis=0), labels)
        for i in range(self.members):
            self.sums[str(i)].update(p[i], labels)
        if self.members > 1:
            logp = np.log(np.maximum(p, _TINY))
            unit = p / np.linalg.norm(p, axis=-1, keepdims=True)
            pred = p.argmax(axis=-1)  # (M, B)
            for j, (a, b) in enumerate(self.ordered):
                self.kl[j] += np.sum(p[a] * (logp[a] - logp[b]))
            for j, (a, b) in enumerate(self.unordered):
                self.cos[j] += np.sum(unit[a] * unit[b])
                self.disagree[j] += np.sum(pred[a] != pred[b])

    def merge(self, other: PredictionAccumulator) -> None:
        for name, s in self.sums.items():
            s.merge(other.sums[name])
        self.kl += other.kl
        self.cos += other.cos
        self.disagree += other.disagree

    def result(self) -> dict[str, dict[str, float]]:
        out = {name: s.result() for name, s in self.sums.items()}
        if self.members > 1:
            n = self.sums["ensemble"].n
            ens_error = out["ensemble"]["error"]
            raw = float(np.mean(self.disagree / n))
            out["ensemble"].update(
                kl_diversity=float(np.mean(self.kl / n)),
                cos_similarity=float(np.mean(self.cos / n)),
                disagreement=raw / ens_error if ens_error > 0 else float("nan"),
            )
        return out


class OODAccumulator:
    """Streaming ``metrics.ood_metrics``: the scores of in- and out-of-distribution
    examples (ensemble-mean max-softmax) are kept; the metrics are exact."""

    def __init__(self):
        self.scores = {"in": [], "out": []}

    def update(self, which: str, member_probs, valid=None) -> None:
        if which not in self.scores:
            raise ValueError(f"OOD side {which!r}; allowed: ['in', 'out']")
        p = np.asarray(member_probs, np.float64).mean(axis=0)  # (B, C)
        s = m.ood_score(p)
        self.scores[which].append(s if valid is None else s[np.asarray(valid, bool)])

    def merge(self, other: OODAccumulator) -> None:
        for k in self.scores:
            self.scores[k] += other.scores[k]

    def result(self) -> dict[str, float]:
        s_in, s_out = (np.concatenate(self.scores[k]) for k in ("in", "out"))
        return dict(
            auroc=m.auroc_from_scores(s_in, s_out),
            aupr=m.aupr_from_scores(s_in, s_out),
            fpr95=m.fpr95_from_scores(s_in, s_out),
        )


class FewShotFeatures:
    """The pool features of one few-shot task that the probe will read: the shots drawn
    for each count in ``shots`` (``l2_selection='test'``) or all (``'holdout'``)."""

    def __init__(
        self, task: str, pool_labels, shots: Sequence[int], seed: int, l2_selection: str = "test"
    ):
        self.task, self.labels = task, np.asarray(pool_labels)
        self.shots, self.seed, self.l2_selection = tuple(shots), seed, l2_selection
        if l2_selection == "holdout":
            self.needed = np.arange(len(self.labels))
        else:
            self.needed = np.unique(
                np.concatenate([m.fewshot_sample(self.labels, k, seed, task) for k in self.shots])
            )
        self._rows: dict[int, np.ndarray] = {}

    def update(self, features, indices) -> None:
        """``features`` (M, B, D) of pool examples ``indices`` (B,)."""
        keep = np.isin(indices, self.needed)
        for j in np.flatnonzero(keep):
            self._rows[int(indices[j])] = np.asarray(features[:, j], np.float64)

    def merge(self, other: FewShotFeatures) -> None:
        if (other.task, other.shots, other.seed) != (self.task, self.shots, self.seed):
            raise ValueError(f"few-shot task {self.task!r}: merging a different task or draw")
        self._rows.update(other._rows)

    def subset(self) -> np.ndarray:
        missing = set(self.needed.tolist()) - set(self._rows)
        if missing:
            raise ValueError(
                f"few-shot task {self.task!r}: features of {len(missing)} "
                f"drawn pool examples were never given"
            )
        return np.stack([self._rows[int(i)] for i in self.needed], axis=1)  # (M, n, D)


class TestFeatures:
    """Features and labels of a few-shot task's test examples, kept by example index so
    that shares read by different processes pool in one order."""

    __test__ = False  # (not a pytest class)

    def __init__(self):
        self._rows: dict[int, tuple[np.ndarray, int]] = {}

    def update(self, features, labels, indices) -> None:
        """``features`` (M, B, D), ``labels`` (B,) of test examples ``indices`` (B,)."""
        for j, i in enumerate(np.asarray(indices).tolist()):
            self._rows[int(i)] = (np.asarray(features[:, j], np.float64), int(labels[j]))

    def merge(self, other: TestFeatures) -> None:
        self._rows.update(other._rows)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(features (M, N', D), labels (N',)) in example order."""
        order = sorted(self._rows)
        feats = np.stack([self._rows[i][0] for i in order], axis=1)
        return feats, np.asarray([self._rows[i][1] for i in order])


def merge_all(accumulators: Sequence):
    """The first accumulator with the others merged into it, in order."""
    first, *rest = accumulators
    for other in rest:
        first.merge(other)
    return first


def fewshot_errors(
    tasks: Mapping[str, tuple], mode: str = "joint", l2_grid: Sequence[float] = m.FEWSHOT_L2_GRID
) -> dict[tuple[str, int], float]:
    """``metrics.fewshot_errors`` from collected features: ``tasks[name] =
    (FewShotFeatures, test_feats (M, N', D), test_labels, num_classes)``."""
    collectors = [t[0] for t in tasks.values()]
    selection = {c.l2_selection for c in collectors}
    if len(selection) != 1:
        raise ValueError(f"few-shot tasks mix l2 selections {sorted(selection)}")
    shots = collectors[0].shots
    if selection == {"holdout"}:
        return m.fewshot_errors(
            {
                name: (c.subset(), c.labels, fte, yte, nc)
                for name, (c, fte, yte, nc) in tasks.items()
            },
            shots,
            collectors[0].seed,
            mode,
            l2_grid,
            "holdout",
        )
    errs = {}
    for name, (c, fte, yte, nc) in tasks.items():
        ftr, ysub = c.subset(), c.labels[c.needed]
        fte = np.asarray(fte, np.float64)
        for k in shots:
            idx = np.searchsorted(c.needed, m.fewshot_sample(c.labels, k, c.seed, name))
            errs[(name, k)] = m._fewshot_grid_errors(ftr, ysub, idx, fte, yte, nc, mode, l2_grid)
    out = {}
    for k in shots:
        best = m.best_l2_index(np.stack([errs[(name, k)] for name in tasks]))
        for name in tasks:
            out[(name, k)] = float(errs[(name, k)][best])
    return out
