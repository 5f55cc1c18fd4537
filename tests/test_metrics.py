"""Metrics against hand-derived values (derivations in comments) and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from e3lib import metrics


def msp_rows(msps, num_classes=10):
    """Probability rows whose max is msp (class 0), the rest spread evenly."""
    rows = [[m] + [(1 - m) / (num_classes - 1)] * (num_classes - 1) for m in msps]
    return np.asarray(rows)


def test_nll_of_ensemble_mean_matches_reference_example():
    # vmoe's ensemble test: M=2 members [.1,.9] and [.2,.8], label 0 → mean [.15,.85],
    # NLL = −log .15; the members alone give −log .1 and −log .2.
    member = np.array([[[0.1, 0.9]], [[0.2, 0.8]]])
    out = metrics.prediction_metrics(member, np.array([0]))
    assert out["ensemble"]["nll"] == pytest.approx(-math.log(0.15))
    assert out["0"]["nll"] == pytest.approx(-math.log(0.1))
    assert out["1"]["nll"] == pytest.approx(-math.log(0.2))


def test_error_counts_argmax_ties_as_first_class():
    # rows: correct (0), wrong (argmax 1 vs 0), tie → argmax 0 vs label 1: wrong → 2/3.
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    assert metrics.error(probs, np.array([0, 0, 1])) == pytest.approx(2 / 3)


def test_ece_two_bins_by_hand():
    # conf .95 → bin ⌊14.25⌋=14; conf .55 → bin 8.
    # bin 14: one right, one wrong → acc .5, conf .95: |.5−.95|·2/4 = .225
    # bin 8: both right → acc 1, conf .55: |1−.55|·2/4 = .225.  ECE = .45
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    assert metrics.ece(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.45)


def test_ece_confidence_one_lands_in_last_bin_and_perfect_is_zero():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.ece(probs, np.array([0, 1])) == 0.0
    # conf 1 and wrong: bin 14 acc 0 conf 1 → ECE 1.
    assert metrics.ece(probs, np.array([1, 0])) == pytest.approx(1.0)


def test_brier_by_hand_and_sklearn():
    # [.7,.2,.1] y=0: .3²+.2²+.1² = .14;  [.1,.1,.8] y=2: .1²+.1²+.2² = .06; mean .10
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 2])
    assert metrics.brier(probs, labels) == pytest.approx(0.10)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=50)
    y = rng.integers(0, 5, 50)
    assert metrics.brier(p, y) == pytest.approx(brier_score_loss(y, p, labels=range(5)))


def test_kl_diversity_paper_formula_by_hand():
    # p1=[.5,.5], p2=[.25,.75]
    # KL(p1‖p2) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3)
    # KL(p2‖p1) = .25 ln(.25/.5) + .75 ln(.75/.5) = .75 ln 1.5 − .25 ln 2
    # averaged over the ordered pairs (1,2), (2,1).
    member = np.array([[[0.5, 0.5]], [[0.25, 0.75]]])
    expected = (0.5 * math.log(4 / 3) + 0.75 * math.log(1.5) - 0.25 * math.log(2)) / 2
    assert metrics.kl_diversity(member) == pytest.approx(expected)
    assert metrics.kl_diversity(np.array([[[0.3, 0.7]], [[0.3, 0.7]]])) == pytest.approx(0.0)


def test_cos_similarity_by_hand():
    # [1,0]·[.6,.8] = .6, both unit norm → .6; identical members → 1.
    member = np.array([[[1.0, 0.0]], [[0.6, 0.8]]])
    assert metrics.cos_similarity(member) == pytest.approx(0.6)
    assert metrics.cos_similarity(np.array([[[0.2, 0.8]]] * 3)) == pytest.approx(1.0)


def test_normalized_disagreement_by_hand():
    # member argmaxes: m0 = [0,1,1,0], m1 = [0,0,1,1] → disagree on 2/4 inputs.
    # ensemble mean: ex0 → 0, ex1 [.4,.6]+[.9,.1] → [.65,.35] → 0, ex2 → 1,
    # ex3 [.9,.1]+[.3,.7] → [.6,.4] → 0. Labels [0,0,1,1] → ensemble error 1/4.
    # normalized disagreement = .5 / .25 = 2.
    m0 = [[0.9, 0.1], [0.4, 0.6], [0.1, 0.9], [0.9, 0.1]]
    m1 = [[0.8, 0.2], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]
    member = np.array([m0, m1])
    assert metrics.disagreement(member, np.array([0, 0, 1, 1])) == pytest.approx(2.0)


def test_ood_metrics_by_hand():
    # scores s = 1 − msp: in-distribution {.1, .4}, OOD {.35, .8}.
    # AUROC: OOD>in for (.35,.1), (.8,.1), (.8,.4); not (.35,.4) → 3/4.
    # AP: ranked .8(out) .4(in) .35(out) .1(in): precision at the two OOD hits
    #     1/1 and 2/3, recall steps .5 each → .5·1 + .5·2/3 = 5/6.
    # FPR@95: all OOD flagged first at threshold .35, where 1 of 2 in-dist is flagged → .5
    pin, pout = msp_rows([0.9, 0.6]), msp_rows([0.65, 0.2])
    assert metrics.auroc(pin, pout) == pytest.approx(0.75)
    assert metrics.aupr(pin, pout) == pytest.approx(5 / 6)
    assert metrics.fpr95(pin, pout) == pytest.approx(0.5)


def test_ood_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(1)
    # msp rounded to 2 decimals so that many scores tie.
    pin = msp_rows(np.round(rng.uniform(0.3, 1.0, 200), 2))
    pout = msp_rows(np.round(rng.uniform(0.15, 0.9, 150), 2))
    y = np.r_[np.zeros(200), np.ones(150)]
    s = np.r_[metrics.ood_score(pin), metrics.ood_score(pout)]
    assert metrics.auroc(pin, pout) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.aupr(pin, pout) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_fpr95_matches_sklearn_roc_curve():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(2)
    pin = msp_rows(rng.uniform(0.3, 1.0, 300))
    pout = msp_rows(rng.uniform(0.15, 0.9, 100))
    y = np.r_[np.zeros(300), np.ones(100)]
    fpr, tpr, _ = roc_curve(
        y, np.r_[metrics.ood_score(pin), metrics.ood_score(pout)], drop_intermediate=False
    )
    assert metrics.fpr95(pin, pout) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_prediction_metrics_keys_and_single_member():
    out = metrics.prediction_metrics(np.array([[[0.7, 0.3], [0.2, 0.8]]]), np.array([0, 0]))
    assert set(out) == {"ensemble", "0"}
    assert "kl_diversity" not in out["ensemble"]  # diversity needs M > 1
    assert out["ensemble"] == out["0"]
    assert set(out["ensemble"]) <= set(metrics.METRICS)


def test_ridge_closed_form_equals_direct_solve_both_branches():
    rng = np.random.default_rng(3)
    for n, d in [(40, 5), (6, 20)]:  # N ≥ D uses XᵀX, D > N uses XXᵀ
        x, xt = rng.normal(size=(n, d)), rng.normal(size=(7, d))
        y = rng.integers(0, 3, n)
        got = metrics.ridge_fit_predict(x, y, xt, 3, l2=0.5)
        mean, std = x.mean(0), x.std(0) + 1e-5
        a = np.c_[(x - mean) / std, np.full(n, 100.0)]
        b = np.c_[(xt - mean) / std, np.full(7, 100.0)]
        w = np.linalg.solve(a.T @ a + 0.5 * np.eye(d + 1), a.T @ (2 * np.eye(3)[y] - 1))
        np.testing.assert_allclose(got, b @ w, rtol=1e-8, atol=1e-8)


def test_fewshot_separable_task_is_solved_and_modes_agree_for_one_member():
    # Class c has feature mean 5·e_c plus small noise: linearly separable → error 0.
    rng = np.random.default_rng(4)

    def feats(labels):
        return (5 * np.eye(3)[labels] + 0.1 * rng.normal(size=(len(labels), 3)))[None]

    ytr, yte = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    tasks = {"t": (feats(ytr), ytr, feats(yte), yte, 3)}
    joint = metrics.fewshot_errors(tasks, [1, 5], seed=0, mode="joint")
    disjoint = metrics.fewshot_errors(tasks, [1, 5], seed=0, mode="disjoint")
    assert joint == disjoint
    assert joint[("t", 5)] == 0.0


def test_fewshot_l2_selection_test_vs_holdout(monkeypatch):
    # A stand-in classifier whose prediction under l2 = 1 is feature 1 and under l2 = 2 is
    # feature 2 (feature 0 is the label). On the training images feature 1 is right and
    # feature 2 wrong; on the test images the reverse. Selecting on the test split picks
    # l2 = 2 (test error 0); selecting on the held-out training images picks l2 = 1, whose
    # test error is 1.
    def stub(x_train, y_train, x_test, num_classes, l2):
        return np.eye(num_classes)[x_test[:, int(l2)].astype(int)]

    monkeypatch.setattr(metrics, "ridge_fit_predict", stub)
    ytr, yte = np.repeat(np.arange(2), 6), np.repeat(np.arange(2), 3)
    train = np.stack([ytr, ytr, 1 - ytr], axis=1)[None].astype(float)  # (M=1, N, 3)
    test = np.stack([yte, 1 - yte, yte], axis=1)[None].astype(float)
    tasks = {"t": (train, ytr, test, yte, 2)}
    pick = lambda sel: metrics.fewshot_errors(
        tasks,
        [2],
        0,
        l2_grid=[1.0, 2.0],  # noqa: E731
        l2_selection=sel,
    )[("t", 2)]
    assert pick("test") == 0.0
    assert pick("holdout") == 1.0
    with pytest.raises(ValueError, match="allowed: \\['test', 'holdout'\\]"):
        pick("val")
    with pytest.raises(ValueError, match="needs the rest"):  # 6 shots = every image
        metrics.fewshot_errors(tasks, [6], 0, l2_grid=[1.0], l2_selection="holdout")


def test_fewshot_sample_draws_k_per_class_deterministically():
    labels = np.repeat(np.arange(4), 10)
    a = metrics.fewshot_sample(labels, 3, seed=0, task="x")
    assert np.array_equal(a, metrics.fewshot_sample(labels, 3, seed=0, task="x"))
    assert np.bincount(labels[a]).tolist() == [3, 3, 3, 3]
    assert not np.array_equal(a, metrics.fewshot_sample(labels, 3, seed=1, task="x"))


def test_fewshot_l2_is_chosen_by_mean_rank_across_tasks():
    # errors (task × l2): a [.1, .3], b [.4, .2] → ranks a [0,1], b [1,0]: mean [.5,.5],
    # tie → the first l2.  Add c [.5, .1] → ranks [1,0]: mean [2/3, 1/3] → the second.
    assert metrics.best_l2_index([[0.1, 0.3], [0.4, 0.2]]) == 0
    assert metrics.best_l2_index([[0.1, 0.3], [0.4, 0.2], [0.5, 0.1]]) == 1
    # Rank, not mean error: a [0, .9], b [.3, .2], c [.3, .2] → mean errors [.2, .43]
    # would pick l2₀, mean ranks [2/3, 1/3] pick l2₁.
    assert metrics.best_l2_index([[0, 0.9], [0.3, 0.2], [0.3, 0.2]]) == 1
