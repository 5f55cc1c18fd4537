"""Guards of a sweep expansion against input that would hang it or make it silently wrong.

Checked before any point is materialized or anything is hashed, each a ``SweepError`` naming
the file, the field, the value and what is allowed:

- ``check_plain``: the document is plain data (mappings with string keys, lists, strings,
  integers, finite floats, booleans, null), so hashing it cannot fail;
- ``seeds``: ``seeds:`` is a count (an integer >= 1) or a list of distinct integers in
  [0, 2^31 - 1]; never a float or a boolean;
- ``check_axis_values``: an axis lists each value (a zip each row, ``cases`` each case) once;
- ``check_size``: points x (seeds + ensemble rows and member runs per point) is at most
  ``max_runs`` (default ``DEFAULT_MAX_RUNS`` per sweep file and variant; a sweep's
  ``max_runs:`` field or ``--config max_runs=N`` raises it). The product of the axis groups is
  computed arithmetically; only when conditional (``when``) groups make it an overestimate
  are the points counted, and the count stops at the limit;
- replicates: at most the number of distinct member windows the seeds allow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from e3lib.config_rules import MAX_SEED
from e3lib.sweep.ensembles import default_replicates
from e3lib.sweep.schema import SweepError

# Jobs (runs + ensembles) one sweep file may expand to in one variant. The largest shipped
# sweep, sweeps/model_sizes.yaml (paper), expands to 5,760.
DEFAULT_MAX_RUNS = 20_000


def check_plain(doc: Any, file: str, path: str = "") -> None:
    """Refuse anything but plain JSON-like data (and non-finite numbers) in a document."""
    where = path or "(top level)"
    if isinstance(doc, dict):
        for k, v in doc.items():
            if not isinstance(k, str):
                raise SweepError(file, f"{where}", k, "mapping keys must be strings")
            check_plain(v, file, f"{path}.{k}" if path else k)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            check_plain(v, file, f"{path}[{i}]")
    elif isinstance(doc, float):
        if not math.isfinite(doc):
            raise SweepError(file, where, doc, "numbers must be finite (not NaN or infinity)")
    elif not (doc is None or isinstance(doc, (str, int, bool))):
        raise SweepError(
            file,
            where,
            doc,
            f"a {type(doc).__name__} is not allowed here; "
            "allowed: a string, number, boolean, null, list or mapping",
        )


def seeds(value: Any, field: str, file: str, limit: int) -> list[int]:
    """The fine-tuning seeds of ``seeds:`` (``None``: one seed, 0)."""
    if value is None:
        return [0]
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SweepError(file, field, value, "a seed count must be >= 1")
        if value > limit:
            raise SweepError(
                file,
                field,
                value,
                f"more seeds than max_runs = {limit} "
                "(raise the sweep's max_runs: or --config max_runs=N)",
            )
        return list(range(value))
    if isinstance(value, list):
        for i, s in enumerate(value):
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
                raise SweepError(
                    file, f"{field}[{i}]", s, f"a seed must be an integer in [0, {MAX_SEED}]"
                )
        if len(set(value)) != len(value):
            raise SweepError(file, field, value, "seeds must be distinct")
        if len(value) > limit:
            raise SweepError(file, field, len(value), f"more seeds than max_runs = {limit}")
        return list(value)
    raise SweepError(
        file,
        field,
        value,
        "allowed: a seed count (an integer >= 1) or a list of "
        "distinct integer seeds, e.g. seeds: 3 or seeds: [0, 1, 2]",
    )


def _scalar_key(v: Any) -> tuple:
    return (type(v).__name__, v)


def check_axis_values(group: Mapping[str, Any], where: str, file: str) -> None:
    """An axis lists each value once (a zip each row, cases each case)."""
    if "name" in group:
        rows, what = [(_scalar_key(v),) for v in group["values"]], f"{where}.values"
        shown = list(group["values"])
    elif "zip" in group:
        cols = list(group["zip"].values())
        rows = [tuple(_scalar_key(c[i]) for c in cols) for i in range(len(cols[0]))]
        what, shown = f"{where}.zip", [tuple(c[i] for c in cols) for i in range(len(cols[0]))]
    else:
        rows = [
            tuple(sorted((k, _scalar_key(v)) for k, v in case.items())) for case in group["cases"]
        ]
        what, shown = f"{where}.cases", list(group["cases"])
    seen: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        if row in seen:
            raise SweepError(
                file,
                f"{what}[{i}]",
                shown[i],
                f"listed twice (also at position {seen[row]}); list each value once",
            )
        seen[row] = i


def replicates_allowed(n_seeds: int, size: int) -> int:
    """Distinct replicates of ``size`` runs the seeds allow: member windows start at distinct
    seed positions (``e3lib.sweep.ensembles.replicate_offsets``), so up to one per seed, and
    a single one when the ensemble takes every seed."""
    return 1 if size >= n_seeds else n_seeds


def check_ensembles(
    ensembles: Sequence[Mapping[str, Any]], where: str, n_seeds: int, file: str
) -> int:
    """Ensemble sizes and replicates the seeds allow; returns ensemble jobs per point (bound)."""
    jobs = 0
    for j, ens in enumerate(ensembles):
        at = f"{where}[{j}]"
        for size in ens["runs"]:
            if size > n_seeds:
                raise SweepError(
                    file,
                    f"{at}.runs",
                    size,
                    f"an ensemble of {size} runs needs at least {size} seeds; "
                    f"the sweep has {n_seeds}",
                )
            top = replicates_allowed(n_seeds, size)
            reps = ens.get("replicates")
            if reps is not None and reps > top:
                raise SweepError(
                    file,
                    f"{at}.replicates",
                    reps,
                    f"too many replicates: with {n_seeds} seeds (seeds:), "
                    f"ensembles of {size} runs have at most {top} distinct "
                    "replicates (members would repeat; add seeds instead)",
                )
            jobs += reps or default_replicates(n_seeds, size)
        if ens["kind"] == "upstream":
            jobs += n_seeds  # member runs with their own upstream
    return jobs


def check_size(
    groups: Sequence[Mapping[str, Any]],
    points: Callable[[], Iterator[dict]],
    per_point: int,
    n_seeds: int,
    limit: int,
    file: str,
    field: str,
) -> int:
    """Refuse an expansion over ``limit`` jobs before materializing it; returns the bound.
    ``points()`` yields the points lazily (counted only when ``when`` groups shrink them)."""
    sizes = []
    for g in groups:
        if "name" in g:
            sizes.append(len(g["values"]))
        elif "zip" in g:
            sizes.append(len(next(iter(g["zip"].values()))))
        else:
            sizes.append(len(g["cases"]))
    product = math.prod(sizes)
    if product * per_point <= limit:
        return product * per_point
    counted = product
    if any(g.get("when") for g in groups):  # conditional groups: count, up to the limit
        cap = limit // per_point + 1
        counted = 0
        for _ in points():
            counted += 1
            if counted >= cap:
                break
        if counted * per_point <= limit:
            return counted * per_point
    shape = " x ".join(map(str, sizes)) or "1"
    raise SweepError(
        file,
        field,
        f"{'at least ' if counted != product else ''}{counted * per_point} jobs",
        f"over the limit of max_runs = {limit} jobs per sweep file: axis groups "
        f"{shape} = {product} points (upper bound), {n_seeds} seed(s) and "
        f"{per_point} job(s) per point with ensembles; raise the sweep's "
        "max_runs: or --config max_runs=N, or shrink the axes",
    )
