"""Sweep document → validated runs and ensembles (a ``Sweep``), and files → a ``Plan``.

Steps of ``expand_doc``, all before any job exists, each raising ``SweepError`` naming the
file, the field, the value and what is allowed:

1. ``check_schema``: the file against ``workflow/schemas/sweep.schema.yaml``;
2. ``variant_doc``: the ``small`` / ``paper`` / ``public`` overlay (and its recipe file);
3. ``axis_names``: every axis and condition name against the run-config fields;
4. ``base_config``: the base overrides against ``e3lib.config.DEFAULTS``;
5. ``guards``: seeds, replicates and the number of jobs (``max_runs``), counted before any
   point exists; ``expand_points``: the axis groups' product (``when`` groups only where
   they match; a field assigned twice to one point is refused);
6. ``Expansion.add_point``: every point x seed (``upstream_seeds: per_run``: with
   ``upstream.seed`` = seed) through ``e3lib.config.resolve`` (cross-field
   rules: K <= E/M, E - o divisible by M, ...), one run each; a published checkpoint's name
   becomes its path (``checkpoints`` overrides first) and a local checkpoint's checksum is
   pinned (``e3lib.upstreams.identity.pinned_config``);
7. ``add_ensembles`` (``e3lib.sweep.ensembles``) and ``check_select``.

Identity: a run's id is ``e3lib.config.run_id`` of its resolved config, so the same run in
two sweeps is one run; an upstream's id is ``e3lib.config.upstream_id``. Adding seeds or
axis values adds entries and leaves every existing id unchanged. ``method`` is always an
axis (tables key their rows by it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from e3lib import tree
from e3lib.config import (
    DEFAULTS,
    ConfigError,
    as_dict,
    canonical_json,
    resolve,
    run_id,
    upstream_id,
)
from e3lib.run_config import RunConfig
from e3lib.sweep import guards
from e3lib.sweep.ensembles import ENSEMBLE_RUNS_AXIS, add_ensembles
from e3lib.sweep.load import SweepDoc, read_doc, refuse_renamed_fields, variant_doc
from e3lib.sweep.plan import Plan, Sweep, run_entry
from e3lib.sweep.points import expand_points, fmt_point, group_paths, iter_points
from e3lib.sweep.schema import SweepError, check_schema
from e3lib.upstreams.catalog import check_overrides
from e3lib.upstreams.identity import pinned_config

# Defaults of a `select:` block (the paper does not state its selection metric).
SELECT_DEFAULTS = {"metric": "nll", "split": "val", "mode": "min", "member": "ensemble"}
# Axes a selection may not range over: they are what the tables compare.
UNSELECTABLE_AXES = ("method", "model.ensemble_size", ENSEMBLE_RUNS_AXIS)


def axis_names(doc: SweepDoc) -> list[str]:
    """Check axis and condition names; return the ordered list of axis names."""
    names: list[str] = []
    for i, group in enumerate(doc.axes):
        where = doc.axis_field(i)
        if "zip" in group:
            lengths = {n: len(v) for n, v in group["zip"].items()}
            if len(set(lengths.values())) > 1:
                raise SweepError(
                    doc.file, f"{where}.zip", lengths, "zipped axes must have lists of equal length"
                )
        guards.check_axis_values(group, where, doc.file)
        for path in group_paths(group):
            if path == "seed":
                raise SweepError(
                    doc.file, where, "seed", "seeds are declared with `seeds:`, not as an axis"
                )
            if not tree.has_leaf(DEFAULTS, path):
                sections = sorted(k for k in DEFAULTS if isinstance(DEFAULTS[k], dict))
                raise SweepError(
                    doc.file,
                    where,
                    path,
                    f"unknown run-config field; allowed: method or a field of "
                    f"{sections} (see e3lib/config.py DEFAULTS)",
                )
            if path not in names:
                names.append(path)
        for cond in group.get("when") or {}:
            if not tree.has_leaf(DEFAULTS, cond):
                raise SweepError(doc.file, f"{where}.when", cond, "unknown run-config field")
    return names


def base_config(doc: SweepDoc) -> dict:
    """DEFAULTS updated by the sweep's base (unknown fields refused)."""
    if "seed" in doc.base:
        raise SweepError(
            doc.file, "base.seed", doc.base["seed"], "seeds are declared with `seeds:`"
        )
    try:
        return tree.merge_known(DEFAULTS, doc.base)
    except ConfigError as err:
        raise SweepError(doc.file, f"base.{err.field}", err.value, err.rule) from None


