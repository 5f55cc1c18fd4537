"""Sweep files → validated, expanded run configs, deep ensembles and a readable run index.

A sweep file (``sweeps/*.yaml``, schema ``workflow/schemas/sweep.schema.yaml``) declares

    base        run-config overrides shared by every run (sections of e3lib.config.DEFAULTS)
    axes        axis groups expanded as a product, in order. Each group is one of
                  {name: model.overlap, values: [0, 2, 4]}            one axis
                  {zip: {model.num_selected: [1, 2], finetune.lr: [...]}}   varied together
                  {cases: [{method: e3}, {method: tiling, model.noise_mult: 2}]}  explicit points
                and may carry ``when: {method: e3}`` (a conditional axis: it only expands the
                points that have these values; the others pass through unchanged)
    seeds       n (seeds 0..n-1) or a list of fine-tuning seeds
    ensembles   deep ensembles of independent runs: label, kind (downstream | upstream),
                sizes, ``of`` (which points), replicates
    reproduces  paper table / figure ids this sweep reproduces
    select      hyperparameter selection over some axes (``over``), by a validation metric:
                carried into index.json and applied by e3lib.aggregate.select_grid
    variants    ``small`` and/or ``paper`` overlays: base (merged), axes (replace),
                add_axes (appended), seeds, ensembles, select (replace)

Checking order, all before any job exists: the file against the JSON schema, then every
axis name against the run-config fields, then every expanded run through
``e3lib.config.resolve`` (cross-field rules: K <= E/M, E - o divisible by M, ...). Every
error is a ``SweepError`` naming the file, the field (dotted path; for a run, the axis
values of the point), the value and what is allowed.

Identity: a run's id is ``e3lib.config.run_id`` of its resolved config, so the same run in
two sweeps is one run; an upstream's id is ``e3lib.config.upstream_id``; an ensemble's id
is a hash of its kind and sorted member ids. Adding seeds or axis values adds entries and
leaves every existing id unchanged.

Deep ensembles: the runs of one point (same axis values) are grouped by seed; replicate r
of size M takes the seeds at positions r·M … r·M+M-1 (wrapping around when more replicates
are asked for than disjoint groups exist). ``downstream`` members share one upstream;
``upstream`` members are the same fine-tunes with ``upstream.seed`` set to their seed, so
each has its own pretraining; such member runs that are not already rows of the sweep
appear in the index with method ``{label}_member``. An ensemble's rows have
``axes.method = label`` and ``axes["model.ensemble_size"]`` = number of member runs.
``method`` is always an axis (tables key their rows by it).

Files written by ``write_plan`` (each only when its content changed, atomically):

    {root}/configs/{run_id}.json              resolved config of a run
    {root}/configs/upstream/{upstream_id}.json  a run config whose upstream this is
    {root}/configs/ensembles/{ensemble_id}.json  {"kind", "members"}
    {root}/sweeps/{sweep}/index.json, index.tsv  the sweep's entries (ids ↔ axis values);
                                               result paths in it read "results/..."
                                               and are relative to {root}
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from e3lib import atomic
from e3lib import tree
from e3lib.config import (DEFAULTS, ConfigError, canonical_json, resolve, run_id,
                          short_hash, upstream_id)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "sweep.schema.yaml"
VARIANTS = ("small", "paper")
ENSEMBLE_KINDS = ("downstream", "upstream")
ENSEMBLE_SIZE_AXIS = "model.ensemble_size"
# Result paths in an index are relative to the results root, spelled "results/..." (the
# aggregate re-roots them under its --results-root), so an index stays valid when the
# results directory is moved or configured elsewhere.
RESULT_PREFIX = "results"
# Defaults of a `select:` block (the paper does not state its selection metric).
SELECT_DEFAULTS = {"metric": "nll", "split": "val", "mode": "min", "member": "ensemble"}
# Axes a selection may not range over: they are what the tables compare.
UNSELECTABLE_AXES = ("method", ENSEMBLE_SIZE_AXIS)


class SweepError(ValueError):
    """An invalid sweep file: names the file, the field, the value and what is allowed."""

    def __init__(self, file: str, field: str, value: Any, rule: str):
        self.file, self.field, self.value, self.rule = file, field, value, rule
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"{file}: {field}={shown}: {rule}")


# ----------------------------------------------------------------------------- schema


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def table_ids() -> list[str]:
    """Paper table / figure ids a sweep may reproduce (the schema's ``reproduces`` enum)."""
    return list(load_schema()["properties"]["reproduces"]["items"]["enum"])


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def check_schema(doc: Any, file: str) -> None:
    """Validate a loaded sweep document against the sweep JSON schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = list(validator.iter_errors(doc))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors)
    # For oneOf failures (axis forms, seeds) the most specific sub-error names the field.
    while err.context:
        err = jsonschema.exceptions.best_match(err.context)
    rule, value = err.message, err.instance
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in (err.instance or {})]
        raise SweepError(file, _json_path([*err.absolute_path, missing[0]]), None,
                         "missing required field")
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        if allowed:
            rule += f"; allowed fields here: {allowed}"
    elif err.validator == "pattern" and err.schema.get("pattern", "").startswith("^(method"):
        rule += " (an axis or condition name must be a dotted run-config path such as " \
                "'model.overlap' or 'method')"
    raise SweepError(file, _json_path(err.absolute_path), value, rule)


# ----------------------------------------------------------------------------- helpers


def _get_dotted(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _nested(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _known_path(dotted: str) -> bool:
    node: Any = DEFAULTS
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, Mapping)


def _matches(condition: Mapping[str, Any] | None, values: Mapping[str, Any]) -> bool:
    if not condition:
        return True
    for path, want in condition.items():
        allowed = want if isinstance(want, list) else [want]
        if values.get(path) not in allowed:
            return False
    return True


def _fmt_point(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items()) or "base"


def _atomic_write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it already holds exactly that; True if written."""
    return atomic.write_text_if_changed(path, text)


# ----------------------------------------------------------------------------- plan


@dataclass
class Sweep:
    """One expanded sweep: its index entries plus the configs its jobs need."""

    name: str
    file: str
    file_sha256: str
    variant: str
    title: str
    reproduces: list[str]
    axes: list[str]
    seeds: list[int]
    entries: list[dict] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)        # run_id -> resolved config
    run_upstream: dict[str, str] = field(default_factory=dict)  # run_id -> upstream_id
    ensembles: dict[str, dict] = field(default_factory=dict)   # ensemble_id -> {kind, members}
    select: dict | None = None   # `select:` block with defaults filled in, or None

    def index(self) -> dict:
        out = {"sweep": self.name, "file": self.file, "file_sha256": self.file_sha256,
               "variant": self.variant, "reproduces": self.reproduces, "title": self.title,
               "axes": self.axes, "seeds": self.seeds, "entries": self.entries}
        if self.select is not None:
            out["select"] = self.select
        return out


