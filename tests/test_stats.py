"""Seed statistics and tests (e3lib.stats) on tiny samples with hand-derived values."""

import math

import numpy as np
import pytest
import xarray as xr

from e3lib import stats

FLAGS = {
    "flag_values": np.array([0, 1, 2, 3], dtype=np.int8),
    "flag_meanings": "ok missing diverged not_requested",
}


def test_seed_stats_mean_stderr_and_counts():
    # cell A: 1, 2, 3 (all ok) → mean 2, std 1, stderr 1/√3; cell B: 4, NaN (missing), not
    # requested → n 1, n_req 2, no stderr, incomplete
    values = xr.DataArray([[1.0, 2, 3], [4.0, np.nan, np.nan]], dims=("cell", "seed"))
    status = xr.DataArray([[0, 0, 0], [0, 1, 3]], dims=("cell", "seed"), attrs=FLAGS)
    s = stats.seed_stats(values, status)
    assert s["mean"].values.tolist() == [2.0, 4.0]
    assert s["stderr"].values[0] == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(s["stderr"].values[1])
    assert s["n"].values.tolist() == [3, 1] and s["n_req"].values.tolist() == [3, 2]
    assert s["complete"].values.tolist() == [True, False]
    assert stats.cell_seed_values(values[1]).tolist() == [4.0]


def test_seed_stats_needs_the_status_flags():
    values = xr.DataArray([[1.0, 2]], dims=("cell", "seed"))
    with pytest.raises(ValueError, match="flag_values/flag_meanings"):
        stats.seed_stats(values, xr.DataArray([[0, 0]], dims=("cell", "seed")))


def test_welch_hand_value():
    # a = 1,2,3; b = 4,5,6: d = -3, se = √(1/3 + 1/3) = 0.8165, t = -3.674; ν = 4
    r = stats.welch_test([1, 2, 3], [4, 5, 6])
    assert r.statistic == pytest.approx(-3.6742, abs=1e-4) and r.df == pytest.approx(4.0)
    assert r.p == pytest.approx(0.0213, abs=5e-4) and r.outcome == stats.SIGNIFICANT
    assert r.n == (3, 3)
    # one-sided "a < b": half the two-sided p; "a > b": 1 − that
    assert stats.welch_test([1, 2, 3], [4, 5, 6], "less").p == pytest.approx(0.01066, abs=3e-4)
    assert stats.welch_test([1, 2, 3], [4, 5, 6], "greater").outcome == stats.NOT_SIGNIFICANT
    # shift: a − b against −3 exactly → t = 0, two-sided p = 1
    assert stats.welch_test([1, 2, 3], [4, 5, 6], shift=-3).p == pytest.approx(1.0)


def test_welch_degenerate_is_not_computable():
    one = stats.welch_test([1.0], [4, 5, 6])
    assert one.outcome == stats.NOT_COMPUTABLE and "fewer than 2" in one.reason
    assert math.isnan(stats.welch_p([1.0], [4, 5, 6]))
    flat = stats.welch_test([1, 1, 1], [2, 2, 2])  # zero variance on both sides: no se
    assert flat.outcome == stats.NOT_COMPUTABLE and "zero variance" in flat.reason
    # NaN seed values are dropped before counting: 2 finite values remain on side a
    assert stats.welch_test([1, np.nan, 3], [4, 5, 6]).n == (2, 3)
    assert stats.welch_test([np.nan, np.nan, 3], [4, 5, 6]).outcome == stats.NOT_COMPUTABLE


def test_tost_tight_equal_samples_are_equivalent():
    # a = 1.00 1.01 0.99 (s² = 1e-4), b = 1.00 1.02 0.98 (s² = 4e-4): d = 0,
    # se = √(1e-4/3 + 4e-4/3) = 0.012910; t = ±0.1/se = ±7.746;
    # ν = (1.6667e-4)² / ((3.333e-5)²/2 + (1.3333e-4)²/2) = 2.941 → p = 0.0024 < 0.05
    r = stats.tost([1.0, 1.01, 0.99], [1.0, 1.02, 0.98], margin=0.1)
    assert abs(r.statistic) == pytest.approx(7.746, abs=1e-3)
    assert r.df == pytest.approx(2.941, abs=1e-3)
    assert r.p < 0.01 and r.outcome == stats.EQUIVALENT and r.margin == 0.1