def check_select(doc: SweepDoc, axes: Sequence[str]) -> dict | None:
    """The sweep's `select:` block with defaults filled in; `over` must name its axes."""
    block = doc.select
    if block is None:
        return None
    allowed = [a for a in axes if a not in UNSELECTABLE_AXES]
    for i, axis in enumerate(block["over"]):
        field = f"{doc.where['select']}.over[{i}]"
        if axis in UNSELECTABLE_AXES:
            raise SweepError(
                doc.file,
                field,
                axis,
                f"{axis} is compared by the tables, not selected; allowed: {allowed}",
            )
        if axis not in axes:
            raise SweepError(
                doc.file, field, axis, f"not an axis of this sweep (variant); allowed: {allowed}"
            )
    return {"over": list(block["over"]), **{k: block.get(k, v) for k, v in SELECT_DEFAULTS.items()}}


class Expansion:
    """A sweep being filled: resolves points, adds runs, and owns each row of its tables."""

    defaults = DEFAULTS
    run_id = staticmethod(run_id)

    def __init__(
        self,
        sweep: Sweep,
        base: dict,
        file: str,
        checkpoints: Mapping[str, str] | None = None,
        upstream_seeds: str = "shared",
        upstream_seeds_field: str = "upstream_seeds",
    ):
        self.sweep, self.base, self.file = sweep, base, file
        self.upstream_seeds = upstream_seeds  # "shared" or "per_run" (sweep.schema.yaml)
        self.upstream_seeds_field = upstream_seeds_field  # where the file sets it
        self.checkpoints = dict(checkpoints or {})  # published name -> path
        self._rows: dict[tuple, str] = {}  # (axis values, seed or replicate) -> id
        self._resolved: dict[tuple, RunConfig] = {}  # point -> resolved config

    def resolved(self, point: dict, seed: int, extra: Mapping[str, Any] | None = None) -> RunConfig:
        """The resolved config of a point and seed. The cross-field rules do not involve
        the seed, so each point is resolved (validated) once and copied per seed."""
        full = {**point, **(extra or {})}
        key = tuple(sorted(full.items()))
        if key not in self._resolved:
            over = self.base
            for path, value in full.items():
                over = tree.merge(over, tree.nest(path, value))
            try:
                self._resolved[key] = pinned_config(
                    resolve({**over, "seed": seed}, job=True), self.checkpoints
                )
            except ConfigError as err:
                where = f"run ({fmt_point(point)}, seed={seed})"
                raise SweepError(
                    self.file, f"{err.field} in {where}", err.value, err.rule
                ) from None
        return replace(self._resolved[key], seed=seed)

    def axes_of(self, cfg: RunConfig | Mapping[str, Any]) -> dict:
        """A run's row: its value of every axis (``ensemble.runs``: 1)."""
        d = as_dict(cfg)
        return {a: 1 if a == ENSEMBLE_RUNS_AXIS else tree.get(d, a) for a in self.sweep.axes}

    def claim_row(self, axes: Mapping[str, Any], position: int, entry_id: str) -> str | None:
        """Record ``entry_id`` as the row (axes, seed or replicate); the earlier id if taken."""
        key = (tuple(axes.items()), position)  # axis values are scalars
        if key in self._rows:
            return self._rows[key]
        self._rows[key] = entry_id
        return None

    def add_run(self, cfg: RunConfig | dict, axes: dict, seed: int) -> str:
        """Add the run of ``cfg``; the sweep's tables hold its plain dict (the job config).
        ``cfg`` may be that plain dict already (converted once: the cost of expansion)."""
        cfg = as_dict(cfg)
        rid = run_id(cfg)
        owner = self.claim_row(axes, seed, rid)
        if owner is not None:
            if owner != rid:
                raise SweepError(
                    self.file,
                    "axes",
                    axes,
                    f"two runs with seed {seed} have these axis values but "
                    "different configs; make the field in which they differ an "
                    "axis",
                )
            return rid
        if rid not in self.sweep.runs:
            self.sweep.runs[rid] = cfg
            self.sweep.run_upstream[rid] = upstream_id(cfg)
        entry_cfg = self.sweep.runs[rid]
        self.sweep.entries.append(
            run_entry(rid, seed, axes, self.sweep.run_upstream[rid], entry_cfg)
        )
        return rid

    def add_point(self, point: dict, seeds: Sequence[int]) -> dict[int, str]:
        """One run per seed of ``point``; returns seed -> run id. With ``upstream_seeds:
        per_run`` seed s fine-tunes from upstream seed s: each seed needs its own upstream."""
        per_run = self.upstream_seeds == "per_run"
        by_seed = {}
        for s in seeds:
            cfg = self.resolved(point, s, {"upstream.seed": s} if per_run else None)
            if per_run and cfg.upstream.checkpoint:
                raise SweepError(
                    self.file,
                    self.upstream_seeds_field,
                    "per_run",
                    f"the runs of ({fmt_point(point)}) fine-tune from upstream.checkpoint "
                    f"{cfg.upstream.checkpoint!r}, one upstream for every seed; per_run "
                    "needs a pretraining job per seed; allowed: shared, or per_run "
                    "without upstream.checkpoint",
                )
            plain = cfg.to_dict()  # once per run: run_id, upstream_id and axes read it
            by_seed[s] = self.add_run(plain, self.axes_of(plain), s)
        return by_seed