@dataclass
class Plan:
    """The union of several sweeps: runs, upstreams and ensembles keyed by id (each once)."""

    sweeps: dict[str, Sweep] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    upstreams: dict[str, str] = field(default_factory=dict)     # upstream_id -> a run_id
    run_upstream: dict[str, str] = field(default_factory=dict)  # run_id -> upstream_id
    ensembles: dict[str, dict] = field(default_factory=dict)

    def add(self, sweep: Sweep) -> None:
        if sweep.name in self.sweeps:
            other = self.sweeps[sweep.name].file
            raise SweepError(sweep.file, "name", sweep.name,
                             f"sweep name already used by {other}; names must be unique")
        self.sweeps[sweep.name] = sweep
        for rid, cfg in sweep.runs.items():
            if rid not in self.runs:
                self.runs[rid] = cfg
                uid = sweep.run_upstream[rid]
                self.run_upstream[rid] = uid
                self.upstreams.setdefault(uid, rid)
        self.ensembles.update(sweep.ensembles)


def _variant_doc(doc: dict, variant: str, file: str) -> dict:
    """The sweep document with the chosen variant's overlay applied."""
    if variant not in VARIANTS:
        raise SweepError(file, "variant", variant, f"allowed: {list(VARIANTS)}")
    variants = doc.get("variants") or {}
    if variants and variant not in variants:
        raise SweepError(file, f"variants.{variant}", None,
                         f"this sweep defines variants {sorted(variants)} only")
    out = {k: copy.deepcopy(v) for k, v in doc.items() if k != "variants"}
    overlay = variants.get(variant) or {}
    if "base" in overlay:
        try:
            out["base"] = _merge_overrides(out.get("base") or {}, overlay["base"])
        except ConfigError as err:
            raise SweepError(file, f"variants.{variant}.base.{err.field}", err.value,
                             err.rule) from None
    for key in ("axes", "seeds", "ensembles", "select"):
        if key in overlay:
            out[key] = copy.deepcopy(overlay[key])
    if "add_axes" in overlay:
        out["axes"] = list(out.get("axes") or []) + copy.deepcopy(overlay["add_axes"])
    out["_where"] = {"axes": f"variants.{variant}.axes" if "axes" in overlay else "axes",
                     "seeds": f"variants.{variant}.seeds" if "seeds" in overlay else "seeds",
                     "ensembles": (f"variants.{variant}.ensembles" if "ensembles" in overlay
                                   else "ensembles"),
                     "select": f"variants.{variant}.select" if "select" in overlay else "select"}
    out["_n_axes_own"] = len(overlay["axes"]) if "axes" in overlay else len(doc.get("axes") or [])
    return out


