"""The paper's qualitative claims, checked on our seed values with ``e3lib.stats``.

Each claim in tables.yaml names a kind; each check returns one outcome with the test it
used, its statistic, the values per compared cell (n) and the equivalence margin:

  held              the data support the claim at level α
  not held          the data support the opposite (a significant reverse difference, a
                    reverse trend, a difference beyond the margin, a non-monotone cost)
  inconclusive      neither: absence of evidence is never read as a pass
  not computable    the test is degenerate (n < 2 on a side, zero variance on both sides,
                    a NaN statistic, a zero margin)
  not enough seeds  a compared cell has fewer than ``min_seeds`` values (default 3), or no
                    row matches a selector (n=0)
  ambiguous         a selector matches several rows (the spec or the sweep must be precise)

Kinds (α = spec alpha, default 0.05; x_a, x_b the seed values of rows a and b):
  better         one-sided Welch t-test of a better than b (the metric's direction)
  ratio_above    one-sided Welch t-test of x_a > factor·x_b
  trend          Spearman ρ over (axis value, seed value) pairs; claimed sign and p < α
  best           a has the best mean; one-sided Welch t-test against the runner-up
  no_difference  TOST: mean(a) − mean(b) within ±margin
  flat           TOST of every axis value ≤ up_to against the smallest one, all within ±margin
  monotone       deterministic (costs: GFLOPs, parameters): strictly monotone over the axis,
                 one value per level suffices, no seeds and no test needed
Margins (equivalence kinds): the claim's ``margin`` (absolute, in stored units), else its
``margin_rel`` or the spec's ``margin_rel`` (default 0.02) times |mean| of the reference
cell (b, or the smallest axis value). ``group_by`` axes split the rows into groups, one per
value found among the rows the claim's selectors (a, b) match; the claim holds only if it
holds in every group. A selector value "$max" / "$min" stands for the
largest / smallest value of that axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from e3lib import stats
from e3lib.report.claim_rows import (
    AMBIGUOUS,
    HELD,
    INCONCLUSIVE,
    NOT_COMPUTABLE,
    NOT_ENOUGH,
    NOT_HELD,
    PRECEDENCE,
    _levels,
    _matches,
    _n_text,
    _need,
    _one,
    _Short,
    select_rows,
)
from e3lib.report.rows import Row
from e3lib.report.spec import DEFAULT_MARGIN_REL

__all__ = [
    "AMBIGUOUS",
    "CHECKS",
    "HELD",
    "INCONCLUSIVE",
    "NOT_COMPUTABLE",
    "NOT_ENOUGH",
    "NOT_HELD",
    "PRECEDENCE",
    "Verdict",
    "evaluate",
    "evaluate_all",
    "select_rows",
]


@dataclass
class Verdict:
    claim: str
    test: str  # the claim's kind (better, flat, ...)
    outcome: str
    statistic: str  # statistic, p and means, per group
    method: str = ""  # the statistical test used
    n: str = ""  # values per compared cell, per group
    margin: str = "—"  # equivalence margin, per group


@dataclass
class _Check:
    outcome: str
    detail: str
    method: str
    n: str
    margin: str = "—"


def _direction(spec: Mapping, metric: str) -> str:
    better = spec["metrics"][metric].get("better")
    if better not in ("lower", "higher"):
        raise ValueError(f"metric {metric!r} has no 'better' direction in tables.yaml")
    return better


def _directional(res: stats.TestResult, reverse: stats.TestResult, prefix: str) -> _Check:
    """held: significant in the claimed direction; not held: in the reverse one."""
    n = " vs ".join(str(k) for k in res.n)
    if not res.computable:
        return _Check(NOT_COMPUTABLE, f"{prefix}; {res.describe()}", res.test, n)
    outcome = HELD if res.p < res.alpha else NOT_HELD if reverse.p < res.alpha else INCONCLUSIVE
    return _Check(
        outcome,
        f"{prefix}; {res.describe()}; reverse direction p = {reverse.p:.3g}",
        f"{res.test}, α = {res.alpha:g}",
        n,
    )


def _better(rows, v, spec):
    a = _one(rows, v["a"], v["metric"], spec["min_seeds"])
    b = _one(rows, v["b"], v["metric"], spec["min_seeds"])
    alt, rev = (
        ("less", "greater") if _direction(spec, v["metric"]) == "lower" else ("greater", "less")
    )
    return _directional(
        stats.welch_test(a.values, b.values, alt, spec["alpha"]),
        stats.welch_test(a.values, b.values, rev, spec["alpha"]),
        f"means {a.mean:.4g} vs {b.mean:.4g} (n={a.n} vs {b.n})",
    )


def _ratio_above(rows, v, spec):
    a = _one(rows, v["a"], v["metric"], spec["min_seeds"])
    b = _one(rows, v["b"], v["metric"], spec["min_seeds"])
    f = float(v["factor"])
    ratio = a.mean / b.mean if b.mean else math.inf
    return _directional(
        stats.welch_test(a.values, f * b.values, "greater", spec["alpha"]),
        stats.welch_test(a.values, f * b.values, "less", spec["alpha"]),
        f"means {a.mean:.4g} vs {b.mean:.4g}, ratio {ratio:.3g}; test of a > {f:g}·b",
    )


def _best(rows, v, spec):
    metric = v["metric"]
    a = _one(rows, v["a"], metric, spec["min_seeds"])
    others = [
        r.stats[metric]
        for r in rows
        if metric in r.stats and r.stats[metric] is not a and r.stats[metric].n
    ]
    if not others:
        raise _Short(NOT_ENOUGH, "no other row to compare with (n=0)", "0")
    lower = _direction(spec, metric) == "lower"
    runner = min(others, key=lambda c: c.mean) if lower else max(others, key=lambda c: c.mean)
    _need(runner, "best other row", spec["min_seeds"])
    alt, rev = ("less", "greater") if lower else ("greater", "less")
    return _directional(
        stats.welch_test(a.values, runner.values, alt, spec["alpha"]),
        stats.welch_test(a.values, runner.values, rev, spec["alpha"]),
        f"mean {a.mean:.4g} vs best other {runner.mean:.4g}",
    )


def _trend(rows, v, spec):
    levels = _levels(rows, v, spec["min_seeds"])
    res = stats.spearman_test(levels, spec["alpha"])
    detail = f"{res.describe()} over {len(levels)} values of {v['axis']}"
    if not res.computable:
        return _Check(NOT_COMPUTABLE, detail, res.test, _n_text(levels))
    want = -1 if v["direction"] == "decreasing" else 1
    significant = res.p < spec["alpha"]
    outcome = (
        HELD
        if significant and np.sign(res.statistic) == want
        else NOT_HELD
        if significant
        else INCONCLUSIVE
    )
    return _Check(
        outcome, detail, f"{res.test} (two-sided), α = {spec['alpha']:g}", _n_text(levels)
    )


def _monotone(rows, v, spec):
    levels = _levels(rows, v, 1)  # deterministic: one value per level is enough
    res = stats.monotone(levels, v["direction"])
    series = ", ".join(f"{x:g}: {vals[0]:.4g}" for x, vals in levels.items() if len(vals))
    outcome = {stats.MONOTONE: HELD, stats.NOT_MONOTONE: NOT_HELD}.get(res.outcome, NOT_COMPUTABLE)
    return _Check(
        outcome, f"{res.describe()}; values by {v['axis']}: {series}", res.test, _n_text(levels)
    )


def _margin(v: Mapping, spec: Mapping, reference_mean: float) -> float:
    if "margin" in v:
        return float(v["margin"])
    rel = float(v.get("margin_rel", spec.get("margin_rel", DEFAULT_MARGIN_REL)))
    margin = rel * abs(reference_mean)
    if not (math.isfinite(margin) and margin > 0):
        raise _Short(NOT_COMPUTABLE, f"margin {rel:g}·|mean {reference_mean:.4g}| is not > 0")
    return margin


_EQUIV = {
    stats.EQUIVALENT: HELD,
    stats.DIFFERENT: NOT_HELD,
    stats.INCONCLUSIVE: INCONCLUSIVE,
    stats.NOT_COMPUTABLE: NOT_COMPUTABLE,
}


def _no_difference(rows, v, spec):
    a = _one(rows, v["a"], v["metric"], spec["min_seeds"])
    b = _one(rows, v["b"], v["metric"], spec["min_seeds"])
    margin = _margin(v, spec, b.mean)
    res = stats.tost(a.values, b.values, margin, spec["alpha"])
    return _Check(
        _EQUIV[res.outcome],
        f"means {a.mean:.4g} vs {b.mean:.4g}; {res.describe()}",
        f"{res.test}, α = {spec['alpha']:g}",
        f"{a.n} vs {b.n}",
        f"±{margin:.3g}",
    )


def _flat(rows, v, spec):
    levels = _levels(rows, v, spec["min_seeds"], keep=lambda x: x <= v["up_to"])
    (x0, ref), *rest = levels.items()
    margin = _margin(v, spec, float(ref.mean()))
    results = [(x, stats.tost(vals, ref, margin, spec["alpha"])) for x, vals in rest]
    outcomes = {_EQUIV[r.outcome] for _, r in results}
    outcome = next(o for o in (NOT_HELD, NOT_COMPUTABLE, INCONCLUSIVE, HELD) if o in outcomes)
    parts = [
        f"{v['axis'].split('.')[-1]}={x:g} vs {x0:g}: mean {vals.mean():.4g} vs "
        f"{ref.mean():.4g}, {r.describe().split(': ', 1)[1]}"
        for (x, r), vals in zip(results, [levels[x] for x, _ in results])
    ]
    return _Check(
        outcome,
        "; ".join(parts),
        f"TOST of each value ≤ {v['up_to']:g} against the smallest, α = {spec['alpha']:g}",
        _n_text(levels),
        f"±{margin:.3g}",
    )


CHECKS: dict[str, Callable[[Sequence[Row], Mapping, Mapping], _Check]] = {
    "better": _better,
    "ratio_above": _ratio_above,
    "trend": _trend,
    "flat": _flat,
    "no_difference": _no_difference,
    "best": _best,
    "monotone": _monotone,
}


def evaluate(v: Mapping[str, Any], rows: Sequence[Row], spec: Mapping) -> Verdict:
    def gkey(r: Row) -> tuple:
        return tuple((k, r.key[k]) for k in v.get("group_by", []) if k in r.key)

    # the groups are those of the rows the claim is about: rows its selectors match (every
    # row for a claim over an axis), so Table 14's V-MoE rows (M=1) form no group of E³
    selectors = [v[s] for s in ("a", "b") if s in v]
    about = [r for r in rows if not selectors or any(_matches(r, s) for s in selectors)]
    groups: dict[tuple, list[Row]] = {k: [] for k in dict.fromkeys(map(gkey, about))}
    for r in rows:
        if gkey(r) in groups:
            groups[gkey(r)].append(r)
    if not groups:
        return Verdict(v["claim"], v["test"], NOT_ENOUGH, "no rows (n=0)", n="0")
    checks: list[tuple[str, _Check]] = []
    for gkey, grows in groups.items():
        prefix = ", ".join(f"{k}={val}" for k, val in gkey)
        try:
            check = CHECKS[v["test"]](grows, v, spec)
        except _Short as short:
            check = _Check(short.outcome, short.why, "", short.n)
        checks.append((prefix, check))

    def joined(attr: str) -> str:
        vals = [(p, getattr(c, attr)) for p, c in checks if getattr(c, attr)]
        if len({val for _, val in vals}) <= 1:
            return vals[0][1] if vals else ""
        return "; ".join(f"[{p}] {val}" if p else val for p, val in vals)

    outcome = next(o for o in PRECEDENCE if any(c.outcome == o for _, c in checks))
    detail = "; ".join(f"[{p}] {c.detail}" if p else c.detail for p, c in checks)
    return Verdict(
        v["claim"],
        v["test"],
        outcome,
        detail,
        joined("method") or "—",
        joined("n") or "—",
        joined("margin") or "—",
    )


def evaluate_all(
    verdict_specs: Sequence[Mapping], rows: Sequence[Row], spec: Mapping
) -> list[Verdict]:
    return [evaluate(v, rows, spec) for v in verdict_specs]
