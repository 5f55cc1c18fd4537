"""Deep ensembles of independent runs: which runs form each replicate, and their ids.

A sweep's ``ensembles:`` item ``{label, kind, runs: [2, 4], of: {...}, replicates}`` adds,
for every point matching ``of`` and every ensemble size n in ``runs``, ``replicates``
ensembles of n runs of that point.

Replicates: the report compares ensemble rows over their replicates as it compares runs
over seeds, and needs ``MIN_REPLICATES`` (its ``min_seeds``, 3) of them per cell. The
default is as many disjoint replicates as the S seeds allow (S // n), and at least
``MIN_REPLICATES``: replicates beyond the disjoint ones share members with others, and
every replicate that shares a member run with another of its point and size is labelled
(``overlapping: true`` in its index row). A size that cannot have ``MIN_REPLICATES``
distinct replicates (S <= n), or an explicit ``replicates`` below it, is refused at
expansion: such a row could never be compared.

Members: the runs of one point are ordered by seed (positions 0 … S-1, cyclic); replicate
r takes the n positions from an offset o_r on. Disjoint replicates come first (o_r = r·n);
further ones take offsets spread evenly over the remaining positions. Windows with
different offsets are different sets when n < S. ``downstream`` members share one
upstream; ``upstream`` members are the same fine-tunes with ``upstream.seed`` set to their
seed, so each has its own pretraining; such member runs that are not already rows of the
sweep appear in the index with method ``{label}_member``.

Rows: an ensemble's row has the axis values of its members, ``method = label``, the axis
``ensemble.runs`` = n (ordinary runs: 1) and ``replicate`` = r. ``model.ensemble_size``
keeps its meaning, M of one E³-style model (the members' own value).

Identity: an ensemble's id hashes its kind and sorted member run ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from e3lib import tree
from e3lib.config import ENSEMBLE_KINDS, short_hash
from e3lib.sweep.plan import ensemble_entry
from e3lib.sweep.schema import SweepError

if TYPE_CHECKING:  # the expansion passes itself in; no import cycle at run time
    from e3lib.sweep.expand import Expansion
    from e3lib.sweep.load import SweepDoc

# Axis of every row of a sweep with ensembles: the number of member runs (runs: 1).
ENSEMBLE_RUNS_AXIS = "ensemble.runs"


def ensemble_id(kind: str, members: Sequence[str]) -> str:
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"ensemble kind {kind!r}; allowed: {list(ENSEMBLE_KINDS)}")
    return short_hash({"kind": kind, "members": sorted(members)})


# Replicates per ensemble row the report needs (e3lib/report/tables.yaml ``min_seeds``).
MIN_REPLICATES = 3


def default_replicates(num_seeds: int, size: int) -> int:
    """Disjoint replicates the seeds allow, at least ``MIN_REPLICATES`` where S > n."""
    disjoint = num_seeds // size
    return max(disjoint, MIN_REPLICATES) if num_seeds > size else disjoint


def replicate_offsets(num_seeds: int, size: int, replicates: int) -> list[int]:
    """Start positions of the replicates' member windows (see the module docstring).

    E.g. S=6, n=4, 3 replicates -> [0, 2, 4]: seeds {0,1,2,3}, {2,3,4,5}, {4,5,0,1}, each
    seed in two; S=8, n=2 -> [0, 2, 4] (disjoint).
    """
    disjoint = [r * size for r in range(num_seeds // size)]
    if replicates <= len(disjoint):
        return disjoint[:replicates]
    if size >= num_seeds or replicates > num_seeds:
        raise ValueError(
            f"{replicates} distinct replicates of {size} runs need more than "
            f"{max(size, replicates - 1)} seeds; have {num_seeds}"
        )
    rest = [o for o in range(num_seeds) if o not in disjoint]
    extra = replicates - len(disjoint)
    return disjoint + [
        rest[(i * len(rest)) // extra + len(rest) // (2 * extra)] for i in range(extra)
    ]


def replicate_seeds(
    seeds: Sequence[int], size: int, replicate: int, replicates: int | None = None
) -> list[int]:
    """Seeds of the members of replicate ``replicate`` (of ``replicates``, default
    ``default_replicates``) of an ensemble of ``size`` runs."""
    n = len(seeds)
    total = default_replicates(n, size) if replicates is None else replicates
    offset = replicate_offsets(n, size, total)[replicate]
    return [seeds[(offset + k) % n] for k in range(size)]


def matches(condition: Mapping[str, Any] | None, values: Mapping[str, Any]) -> bool:
    """True when ``values`` has, for every path of ``condition``, one of its values."""
    for path, want in (condition or {}).items():
        if values.get(path) not in (want if isinstance(want, list) else [want]):
            return False
    return True


def add_ensembles(
    x: Expansion, doc: SweepDoc, point_runs: Sequence[tuple[dict, dict[int, str]]]
) -> None:
    """Add every ensemble row of ``doc.ensembles`` to the expansion ``x``."""
    for j, ens in enumerate(doc.ensembles):
        where = f"{doc.where['ensembles']}[{j}]"
        methods = {e["axes"].get("method") for e in x.sweep.entries if e["kind"] == "run"}
        if ens["label"] in methods:
            raise SweepError(
                x.file,
                f"{where}.label",
                ens["label"],
                "an ensemble label must differ from the sweep's method names",
            )
        for cond in ens.get("of") or {}:
            if not tree.has_leaf(x.defaults, cond):
                raise SweepError(x.file, f"{where}.of", cond, "unknown run-config field")
        matched = 0
        for point, by_seed in point_runs:
            cfg0 = x.sweep.runs[by_seed[doc.seeds[0]]]
            if not matches(ens.get("of"), {c: tree.get(cfg0, c) for c in ens.get("of") or {}}):
                continue
            matched += 1
            for size in ens["runs"]:
                _add_size(x, doc, ens, where, point, by_seed, size)
        if not matched:
            raise SweepError(x.file, f"{where}.of", ens.get("of"), "matches no run of the sweep")


def _add_size(
    x: Expansion,
    doc: SweepDoc,
    ens: dict,
    where: str,
    point: dict,
    by_seed: dict[int, str],
    size: int,
) -> None:
    """The replicates of one point's ensembles of ``size`` runs."""
    seeds = doc.seeds
    if len(seeds) < size:
        raise SweepError(
            x.file,
            f"{where}.runs",
            size,
            f"an ensemble of {size} runs needs at least {size} seeds; the sweep has {len(seeds)}",
        )
    count = ens.get("replicates") or default_replicates(len(seeds), size)
    if count < MIN_REPLICATES:
        field, value = (
            (f"{where}.replicates", count) if ens.get("replicates") else ("seeds", len(seeds))
        )
        raise SweepError(
            x.file,
            field,
            value,
            f"ensembles of {size} runs get {count} replicate(s); the report "
            f"compares a row only with at least {MIN_REPLICATES} (min_seeds), "
            f"which needs at least {size + 1} seeds ({MIN_REPLICATES * size} "
            f"for disjoint members)",
        )
    if count > len(seeds) or (count > len(seeds) // size and size >= len(seeds)):
        raise SweepError(
            x.file,
            f"{where}.replicates",
            count,
            f"too many replicates: with {len(seeds)} seeds, ensembles of "
            f"{size} runs have at most {len(seeds) if size < len(seeds) else 1} "
            f"distinct replicates (members would repeat)",
        )
    windows = [replicate_seeds(seeds, size, r, count) for r in range(count)]
    for r, member_seeds in enumerate(windows):
        overlapping = any(set(member_seeds) & set(w) for i, w in enumerate(windows) if i != r)
        members = [_member(x, ens, point, by_seed, s) for s in member_seeds]
        ups = {x.sweep.run_upstream[m] for m in members}
        if ens["kind"] == "downstream" and len(ups) != 1:
            raise SweepError(
                x.file,
                f"{where}.kind",
                "downstream",
                "downstream ensemble members must share one upstream but the "
                "seeds change it (upstream_seeds: per_run?); use kind: upstream",
            )
        checkpoint = x.sweep.runs[members[0]]["upstream"]["checkpoint"]
        if ens["kind"] == "upstream" and (len(ups) != size or checkpoint):
            raise SweepError(
                x.file,
                f"{where}.kind",
                "upstream",
                "upstream ensemble members must have distinct upstreams "
                "(is upstream.checkpoint set?)",
            )
        eid = ensemble_id(ens["kind"], members)
        x.sweep.ensembles[eid] = {"kind": ens["kind"], "members": sorted(members)}
        axes = {
            **x.axes_of(x.sweep.runs[members[0]]),
            "method": ens["label"],
            ENSEMBLE_RUNS_AXIS: size,
        }
        owner = x.claim_row(axes, r, eid)
        if owner is None:
            x.sweep.entries.append(ensemble_entry(eid, r, axes, members, ens["kind"], overlapping))
        elif owner != eid:
            raise SweepError(
                x.file,
                f"{where}.label",
                ens["label"],
                f"two different ensembles would share one row {dict(axes)}: "
                "their members differ only in fields that are not axes of the "
                "row (e.g. the method); declare them separately, each with its "
                "own label",
            )


def _member(x: Expansion, ens: dict, point: dict, by_seed: dict[int, str], seed: int) -> str:
    """The run id of the member with ``seed``; upstream members pretrain with that seed."""
    if ens["kind"] == "downstream":
        return by_seed[seed]
    cfg = x.resolved(point, seed, {"upstream.seed": seed})
    rid = x.run_id(cfg)
    if rid == by_seed[seed]:
        return rid
    return x.add_run(cfg, {**x.axes_of(cfg), "method": f"{ens['label']}_member"}, seed)