def _merge_overrides(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``base`` updated by ``over`` (nested); new dicts along merged paths, leaves shared."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge_overrides(out[k], v)
        else:
            out[k] = v
    return out


def _axis_field(doc: dict, i: int) -> str:
    n_own = doc["_n_axes_own"]
    if i < n_own:
        return f"{doc['_where']['axes']}[{i}]"
    return f"add_axes[{i - n_own}]"


def _group_points(group: Mapping[str, Any]) -> list[dict]:
    """The assignments one axis group contributes: a list of {path: value}."""
    if "name" in group:
        return [{group["name"]: v} for v in group["values"]]
    if "zip" in group:
        names = list(group["zip"])
        return [dict(zip(names, vals)) for vals in zip(*(group["zip"][n] for n in names))]
    return [dict(case) for case in group["cases"]]


def _check_axes(doc: dict, file: str) -> list[str]:
    """Check axis and condition names; return the ordered list of axis names."""
    names: list[str] = []
    for i, group in enumerate(doc.get("axes") or []):
        where = _axis_field(doc, i)
        if "zip" in group:
            lengths = {n: len(v) for n, v in group["zip"].items()}
            if len(set(lengths.values())) > 1:
                raise SweepError(file, f"{where}.zip", lengths,
                                 "zipped axes must have lists of equal length")
        for point_path in ([group["name"]] if "name" in group else
                           list(group["zip"]) if "zip" in group else
                           list(dict.fromkeys(k for case in group["cases"] for k in case))):
            if point_path == "seed":
                raise SweepError(file, where, "seed", "seeds are declared with `seeds:`, "
                                 "not as an axis")
            if not _known_path(point_path):
                raise SweepError(file, f"{where}", point_path,
                                 "unknown run-config field; allowed: method or a field of "
                                 f"{sorted(k for k in DEFAULTS if isinstance(DEFAULTS[k], dict))}"
                                 " (see e3lib/config.py DEFAULTS)")
            if point_path not in names:
                names.append(point_path)
        for cond in (group.get("when") or {}):
            if not _known_path(cond):
                raise SweepError(file, f"{where}.when", cond, "unknown run-config field")
    return names


def _check_select(doc: dict, axes: Sequence[str], file: str) -> dict | None:
    """The sweep's `select:` block with defaults filled in; `over` must name its axes."""
    block = doc.get("select")
    if block is None:
        return None
    where = doc["_where"]["select"]
    for i, axis in enumerate(block["over"]):
        if axis in UNSELECTABLE_AXES:
            raise SweepError(file, f"{where}.over[{i}]", axis,
                             f"{axis} is compared by the tables, not selected; allowed: "
                             f"{[a for a in axes if a not in UNSELECTABLE_AXES]}")
        if axis not in axes:
            raise SweepError(file, f"{where}.over[{i}]", axis,
                             f"not an axis of this sweep (variant); allowed: "
                             f"{[a for a in axes if a not in UNSELECTABLE_AXES]}")
    return {"over": list(block["over"]),
            **{k: block.get(k, v) for k, v in SELECT_DEFAULTS.items()}}


def _seeds(doc: dict) -> list[int]:
    s = doc.get("seeds", 1)
    return list(range(s)) if isinstance(s, int) else list(s)


def expand_doc(doc: Any, file: str, variant: str = "small", name: str | None = None) -> Sweep:
    """Validate and expand one loaded sweep document (see the module docstring)."""
    check_schema(doc, file)
    raw_sha = hashlib.sha256(canonical_json(doc).encode()).hexdigest()
    d = _variant_doc(doc, variant, file)
    name = d.get("name") or name or Path(file).stem
    axis_names = _check_axes(d, file)
    seeds = _seeds(d)
    base = d.get("base") or {}
    if "seed" in base:
        raise SweepError(file, "base.seed", base["seed"], "seeds are declared with `seeds:`")
    try:
        base_cfg = tree.merge_known(DEFAULTS, base)
    except ConfigError as err:
        raise SweepError(file, f"base.{err.field}", err.value, err.rule) from None

    # Points: product of the axis groups in order; a group with `when` only expands the
    # points whose current values (assigned, else the base config's) match.
    points: list[dict] = [{}]
    for i, group in enumerate(d.get("axes") or []):
        assignments = _group_points(group)
        new_points = []
        for p in points:
            current = {path: p.get(path, _get_dotted(base_cfg, path))
                       for path in (group.get("when") or {})}
            if not _matches(group.get("when"), current):
                new_points.append(p)
                continue
            new_points.extend({**p, **a} for a in assignments)
        points = new_points

    sweep = Sweep(name=name, file=file, file_sha256=raw_sha, variant=variant,
                  title=d["title"], reproduces=list(d["reproduces"]), axes=list(axis_names),
                  seeds=seeds)
    ensembles = d.get("ensembles") or []
    if ensembles and ENSEMBLE_SIZE_AXIS not in sweep.axes:
        sweep.axes.append(ENSEMBLE_SIZE_AXIS)
    if "method" not in sweep.axes:   # every table row is keyed by method
        sweep.axes.insert(0, "method")
    sweep.select = _check_select(d, sweep.axes, file)

    seen: dict[tuple, str] = {}

    def add_run(cfg: dict, axes: dict, seed: int) -> str:
        rid = run_id(cfg)
        key = (tuple(axes.items()), seed)      # axis values are scalars
        if key in seen:
            if seen[key] != rid:
                raise SweepError(file, "axes", axes,
                                 f"two runs with seed {seed} have these axis values but "
                                 "different configs; make the field in which they differ an "
                                 "axis")
            return rid
        seen[key] = rid
        if rid not in sweep.runs:
            sweep.runs[rid] = cfg
            sweep.run_upstream[rid] = upstream_id(cfg)
        sweep.entries.append({
            "id": rid, "kind": "run", "seed": seed, "axes": axes,
            "upstream_id": sweep.run_upstream[rid],
            "result": f"{RESULT_PREFIX}/runs/{rid}/results.json", "config": cfg})
        return rid

    resolved_points: dict[str, dict] = {}

    def resolved(point: dict, seed: int, extra: Mapping[str, Any] | None = None) -> dict:
        """The resolved config of a point and seed. The cross-field rules do not involve
        the seed, so each point is resolved (validated) once and copied per seed."""
        full = {**point, **(extra or {})}
        key = tuple(sorted(full.items()))
        if key not in resolved_points:
            over = base
            for path, value in full.items():
                over = _merge_overrides(over, _nested(path, value))
            over = {**over, "seed": seed}
            try:
                resolved_points[key] = resolve(over)
            except ConfigError as err:
                where = f"run ({_fmt_point(point)}, seed={seed})"
                raise SweepError(file, f"{err.field} in {where}", err.value, err.rule) from None
        cfg0 = resolved_points[key]
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg0.items()} | {"seed": seed}

    def axes_of(cfg: dict) -> dict:
        return {a: _get_dotted(cfg, a) for a in sweep.axes}

    point_runs: list[tuple[dict, dict[int, str]]] = []   # (point axes, seed -> run id)
    for p in points:
        by_seed: dict[int, str] = {}
        axes = None
        for s in seeds:
            cfg = resolved(p, s)
            axes = axes_of(cfg)
            by_seed[s] = add_run(cfg, axes, s)
        point_runs.append((p, by_seed))

    for j, ens in enumerate(ensembles):
        where = f"{d['_where']['ensembles']}[{j}]"
        if ens["label"] in {e["axes"].get("method") for e in sweep.entries if e["kind"] == "run"}:
            raise SweepError(file, f"{where}.label", ens["label"],
                             "an ensemble label must differ from the sweep's method names")
        for cond in ens.get("of") or {}:
            if not _known_path(cond):
                raise SweepError(file, f"{where}.of", cond, "unknown run-config field")
        matched = 0
        for p, by_seed in point_runs:
            cfg0 = sweep.runs[by_seed[seeds[0]]]
            if not _matches(ens.get("of"), {c: _get_dotted(cfg0, c) for c in ens.get("of") or {}}):
                continue
            matched += 1
            for size in ens["sizes"]:
                n_rep = ens.get("replicates") or len(seeds) // size
                if len(seeds) < size:
                    raise SweepError(file, f"{where}.sizes", size,
                                     f"an ensemble of {size} runs needs at least {size} seeds; "
                                     f"the sweep has {len(seeds)}")
                for r in range(n_rep):
                    member_seeds = [seeds[(r * size + k) % len(seeds)] for k in range(size)]
                    if len(set(member_seeds)) < size:
                        raise SweepError(file, f"{where}.replicates", ens.get("replicates"),
                                         "too many replicates: members would repeat")
                    members = []
                    for s in member_seeds:
                        if ens["kind"] == "downstream":
                            members.append(by_seed[s])
                        else:
                            cfg = resolved(p, s, {"upstream.seed": s})
                            axes = {**axes_of(cfg), "method": f"{ens['label']}_member"}
                            rid = run_id(cfg)
                            if rid == by_seed[s]:
                                members.append(rid)
                            else:
                                members.append(add_run(cfg, axes, s))
                    ups = {sweep.run_upstream[m] for m in members}
                    if ens["kind"] == "downstream" and len(ups) != 1:
                        raise SweepError(file, f"{where}.kind", "downstream",
                                         "downstream ensemble members must share one upstream "
                                         "but the seeds change it; use kind: upstream")
                    if ens["kind"] == "upstream" and len(ups) != size:
                        raise SweepError(file, f"{where}.kind", "upstream",
                                         "upstream ensemble members must have distinct "
                                         "upstreams (is upstream.checkpoint set?)")
                    eid = ensemble_id(ens["kind"], members)
                    sweep.ensembles[eid] = {"kind": ens["kind"], "members": sorted(members)}
                    axes = {**axes_of(sweep.runs[members[0]]), "method": ens["label"],
                            ENSEMBLE_SIZE_AXIS: size}
                    key = (tuple(axes.items()), r)
                    if key in seen:
                        if seen[key] != eid:
                            raise SweepError(
                                file, f"{where}.label", ens["label"],
                                f"two different ensembles would share one row {dict(axes)}: "
                                f"their members differ only in fields that are not axes of "
                                f"the row (e.g. the method); declare them separately, each "
                                f"with its own label")
                        continue
                    seen[key] = eid
                    sweep.entries.append({
                        "id": eid, "kind": "ensemble", "seed": r, "axes": axes,
                        "members": members, "ensemble_kind": ens["kind"],
                        "result": f"{RESULT_PREFIX}/ensembles/{eid}/results.json"})
        if not matched:
            raise SweepError(file, f"{where}.of", ens.get("of"), "matches no run of the sweep")
    return sweep