def expand_doc(
    doc: Any,
    file: str,
    variant: str = "small",
    name: str | None = None,
    max_runs: int | None = None,
    checkpoints: Mapping[str, str] | None = None,
) -> Sweep:
    """Validate and expand one loaded sweep document (see the module docstring).

    ``max_runs``: the most jobs this file may expand to (``--config max_runs=N``); None: the
    sweep's ``max_runs:`` field, else ``guards.DEFAULT_MAX_RUNS``. ``checkpoints``: published
    checkpoint name -> path, replacing the published URL.
    """
    guards.check_plain(doc, file)
    refuse_renamed_fields(doc, file)
    check_schema(doc, file)
    d = variant_doc(doc, variant, file, max_runs)
    axes = axis_names(d)
    if d.ensembles:
        axes.append(ENSEMBLE_RUNS_AXIS)
    if "method" not in axes:  # every table row is keyed by method
        axes.insert(0, "method")
    base_cfg = base_config(d)
    per_point = len(d.seeds) + guards.check_ensembles(
        d.ensembles, d.where["ensembles"], len(d.seeds), file
    )
    guards.check_size(
        d.axes,
        lambda: iter_points(d.axes, base_cfg, d),
        per_point,
        len(d.seeds),
        d.max_runs,
        file,
        d.where["axes"],
    )
    sweep = Sweep(
        name=d.name or name or Path(file).stem,
        file=file,
        file_sha256=hashlib.sha256(canonical_json(doc).encode()).hexdigest(),
        variant=variant,
        title=d.title,
        reproduces=d.reproduces,
        axes=axes,
        seeds=d.seeds,
    )
    sweep.select = check_select(d, sweep.axes)
    x = Expansion(sweep, d.base, file, checkpoints, d.upstream_seeds, d.where["upstream_seeds"])
    point_runs = [(p, x.add_point(p, d.seeds)) for p in expand_points(d.axes, base_cfg, d)]
    add_ensembles(x, d, point_runs)
    return sweep


def load_sweep(
    path: str | os.PathLike,
    variant: str = "small",
    max_runs: int | None = None,
    checkpoints: Mapping[str, str] | None = None,
) -> Sweep:
    """Read, validate and expand one sweep file."""
    return expand_doc(
        read_doc(path), str(path), variant, max_runs=max_runs, checkpoints=checkpoints
    )


def expand_sweeps(
    paths: Sequence[str | os.PathLike],
    variant: str = "small",
    max_runs: int | None = None,
    checkpoints: Mapping[str, str] | None = None,
    checkpoints_option: str = "upstream_checkpoints",
) -> Plan:
    """Expand several sweep files into one plan (runs shared between sweeps appear once).

    checkpoints: published checkpoint name -> path (``e3lib.upstreams.catalog``); a name
    that is not a published checkpoint's is refused, naming ``checkpoints_option``."""
    try:
        checkpoints = check_overrides(checkpoints, checkpoints_option)
    except ConfigError as err:
        raise SweepError(checkpoints_option, err.field, err.value, err.rule) from None
    plan = Plan()
    for p in paths:
        plan.add(load_sweep(p, variant, max_runs, checkpoints))
    return plan
