"""The paper's qualitative claims, checked on our seed values.

Each claim in tables.yaml names a test; each test returns "held", "not held" or
"not enough seeds" (any row involved has fewer than ``min_seeds`` values, or no row
matches) together with the statistic it used, so a reader can judge it. A claim whose
selector matches several rows is "ambiguous" (the spec or the sweep must be made precise).

Tests (α = spec alpha, default 0.05; seed values x_a, x_b of the rows a and b):
  better         a is better than b in the metric's direction: one-sided Welch t-test p < α
  ratio_above    mean(a) > factor·mean(b): one-sided Welch t-test of x_a against factor·x_b
  trend          the metric rises/falls with a numeric axis: Spearman ρ over all
                 (axis value, seed value) pairs has the claimed sign and p < α
  flat           the metric does not change with the axis for axis values ≤ up_to:
                 one-way ANOVA across those levels gives p ≥ α
  no_difference  a and b do not differ: two-sided Welch t-test p ≥ α
  best           a has the best mean of all rows and beats the runner-up: one-sided Welch p < α
``group_by`` axes split the rows into groups; the claim must hold in every group.
A selector value "$max" / "$min" stands for the largest / smallest value of that axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from e3lib.aggregate import axis_label
from e3lib.report.tables import CellStats, Row, welch_p

HELD, NOT_HELD, NOT_ENOUGH, AMBIGUOUS = "held", "not held", "not enough seeds", "ambiguous"


@dataclass
class Verdict:
    claim: str
    test: str
    outcome: str
    statistic: str


class _Short(Exception):
    """Raised inside a test when the data cannot decide the claim."""

    def __init__(self, outcome: str, why: str):
        super().__init__(why)
        self.outcome, self.why = outcome, why


EXTREMES = {"$max": max, "$min": min}


def _matches(row: Row, selector: Mapping[str, Any]) -> bool:
    return all(row.key[k] == axis_label(v) for k, v in selector.items()
               if k in row.key and v not in EXTREMES)


def select_rows(rows: Sequence[Row], selector: Mapping[str, Any]) -> list[Row]:
    """Rows agreeing with ``selector``; a value "$max"/"$min" picks the largest/smallest
    numeric value of that axis among the rows that agree on the other fields (so one
    claim reads "(M=4) beats (M=1, the most experts)" whatever E values a variant uses)."""
    found = [r for r in rows if _matches(r, selector)]
    for k, v in selector.items():
        if v in EXTREMES:
            values = [_numeric(r.key[k]) for r in found if k in r.key and r.key[k] != "-"]
            if values:
                pick = EXTREMES[v](values)
                found = [r for r in found if k in r.key and r.key[k] != "-"
                         and _numeric(r.key[k]) == pick]
    return found


def _one(rows: Sequence[Row], selector: Mapping[str, Any], metric: str, min_seeds: int
         ) -> CellStats:
    found = [r for r in select_rows(rows, selector) if metric in r.stats]
    if not found:
        raise _Short(NOT_ENOUGH, f"no row matches {dict(selector)} (n=0)")
    if len(found) > 1:
        raise _Short(AMBIGUOUS, f"{len(found)} rows match {dict(selector)}")
    c = found[0].stats[metric]
    if c.n < min_seeds:
        raise _Short(NOT_ENOUGH, f"{dict(selector)} has n={c.n} < {min_seeds} seeds")
    return c


def _direction(spec: Mapping, metric: str) -> str:
    better = spec["metrics"][metric].get("better")
    if better not in ("lower", "higher"):
        raise ValueError(f"metric {metric!r} has no 'better' direction in tables.yaml")
    return better


def _better(rows, v, spec):
    a = _one(rows, v["a"], v["metric"], spec["min_seeds"])
    b = _one(rows, v["b"], v["metric"], spec["min_seeds"])
    alt = "less" if _direction(spec, v["metric"]) == "lower" else "greater"
    p = welch_p(a.values, b.values, alt)
    return p < spec["alpha"], (f"means {a.mean:.4g} vs {b.mean:.4g} (n={a.n} vs {b.n}); "
                               f"one-sided Welch t-test p = {p:.3g}")


def _ratio_above(rows, v, spec):
    a = _one(rows, v["a"], v["metric"], spec["min_seeds"])
    b = _one(rows, v["b"], v["metric"], spec["min_seeds"])
    f = float(v["factor"])
    p = welch_p(a.values, f * b.values, "greater")
    ratio = a.mean / b.mean if b.mean else math.inf
    return p < spec["alpha"], (f"means {a.mean:.4g} vs {b.mean:.4g}, ratio {ratio:.3g}; "
                               f"one-sided Welch t-test of a > {f:g}·b: p = {p:.3g}")


def _numeric(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        raise _Short(NOT_ENOUGH, f"axis value {label!r} is not a number") from None


def _levels(rows, v, spec, keep=lambda x: True):
    axis, metric = v["axis"], v["metric"]
    levels: dict[float, np.ndarray] = {}
    for r in rows:
        if axis not in r.key or metric not in r.stats or r.key[axis] == "-":
            continue
        x = _numeric(r.key[axis])
        if not keep(x):
            continue
        if x in levels:
            raise _Short(AMBIGUOUS, f"several rows at {axis}={r.key[axis]}; add group_by")
        if r.stats[metric].n < spec["min_seeds"]:
            raise _Short(NOT_ENOUGH, f"{axis}={r.key[axis]} has n={r.stats[metric].n}")
        levels[x] = r.stats[metric].values
    if len(levels) < 2:
        raise _Short(NOT_ENOUGH, f"{len(levels)} level(s) of {axis} with data")
    return levels


def _trend(rows, v, spec):
    levels = _levels(rows, v, spec)
    xs = np.concatenate([np.full(len(vals), x) for x, vals in levels.items()])
    ys = np.concatenate(list(levels.values()))
    rho, p = sps.spearmanr(xs, ys)
    want = -1 if v["direction"] == "decreasing" else 1
    held = bool(np.isfinite(rho) and np.sign(rho) == want and p < spec["alpha"])
    return held, (f"Spearman ρ = {rho:.3f}, p = {p:.3g} over {len(ys)} seed values at "
                  f"{len(levels)} values of {v['axis']}")


def _flat(rows, v, spec):
    levels = _levels(rows, v, spec, keep=lambda x: x <= v["up_to"])
    res = sps.f_oneway(*levels.values())
    means = [vals.mean() for vals in levels.values()]
    p = float(res.pvalue) if np.isfinite(res.pvalue) else 1.0
    return p >= spec["alpha"], (f"one-way ANOVA over {len(levels)} values of {v['axis']} ≤ "
                                f"{v['up_to']:g}: F = {res.statistic:.3g}, p = {p:.3g}; "
                                f"spread of means {max(means) - min(means):.4g}")


def _no_difference(rows, v, spec):
    a = _one(rows, v["a"], v["metric"], spec["min_seeds"])
    b = _one(rows, v["b"], v["metric"], spec["min_seeds"])
    p = welch_p(a.values, b.values)
    return p >= spec["alpha"], (f"means {a.mean:.4g} vs {b.mean:.4g} (n={a.n} vs {b.n}); "
                                f"two-sided Welch t-test p = {p:.3g}")


def _best(rows, v, spec):
    metric = v["metric"]
    a = _one(rows, v["a"], metric, spec["min_seeds"])
    others = [r.stats[metric] for r in rows
              if metric in r.stats and r.stats[metric] is not a and r.stats[metric].n]
    if not others:
        raise _Short(NOT_ENOUGH, "no other row to compare with")
    lower = _direction(spec, metric) == "lower"
    runner = min(others, key=lambda c: c.mean) if lower else max(others, key=lambda c: c.mean)
    if runner.n < spec["min_seeds"]:
        raise _Short(NOT_ENOUGH, f"runner-up has n={runner.n}")
    p = welch_p(a.values, runner.values, "less" if lower else "greater")
    return p < spec["alpha"], (f"mean {a.mean:.4g} vs best other {runner.mean:.4g}; "
                               f"one-sided Welch t-test p = {p:.3g}")


TESTS: dict[str, Callable[[Sequence[Row], Mapping, Mapping], tuple[bool, str]]] = {
    "better": _better, "ratio_above": _ratio_above, "trend": _trend, "flat": _flat,
    "no_difference": _no_difference, "best": _best,
}


def evaluate(v: Mapping[str, Any], rows: Sequence[Row], spec: Mapping) -> Verdict:
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        gkey = tuple((k, r.key[k]) for k in v.get("group_by", []) if k in r.key)
        groups.setdefault(gkey, []).append(r)
    if not groups:
        return Verdict(v["claim"], v["test"], NOT_ENOUGH, "no rows (n=0)")
    outcomes, parts = [], []
    for gkey, grows in groups.items():
        prefix = ", ".join(f"{k}={val}" for k, val in gkey)
        try:
            held, stat = TESTS[v["test"]](grows, v, spec)
            outcomes.append(HELD if held else NOT_HELD)
        except _Short as short:
            outcomes.append(short.outcome)
            stat = short.why
        parts.append(f"[{prefix}] {stat}" if prefix else stat)
    for outcome in (AMBIGUOUS, NOT_HELD, NOT_ENOUGH):
        if outcome in outcomes:
            break
    else:
        outcome = HELD
    return Verdict(v["claim"], v["test"], outcome, "; ".join(parts))


def evaluate_all(verdict_specs: Sequence[Mapping], rows: Sequence[Row], spec: Mapping
                 ) -> list[Verdict]:
    return [evaluate(v, rows, spec) for v in verdict_specs]