def ensemble_id(kind: str, members: Sequence[str]) -> str:
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"ensemble kind {kind!r}; allowed: {list(ENSEMBLE_KINDS)}")
    return short_hash({"kind": kind, "members": sorted(members)})


def load_sweep(path: str | os.PathLike, variant: str = "small") -> Sweep:
    file = str(path)
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise SweepError(file, "(file)", file, "sweep file not found") from None
    except yaml.YAMLError as err:
        raise SweepError(file, "(yaml)", None, f"not valid YAML: {err}") from None
    return expand_doc(doc, file, variant)


def expand_sweeps(paths: Sequence[str | os.PathLike], variant: str = "small") -> Plan:
    """Expand several sweep files into one plan (runs shared between sweeps appear once)."""
    plan = Plan()
    for p in paths:
        plan.add(load_sweep(p, variant))
    return plan


def read_reproduces(path: str | os.PathLike) -> list[str]:
    """The ``reproduces`` list of a sweep file, without expanding it."""
    with open(path) as f:
        return list((yaml.safe_load(f) or {}).get("reproduces") or [])


# ----------------------------------------------------------------------------- files


def config_path(root: str, run: str) -> str:
    return f"{root}/configs/{run}.json"


def upstream_config_path(root: str, up: str) -> str:
    return f"{root}/configs/upstream/{up}.json"


