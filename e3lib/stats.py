"""Seed statistics and the hypothesis tests the report uses: one home for both.

Notation: S seeds; a cell's seed values x (n finite values of the S requested); for two
cells a and b: means x̄_a, x̄_b, sample variances s²_a, s²_b (ddof=1), d = x̄_a − x̄_b,
se = √(s²_a/n_a + s²_b/n_b), Welch–Satterthwaite degrees of freedom
ν = se⁴ / ((s²_a/n_a)²/(n_a−1) + (s²_b/n_b)²/(n_b−1)), δ the equivalence margin.

Tests (each returns a ``TestResult``; its ``outcome`` is one of OUTCOMES):

``welch_test``  Welch's t-test (unequal variances): t = (d − shift)/se, p from Student's
                t with ν df, two-sided or one-sided ("less": a < b, "greater": a > b).
``tost``        two one-sided Welch tests for equivalence within ±δ: H0 |d| ≥ δ.
                t_low = (d + δ)/se, p_low = P(T > t_low); t_up = (d − δ)/se,
                p_up = P(T < t_up); p = max(p_low, p_up); "equivalent" iff p < α.
                Also ``p_beyond``: the test that |d| exceeds δ (side of the observed d,
                two-sided), which tells "different beyond the margin" from "inconclusive".
``spearman_test`` Spearman ρ over (axis value, seed value) pairs, two-sided p.
``monotone``    deterministic values (one per level, no seeds): strictly increasing or
                decreasing over the sorted levels; no p-value.

Degenerate input is never a pass: n < 2 on a side, zero variance on both sides (se = 0),
or a NaN statistic gives outcome ``NOT_COMPUTABLE``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import stats as sps

SIGNIFICANT, NOT_SIGNIFICANT = "significant", "not significant"
EQUIVALENT, DIFFERENT, INCONCLUSIVE = "equivalent", "different beyond margin", "inconclusive"
MONOTONE, NOT_MONOTONE = "monotone", "not monotone"
NOT_COMPUTABLE = "not computable"
OUTCOMES = (
    SIGNIFICANT,
    NOT_SIGNIFICANT,
    EQUIVALENT,
    DIFFERENT,
    INCONCLUSIVE,
    MONOTONE,
    NOT_MONOTONE,
    NOT_COMPUTABLE,
)


@dataclass(frozen=True)
class TestResult:
    """One test's result, with what a reader needs to judge it."""

    test: str  # e.g. "one-sided Welch t-test (a < b)"
    statistic_name: str  # "t", "ρ", ...
    statistic: float
    p: float
    n: tuple[int, ...]  # values per side (or per level)
    outcome: str
    alpha: float = 0.05
    df: float = math.nan
    margin: float | None = None  # equivalence margin δ, in the metric's stored units
    p_beyond: float = math.nan  # TOST only: p of |d| > δ
    reason: str = ""  # why not computable

    @classmethod
    def not_computable(
        cls, test: str, statistic_name: str, n: tuple[int, ...], reason: str, **known: float | None
    ) -> TestResult:
        """A result whose outcome is ``NOT_COMPUTABLE``; ``known``: statistic, p, alpha, df,
        margin as far as they were computed (NaN / None otherwise)."""
        fields = {"statistic": math.nan, "p": math.nan, **known}
        return cls(test, statistic_name, n=n, outcome=NOT_COMPUTABLE, reason=reason, **fields)

    @property
    def computable(self) -> bool:
        return self.outcome != NOT_COMPUTABLE

    def describe(self) -> str:
        """``t = -3.67, df = 4.0, p = 0.0107 (n = 3, 3)``; margins and reasons included."""
        n = ", ".join(str(k) for k in self.n)
        if not self.computable:
            return f"{self.test}: not computable ({self.reason}; n = {n})"
        parts = [f"{self.statistic_name} = {self.statistic:.3g}"]
        if math.isfinite(self.df):
            parts.append(f"df = {self.df:.3g}")
        if math.isfinite(self.p):
            parts.append(f"p = {self.p:.3g}")
        if self.margin is not None:
            parts.append(f"margin ±{self.margin:.3g}")
        if math.isfinite(self.p_beyond):
            parts.append(f"p(|d| > margin) = {self.p_beyond:.3g}")
        return f"{self.test}: {', '.join(parts)} (n = {n})"