def test_tost_wide_samples_are_inconclusive():
    # a = 0.5 1.0 1.5 (s² = 0.25), b = 0.6 1.1 1.4 (s² = 0.16333): d = -0.0333,
    # se = √(0.25/3 + 0.16333/3) = 0.37118; t_low = (d + 0.1)/se = 0.1796 → p ≈ 0.43
    r = stats.tost([0.5, 1.0, 1.5], [0.6, 1.1, 1.4], margin=0.1)
    assert r.statistic == pytest.approx(0.1796, abs=1e-3)
    assert r.outcome == stats.INCONCLUSIVE and r.p > 0.4


def test_tost_far_apart_is_different_beyond_margin():
    # d = -0.3, se = √(2·1e-4/3) = 0.008165: (d + 0.1)/se = -24.49, far below −t_crit
    r = stats.tost([0.5, 0.51, 0.49], [0.8, 0.81, 0.79], margin=0.1)
    assert r.statistic == pytest.approx(-24.49, abs=0.01)
    assert r.outcome == stats.DIFFERENT and r.p_beyond < 1e-3


def test_tost_degenerate_and_bad_margin():
    same = stats.tost([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], margin=0.1)
    assert same.outcome == stats.NOT_COMPUTABLE  # never a pass on zero variance
    assert stats.tost([1.0], [1.0, 1.1], margin=0.1).outcome == stats.NOT_COMPUTABLE
    with pytest.raises(ValueError, match="margin must be > 0"):
        stats.tost([1, 2], [1, 2], margin=0.0)


def test_spearman_and_nan():
    # x ranks 1.5 1.5 3.5 3.5 5.5 5.5 (ties), y ranks 5 6 3 4 1 2: Σ dxdy = -16,
    # Σ dx² = 16, Σ dy² = 17.5 → ρ = -16/√(16·17.5) = -0.9562
    r = stats.spearman_test({0: [3.0, 3.1], 1: [2.0, 2.1], 2: [1.0, 1.1]})
    assert r.statistic == pytest.approx(-0.9562, abs=1e-3)
    assert r.outcome == stats.SIGNIFICANT
    const = stats.spearman_test({0: [1.0, 1.0], 1: [1.0, 1.0]})
    assert const.outcome == stats.NOT_COMPUTABLE  # NaN ρ is never a pass
    assert stats.spearman_test({0: [1.0]}).outcome == stats.NOT_COMPUTABLE


def test_monotone_is_deterministic():
    up = stats.monotone({1: [2.0, 2.0], 2: [3.0], 4: [5.0, 5.0, 5.0]}, "increasing")
    assert up.outcome == stats.MONOTONE and up.n == (2, 1, 3)
    assert stats.monotone({1: [2.0], 2: [2.0]}, "increasing").outcome == stats.NOT_MONOTONE
    assert stats.monotone({1: [3.0], 2: [2.0]}, "decreasing").outcome == stats.MONOTONE
    noisy = stats.monotone({1: [2.0, 2.5], 2: [3.0]}, "increasing")
    assert noisy.outcome == stats.NOT_COMPUTABLE and "not deterministic" in noisy.reason
    assert stats.monotone({1: [2.0]}, "increasing").outcome == stats.NOT_COMPUTABLE


def test_describe_names_test_statistic_n_and_margin():
    text = stats.tost([1.0, 1.01, 0.99], [1.0, 1.02, 0.98], margin=0.1).describe()
    assert text.startswith("TOST") and "margin ±0.1" in text and "(n = 3, 3)" in text
    assert "not computable (zero variance" in stats.welch_test([1, 1], [2, 2]).describe()
