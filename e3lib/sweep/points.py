"""Sweep axes → points: the product of the axis groups, in order, a ``when`` group only
where it matches; a field assigned twice to one point is refused (``expand_points``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from e3lib import tree
from e3lib.sweep.ensembles import matches
from e3lib.sweep.load import SweepDoc
from e3lib.sweep.schema import SweepError


def fmt_point(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items()) or "base"


def group_points(group: Mapping[str, Any]) -> list[dict]:
    """The assignments one axis group contributes: a list of {path: value}."""
    if "name" in group:
        return [{group["name"]: v} for v in group["values"]]
    if "zip" in group:
        names = list(group["zip"])
        return [dict(zip(names, vals)) for vals in zip(*(group["zip"][n] for n in names))]
    return [dict(case) for case in group["cases"]]


def group_paths(group: Mapping[str, Any]) -> list[str]:
    if "name" in group:
        return [group["name"]]
    if "zip" in group:
        return list(group["zip"])
    return list(dict.fromkeys(k for case in group["cases"] for k in case))


def iter_points(
    groups: Sequence[Mapping[str, Any]],
    base_cfg: Mapping[str, Any],
    doc: SweepDoc | None = None,
    i: int = 0,
    point: dict | None = None,
) -> Iterator[dict]:
    """The points of ``groups[i:]`` extending ``point``, lazily, in product order. A group
    may not re-assign a field an earlier group assigned to the same point (its values would
    silently replace the earlier ones): refused, naming both groups."""
    point = {} if point is None else point
    if i == len(groups):
        yield point
        return
    group = groups[i]
    cond = group.get("when") or {}
    current = {path: point.get(path, tree.get(base_cfg, path)) for path in cond}
    if not matches(cond, current):
        yield from iter_points(groups, base_cfg, doc, i + 1, point)
        return
    for a in group_points(group):
        again = [k for k in a if k in point]
        if again:
            file, where = (doc.file, doc.axis_field(i)) if doc else ("(sweep)", f"axes[{i}]")
            first = next(j for j in range(i) if again[0] in group_paths(groups[j]))
            first_at = doc.axis_field(first) if doc else f"axes[{first}]"
            raise SweepError(
                file,
                where,
                again[0],
                f"this field is already an axis ({first_at}) of the points it "
                f"applies to (e.g. {fmt_point(point)}); an axis listed twice "
                "would silently replace the earlier values: list it once, or "
                "give the groups disjoint `when:` conditions",
            )
        yield from iter_points(groups, base_cfg, doc, i + 1, {**point, **a})


def expand_points(
    groups: Sequence[Mapping[str, Any]], base_cfg: Mapping[str, Any], doc: SweepDoc | None = None
) -> list[dict]:
    """Product of the axis groups in order; a group with ``when`` only expands the points
    whose current values (assigned, else the base config's) match it."""
    return list(iter_points(groups, base_cfg, doc))