# --------------------------------------------------------------------------- seed statistics


def _not_requested_flag(status: xr.DataArray) -> int:
    """The status code of "not requested", from the variable's CF flag attributes."""
    try:
        meanings = str(status.attrs["flag_meanings"]).split()
        values = [int(v) for v in np.atleast_1d(status.attrs["flag_values"])]
    except KeyError:
        raise ValueError(
            "status variable lacks its CF flag_values/flag_meanings attributes "
            "(was it written by `e3 aggregate`?)"
        ) from None
    if "not_requested" not in meanings:
        raise ValueError(f"status flag_meanings {meanings} have no 'not_requested'")
    return values[meanings.index("not_requested")]


def seed_stats(values: xr.DataArray, status: xr.DataArray) -> xr.Dataset:
    """Mean, standard error and seed counts of ``values`` over the ``seed`` dim.

    ``n``      seeds with a finite value
    ``n_req``  seeds the sweep requested for the cell (status != not_requested)
    ``stderr`` std(ddof=1)/√n; NaN where n < 2 (one seed has no spread estimate)
    ``complete`` n == n_req (a cell with fewer seeds than requested is flagged)
    """
    finite = np.isfinite(values)
    n = finite.sum("seed")
    mean = values.where(finite).mean("seed", skipna=True)
    std = values.where(finite).std("seed", ddof=1, skipna=True)
    stderr = (std / np.sqrt(n)).where(n >= 2)
    n_req = (status != _not_requested_flag(status)).sum("seed")
    n_req = n_req.broadcast_like(n)
    return xr.Dataset(
        {
            "mean": mean,
            "stderr": stderr,
            "n": n,
            "n_req": n_req,
            "complete": (n == n_req) & (n_req > 0),
        }
    )