def ensemble_config_path(root: str, ens: str) -> str:
    return f"{root}/configs/ensembles/{ens}.json"


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"


def index_tsv(sweep: Sweep) -> str:
    """One row per entry: id, kind, seed, then the axis values (JSON-encoded)."""
    rows = ["\t".join(["id", "kind", "seed", *sweep.axes, "members"])]
    for e in sweep.entries:
        rows.append("\t".join([e["id"], e["kind"], str(e["seed"]),
                               *(json.dumps(e["axes"][a]) for a in sweep.axes),
                               ",".join(e.get("members", []))]))
    return "\n".join(rows) + "\n"


def write_plan(plan: Plan, results_root: str = "results") -> int:
    """Write configs and indexes of ``plan`` under ``results_root``; returns files written.

    Files whose content is unchanged are left alone (mtimes too), so re-expanding a sweep
    never makes Snakemake rerun anything that did not change.
    """
    root = Path(results_root)
    written = 0
    # Files named by an id hold content that the id is a hash of: existing ones are right.
    # (Any run of an upstream serves as its config, since the id hashes what it reads.)
    by_id = [(config_path(str(root), rid), cfg) for rid, cfg in plan.runs.items()]
    by_id += [(upstream_config_path(str(root), uid), plan.runs[rid])
              for uid, rid in plan.upstreams.items()]
    by_id += [(ensemble_config_path(str(root), eid), ens) for eid, ens in plan.ensembles.items()]
    existing: dict[str, set[str]] = {}
    for d in {os.path.dirname(p) for p, _ in by_id}:
        os.makedirs(d, exist_ok=True)
        existing[d] = set(os.listdir(d))
    for path, obj in by_id:
        if os.path.basename(path) not in existing[os.path.dirname(path)]:
            written += _atomic_write_if_changed(Path(path), _json_text(obj))
    for sweep in plan.sweeps.values():
        d = root / "sweeps" / sweep.name
        # The index is rewritten only when its fingerprint (the sweep file, the variant and
        # every entry's id and axis values) changed; entry ids hash the configs.
        fingerprint = short_hash([sweep.file_sha256, sweep.variant, sweep.axes, sweep.seeds,
                                  sweep.select,
                                  [(e["id"], e["seed"], e["axes"]) for e in sweep.entries]], 64)
        stamp = d / "index.fingerprint"
        if (stamp.exists() and stamp.read_text() == fingerprint
                and (d / "index.json").exists() and (d / "index.tsv").exists()):
            continue
        # Compact (C encoder): a paper-scale index holds thousands of resolved configs.
        written += _atomic_write_if_changed(d / "index.json", canonical_json(sweep.index()) + "\n")
        written += _atomic_write_if_changed(d / "index.tsv", index_tsv(sweep))
        _atomic_write_if_changed(stamp, fingerprint)
    return written


