"""Outcomes of a claim and the rows a claim compares.

A claim's selectors (``a``, ``b``: {axis: value}, "$max"/"$min" for an axis's extreme) pick
the rows it compares; ``_one`` asks for exactly one row with ≥ ``min_seeds`` values and
``_levels`` for the seed values per value of an axis. When the data cannot decide, they
raise ``_Short`` with the outcome to report (not enough seeds, ambiguous, not computable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from e3lib.aggregate import axis_label
from e3lib.report.rows import CellStats, Row

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
NOT_COMPUTABLE, NOT_ENOUGH, AMBIGUOUS = "not computable", "not enough seeds", "ambiguous"
# how groups combine: the first outcome of this list present in any group wins
PRECEDENCE = (AMBIGUOUS, NOT_HELD, NOT_COMPUTABLE, NOT_ENOUGH, INCONCLUSIVE, HELD)


class _Short(Exception):
    """Raised inside a check when the data cannot decide the claim."""

    def __init__(self, outcome: str, why: str, n: str = ""):
        super().__init__(why)
        self.outcome, self.why, self.n = outcome, why, n


EXTREMES = {"$max": max, "$min": min}


def _matches(row: Row, selector: Mapping[str, Any]) -> bool:
    return all(
        row.key[k] == axis_label(v)
        for k, v in selector.items()
        if k in row.key and v not in EXTREMES
    )


def _numeric(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        raise _Short(NOT_COMPUTABLE, f"axis value {label!r} is not a number") from None


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
                found = [
                    r
                    for r in found
                    if k in r.key and r.key[k] != "-" and _numeric(r.key[k]) == pick
                ]
    return found


def _need(c: CellStats, where: str, min_seeds: int) -> None:
    if c.n < min_seeds:
        raise _Short(NOT_ENOUGH, f"{where}: n={c.n}, need {min_seeds}", str(c.n))


def _one(
    rows: Sequence[Row], selector: Mapping[str, Any], metric: str, min_seeds: int
) -> CellStats:
    found = [r for r in select_rows(rows, selector) if metric in r.stats]
    if not found:
        raise _Short(NOT_ENOUGH, f"no row matches {dict(selector)} (n=0, need {min_seeds})", "0")
    if len(found) > 1:
        raise _Short(AMBIGUOUS, f"{len(found)} rows match {dict(selector)}")
    c = found[0].stats[metric]
    _need(c, str(dict(selector)), min_seeds)
    return c


def _levels(rows, v, min_seeds, keep=lambda x: True) -> dict[float, np.ndarray]:
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
        _need(r.stats[metric], f"{axis}={r.key[axis]}", min_seeds)
        levels[x] = r.stats[metric].values
    if len(levels) < 2:
        raise _Short(NOT_ENOUGH, f"{len(levels)} level(s) of {axis} with data, need 2")
    return dict(sorted(levels.items()))


def _n_text(levels: Mapping[float, np.ndarray]) -> str:
    return ", ".join(f"{x:g}: {len(vals)}" for x, vals in levels.items())
