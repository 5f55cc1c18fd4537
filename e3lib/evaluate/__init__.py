"""The evaluation suite of one run, and deep ensembles of independent runs
(the ``e3 ensemble`` command): ``inference`` (the model on every set), ``records`` (metric
records, results.json), ``ensemble`` (deep ensembles of runs).

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

from e3lib.evaluate.ensemble import (
    ENSEMBLE_KINDS,
    cli_ensemble,
    combine_predictions,
    ensemble_runs,
    load_run,
)
from e3lib.evaluate.inference import evaluate_run, make_predict_fn, predict, run_predictions
from e3lib.evaluate.records import (
    RESULTS_FORMAT,
    SEP,
    records_from_predictions,
    run_cost,
    write_results,
)

__all__ = [
    "ENSEMBLE_KINDS",
    "RESULTS_FORMAT",
    "SEP",
    "cli_ensemble",
    "combine_predictions",
    "ensemble_runs",
    "evaluate_run",
    "load_run",
    "make_predict_fn",
    "predict",
    "records_from_predictions",
    "run_cost",
    "run_predictions",
    "write_results",
]