def cell_seed_values(values: xr.DataArray) -> np.ndarray:
    """Finite seed values of one cell (a 1-D DataArray over ``seed``)."""
    arr = np.asarray(values.values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


# --------------------------------------------------------------------------- two-sample tests


def _finite(x: Sequence[float]) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def _welch_parts(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, str]:
    """(d, se, ν, reason); reason non-empty when the test is degenerate."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan, "fewer than 2 values on a side"
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # exact: var() of equal floats may be 1e-33
        return math.nan, 0.0, math.nan, "zero variance on both sides"
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(a.mean() - b.mean()), se, float(df), ""


_ALTERNATIVE = {"two-sided": "two-sided", "less": "one-sided, a < b", "greater": "one-sided, a > b"}


def welch_test(
    a: Sequence[float],
    b: Sequence[float],
    alternative: str = "two-sided",
    alpha: float = 0.05,
    shift: float = 0.0,
) -> TestResult:
    """Welch's t-test of mean(a) − mean(b) against ``shift`` (default 0)."""
    if alternative not in _ALTERNATIVE:
        raise ValueError(f"alternative {alternative!r}; allowed: {list(_ALTERNATIVE)}")
    a, b = _finite(a), _finite(b)
    name = f"Welch t-test ({_ALTERNATIVE[alternative]})"
    d, se, df, reason = _welch_parts(a, b)
    if reason:
        return TestResult.not_computable(name, "t", (len(a), len(b)), reason, alpha=alpha)
    t = (d - shift) / se
    p = {
        "two-sided": 2 * sps.t.sf(abs(t), df),
        "less": sps.t.cdf(t, df),
        "greater": sps.t.sf(t, df),
    }[alternative]
    if not math.isfinite(p):
        return TestResult.not_computable(
            name, "t", (len(a), len(b)), "NaN statistic", statistic=t, alpha=alpha, df=df
        )
    return TestResult(
        name,
        "t",
        float(t),
        float(min(p, 1.0)),
        (len(a), len(b)),
        SIGNIFICANT if p < alpha else NOT_SIGNIFICANT,
        alpha,
        df,
    )


def welch_p(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """p-value of Welch's t-test; NaN where the test is not computable."""
    return welch_test(a, b, alternative).p


def tost(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> TestResult:
    """Two one-sided Welch tests: are the means of a and b within ±margin?"""
    if not margin > 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin!r}")
    a, b = _finite(a), _finite(b)
    name = "TOST (two one-sided Welch t-tests)"
    d, se, df, reason = _welch_parts(a, b)
    if reason:
        return TestResult.not_computable(
            name, "t", (len(a), len(b)), reason, alpha=alpha, margin=margin
        )
    t_low, t_up = (d + margin) / se, (d - margin) / se
    p_low, p_up = float(sps.t.sf(t_low, df)), float(sps.t.cdf(t_up, df))
    p, t = (p_low, t_low) if p_low >= p_up else (p_up, t_up)  # the binding side
    # |d| > δ: one-sided on the side of the observed difference, doubled (two-sided)
    beyond = sps.t.sf(t_up, df) if d >= 0 else sps.t.cdf(t_low, df)
    p_beyond = float(min(1.0, 2 * beyond))
    if not (math.isfinite(p) and math.isfinite(p_beyond)):
        return TestResult.not_computable(
            name,
            "t",
            (len(a), len(b)),
            "NaN statistic",
            statistic=t,
            alpha=alpha,
            df=df,
            margin=margin,
        )
    outcome = EQUIVALENT if p < alpha else DIFFERENT if p_beyond < alpha else INCONCLUSIVE
    return TestResult(
        name, "t", float(t), p, (len(a), len(b)), outcome, alpha, df, margin, p_beyond
    )


# --------------------------------------------------------------------------- trends


def spearman_test(levels: Mapping[float, Sequence[float]], alpha: float = 0.05) -> TestResult:
    """Spearman ρ over all (level, value) pairs; two-sided p."""
    xs = np.concatenate([np.full(len(_finite(v)), x, dtype=float) for x, v in levels.items()])
    ys = np.concatenate([_finite(v) for v in levels.values()])
    n = tuple(len(_finite(v)) for v in levels.values())
    name = "Spearman rank correlation"
    if len(ys) < 3 or len(set(xs.tolist())) < 2:
        return TestResult.not_computable(
            name, "ρ", n, "fewer than 3 values or 2 levels", alpha=alpha
        )
    with warnings.catch_warnings():  # constant input: scipy warns and returns NaN
        warnings.simplefilter("ignore")
        res = sps.spearmanr(xs, ys)
    rho, p = float(res.statistic), float(res.pvalue)
    if not (math.isfinite(rho) and math.isfinite(p)):
        return TestResult.not_computable(
            name, "ρ", n, "NaN statistic (constant values)", statistic=rho, p=p, alpha=alpha
        )
    return TestResult(name, "ρ", rho, p, n, SIGNIFICANT if p < alpha else NOT_SIGNIFICANT, alpha)


def monotone(levels: Mapping[float, Sequence[float]], direction: str) -> TestResult:
    """Deterministic values per level (e.g. GFLOPs, parameters): strictly monotone?

    Each level needs ≥ 1 finite value, and all its values equal (a deterministic quantity);
    otherwise, or with fewer than 2 levels, the check is not computable.
    """
    if direction not in ("increasing", "decreasing"):
        raise ValueError(f"direction {direction!r}; allowed: ['increasing', 'decreasing']")
    name = f"deterministic check (strictly {direction})"
    vals = {x: _finite(v) for x, v in sorted(levels.items())}
    n = tuple(len(v) for v in vals.values())
    reason = ""
    if len(vals) < 2:
        reason = "fewer than 2 levels"
    elif any(len(v) == 0 for v in vals.values()):
        reason = "a level has no value"
    elif any(np.ptp(v) > 1e-9 * max(1.0, float(np.abs(v).max())) for v in vals.values()):
        reason = "values differ between seeds: not deterministic"
    if reason:
        return TestResult.not_computable(name, "steps", n, reason)
    series = np.array([v[0] for v in vals.values()])
    steps = np.diff(series)
    ok = bool(np.all(steps > 0) if direction == "increasing" else np.all(steps < 0))
    good = int(np.sum(steps > 0) if direction == "increasing" else np.sum(steps < 0))
    return TestResult(
        name, "steps in direction", float(good), math.nan, n, MONOTONE if ok else NOT_MONOTONE
    )