# ----------------------------------------------------------------------------- resources

# Per model size: accelerator for fine-tuning and for pretraining (Cloud TPU type, Slurm
# GPUs), host memory in MB, and minutes per 1000 fine-tuning steps at the paper's setting
# (batch 512, 384 px). Estimates to start from; sites override them with set-resources.
SIZE_RESOURCES: dict[str, dict[str, Any]] = {
    "tiny": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=2000, min_per_kstep=1),
    "mini": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=3000, min_per_kstep=2),
    "demo": dict(tpu=("v5litepod-1", "v5litepod-1"), gpus=(0, 0), mem_mb=4000, min_per_kstep=3),
    "S/32": dict(tpu=("v3-8", "v3-32"), gpus=(1, 8), mem_mb=32000, min_per_kstep=4),
    "B/32": dict(tpu=("v3-8", "v3-64"), gpus=(1, 8), mem_mb=48000, min_per_kstep=8),
    "L/32": dict(tpu=("v3-32", "v3-128"), gpus=(4, 16), mem_mb=64000, min_per_kstep=20),
    "B/16": dict(tpu=("v3-32", "v3-128"), gpus=(4, 16), mem_mb=64000, min_per_kstep=25),
    "L/16": dict(tpu=("v3-64", "v3-256"), gpus=(8, 32), mem_mb=96000, min_per_kstep=60),
    "H/14": dict(tpu=("v3-128", "v3-512"), gpus=(16, 64), mem_mb=128000, min_per_kstep=150),
}
STAGES = ("finetune", "upstream")   # order of the (fine-tune, pretraining) pairs above


