"""Text cells of a rendered table and the formatting of numbers into them.

``Table`` holds what the Jinja2 templates lay out: blocks of ``Cell`` rows, footnotes,
verdicts and the run configuration beside the paper's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from e3lib.report.rows import CellStats, Row
from e3lib.stats import welch_test


@dataclass
class Cell:
    text: str
    kind: str = "ours"  # key | label | seeds | ours | paper
    bold: bool = False
    flag: bool = False  # fewer seeds than requested


@dataclass
class Block:
    caption: str
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Table:
    id: str
    title: str
    source: str = ""
    setting: str = ""
    note: str = ""
    blocks: list[Block] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    paper_title: str = ""  # the paper's title (its configuration included)
    ran: list[dict] = field(default_factory=list)  # per sweep: variant, config, text


def _fmt(x: float, mcfg: Mapping) -> str:
    """Fixed decimals (``digits``), or significant digits (``sig``) for costs whose scale
    spans tiny demo models to H/14."""
    x = x * mcfg.get("scale", 1.0)
    if "sig" in mcfg:
        return f"{x:.{mcfg['sig']}g}"
    return f"{x:.{mcfg.get('digits', 3)}f}"


def format_ours(c: CellStats | None, mcfg: Mapping) -> Cell:
    if c is None or c.n == 0:
        # no value at all: the metric does not apply (KL of one member) or no run finished;
        # the seeds column says which runs are missing
        return Cell("—")
    if c.n < 2 or not math.isfinite(c.stderr):
        text = f"{_fmt(c.mean, mcfg)} (n={c.n})"
    else:
        text = f"{_fmt(c.mean, mcfg)} ± {_fmt(c.stderr, mcfg)}"
    flag = not c.complete
    return Cell(text + (f" † {c.n}/{c.n_req}" if flag else ""), flag=flag)


def format_paper(values: Sequence | None, mcfg: Mapping) -> Cell:
    if values is None:
        return Cell("—", kind="paper")
    mean, se = values
    text = _fmt(mean, mcfg) + ("" if se is None else f" ± {_fmt(se, mcfg)}")
    return Cell(text, kind="paper")


def _numeric_first(label: str) -> tuple:
    """Sort key of axis labels: numbers in numeric order, then text in given order."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, 0.0)


def _arrow(mcfg: Mapping) -> str:
    return {"lower": " ↓", "higher": " ↑"}.get(mcfg.get("better", ""), "")


def significant_best(
    cells: Sequence[CellStats | None], better: str | None, alpha: float, min_seeds: int
) -> tuple[int | None, str]:
    """Index of the cell to bold (or None) and a sentence saying why."""
    if better not in ("lower", "higher"):
        return None, ""
    cand = [(i, c) for i, c in enumerate(cells) if c is not None and c.n >= min_seeds]
    if len(cand) < 2:
        return None, f"fewer than two rows with ≥ {min_seeds} seeds"
    sign = 1 if better == "lower" else -1
    cand.sort(key=lambda ic: sign * ic[1].mean)
    (i_best, best), (_, second) = cand[0], cand[1]
    res = welch_test(best.values, second.values, alpha=alpha)
    bold = res.p < alpha  # NaN (not computable) → False
    if not res.computable:
        return None, f"best vs runner-up: Welch t-test not computable ({res.reason}; not bold)"
    return (
        (i_best if bold else None),
        f"best vs runner-up: Welch p = {res.p:.3g} ({'bold' if bold else 'not bold'})",
    )