def job_resources(cfg: Mapping[str, Any], stage: str, attempt: int = 1) -> dict[str, Any]:
    """Resources of one job from its run config; runtime and memory grow with ``attempt``.

    Returns tpu_type, gpus, mem_mb, runtime (minutes). Runtime scales with the stage's
    steps relative to 1000 (at least 10 minutes per attempt).
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; allowed: {list(STAGES)}")
    table = SIZE_RESOURCES[cfg["model"]["size"]]
    i = STAGES.index(stage)
    steps = cfg["upstream"]["steps"] if stage == "upstream" else cfg["finetune"]["steps"]
    # Members are computed side by side (tiled tokens), so cost grows with M.
    members = max(1, cfg["model"]["ensemble_size"])
    minutes = max(10, math.ceil(table["min_per_kstep"] * steps / 1000 * (1 + 0.5 * (members - 1))))
    return {"tpu_type": table["tpu"][i], "gpus": table["gpus"][i],
            "mem_mb": table["mem_mb"] * attempt, "runtime": minutes * attempt}


# ----------------------------------------------------------------------------- CLI


def cli_expand(argv: list[str]) -> int:
    """e3 expand SWEEP.yaml [...] --results-root results [--variant small|paper]"""
    ap = argparse.ArgumentParser(prog="e3 expand", description=cli_expand.__doc__)
    ap.add_argument("sweeps", nargs="+", help="sweep YAML files")
    ap.add_argument("--results-root", default="results")
    ap.add_argument("--variant", default="small", choices=VARIANTS)
    args = ap.parse_args(argv)
    try:
        plan = expand_sweeps(args.sweeps, args.variant)
    except SweepError as err:
        print(f"e3 expand: {err}", file=sys.stderr)
        return 2
    written = write_plan(plan, args.results_root)
    for s in plan.sweeps.values():
        n_runs = sum(e["kind"] == "run" for e in s.entries)
        print(f"{s.name}: {n_runs} runs, {len(s.entries) - n_runs} ensembles -> "
              f"{args.results_root}/sweeps/{s.name}/index.json")
    print(f"{len(plan.runs)} distinct runs, {len(plan.upstreams)} upstreams; "
          f"{written} files written")
    return 0
