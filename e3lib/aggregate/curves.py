"""Training curves of a sweep → one xarray Dataset (``curves.nc`` beside ``dataset.nc``).

Notation: R curves (the sweep's finished runs, then the upstreams they start from), P points
(the longest curve's; shorter ones are NaN-padded), Q held-out points (likewise).

Layout (``format_version`` 1)
-----------------------------
dims        ``curve`` (R), ``point`` (P), ``heldout_point`` (Q)
curves      ``step``, ``loss``, ``ce``, ``aux_loss``, ``lr`` (curve, point): e3lib.curves
            points (step = steps done when the point closed); NaN past a curve's end
held-out    ``heldout_step``, ``heldout_loss``, ``heldout_error`` (curve, heldout_point):
            the held-out points of a run (its validation split) or an upstream (its
            held-out examples) that recorded them (NaN for the others),
            ``heldout_plateau_drop``, ``heldout_plateaued`` (curve; -1 = none)
per curve   ``kind`` ("run" | "upstream"), ``id`` (run or upstream id), ``group`` (the
            run's axis values "axis=value, ..."; for an upstream its pretraining settings
            but the seed, ``upstream_groups``), ``seed`` (the run's or the upstream's; -1
            for an upstream whose done file has no config), one string variable per sweep
            axis (``axis_dim``; "" for an upstream), ``upstream_id``, ``note`` ("" or why
            there is no curve: a result written before curves were recorded),
            ``final_loss`` (last point),
            ``plateau_drop``, ``plateaued`` (1 yes, 0 no, -1 unknown)
attrs       sweep, axes (JSON), plateau_frac, plateau_threshold, format_version

Only runs with status ok are curves here (the others are counted in dataset.nc). An
upstream given as a checkpoint file (no pretraining) has no curve and is not listed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from e3lib.aggregate.axes import axis_dim, axis_label
from e3lib.aggregate.dataset import resolve_result_path
from e3lib.aggregate.formats import entry_status
from e3lib.aggregate.schemas import read_json
from e3lib.config import upstream_id
from e3lib.curves import (
    CURVES_FILE,
    HELDOUT,
    PLATEAU_FRAC,
    PLATEAU_THRESHOLD,
    QUANTITIES,
    plateau,
    read_curve,
)

CURVES_DATASET_FORMAT = 1
NO_CURVE = f"no {CURVES_FILE} (a result written before training curves were recorded)"


def curves_path(dataset: str | Path) -> Path:
    """The curves file beside a sweep dataset: ``.../dataset.nc`` → ``.../curves.nc``."""
    return Path(dataset).with_name("curves.nc")


def _upstream_of(entry: Mapping[str, Any], result: Mapping[str, Any]) -> str | None:
    if result.get("upstream_id"):
        return str(result["upstream_id"])
    config = result.get("config") or entry.get("config")
    if config and not (config.get("upstream") or {}).get("checkpoint"):
        return upstream_id(config)
    return None


def _row(kind: str, ident: str, group: str, seed: int, curve: dict | None, **extra) -> dict:
    row = {"kind": kind, "id": ident, "group": group, "seed": seed, "curve": curve}
    row.update(extra)
    return row


def build_curves(index: Mapping[str, Any], results_root: str | Path) -> xr.Dataset:
    """Read the curves.json of every finished run of the sweep and of their upstreams."""
    root = Path(results_root)
    axes: list[str] = list(index["axes"])
    rows, upstreams = [], {}
    for entry in index["entries"]:
        if entry.get("kind", "run") != "run":
            continue  # deep ensembles train nothing of their own
        result_path = resolve_result_path(entry["result"], root)
        state, _ = entry_status(result_path.parent / "done.json")
        if state != "ok" or not result_path.exists():
            continue
        result = read_json(result_path)
        labels = {a: axis_label(entry["axes"].get(a)) for a in axes}
        group = ", ".join(f"{a}={labels[a]}" for a in axes) or "all runs"
        curve = read_curve(result_path.parent / CURVES_FILE)
        up = _upstream_of(entry, result)
        if up is not None:
            upstreams.setdefault(up, None)
        rows.append(
            _row("run", entry["id"], group, int(entry["seed"]), curve, axes=labels, up=up or "")
        )
    done = {}
    for up in upstreams:
        up_dir = root / "upstream" / up
        if not (up_dir / "done.json").exists():
            note = f"no upstream done file {up_dir / 'done.json'}"
            rows.append(_row("upstream", up, f"upstream {up}", -1, None, axes={}, up=up, note=note))
        elif "train" in (d := read_json(up_dir / "done.json")):  # else a registered checkpoint
            done[up] = d
    labels = upstream_groups({up: d.get("config") for up, d in done.items()})
    for up, d in done.items():
        seed = int((d.get("config") or {}).get("seed", -1))
        curve = read_curve(root / "upstream" / up / CURVES_FILE)
        rows.append(_row("upstream", up, labels[up], seed, curve, axes={}, up=up))
    return _to_dataset(index, axes, rows)


def upstream_groups(configs: Mapping[str, Mapping[str, Any] | None]) -> dict[str, str]:
    """Group label of each upstream (id → its done file's config): its pretraining settings
    but the seed, so the seeds of one configuration form one group and two configurations
    never share a label. Shown: its method and size, then every other field whose value
    differs among the upstreams of one method ("upstream method=vmoe, size=tiny,
    num_selected=2"; a None or absent value is left out). An upstream whose done file has
    no config (written before they carried one) is a group of its own, "upstream <id>"."""
    known = {up: c for up, c in configs.items() if c}
    values: dict[str, dict[Any, set[str]]] = {k: {} for c in known.values() for k in c}
    for c in known.values():
        for k, by_method in values.items():  # field → method → its values, as JSON
            by_method.setdefault(c.get("method"), set()).add(json.dumps(c.get(k)))
    shown = ["method", "size"] + [
        k
        for k, by_method in values.items()
        if k not in ("method", "size", "seed") and any(len(v) > 1 for v in by_method.values())
    ]
    labels = {up: f"upstream {up}" for up in configs}
    for up, c in known.items():
        labels[up] = "upstream " + ", ".join(f"{k}={c[k]}" for k in shown if c.get(k) is not None)
    return labels


def _to_dataset(index: Mapping[str, Any], axes: list[str], rows: list[dict]) -> xr.Dataset:
    R = len(rows)
    P = max([1] + [len(r["curve"]["step"]) for r in rows if r["curve"]])
    values = {q: np.full((R, P), np.nan) for q in ("step",) + QUANTITIES}  # (R, P)
    Q = max([1] + [len(r["curve"].get("heldout", {}).get("step", [])) for r in rows if r["curve"]])
    held = {q: np.full((R, Q), np.nan) for q in ("step",) + HELDOUT}  # (R, Q)
    final = np.full(R, np.nan)
    drop, held_drop = np.full(R, np.nan), np.full(R, np.nan)
    plateaued, held_plateaued = np.full(R, -1, dtype=np.int8), np.full(R, -1, dtype=np.int8)
    notes = []
    for i, r in enumerate(rows):
        c = r["curve"]
        notes.append("" if c else r.get("note", NO_CURVE))
        if not c:
            continue
        n = len(c["step"])
        for q in values:
            values[q][i, :n] = np.asarray(c[q], dtype=np.float64)
        if n:
            final[i] = float(c["loss"][-1])
        p = plateau(c["loss"])
        if p["drop"] is not None:
            drop[i], plateaued[i] = p["drop"], int(p["plateaued"])
        h = c.get("heldout")
        if h:
            for q in held:
                held[q][i, : len(h["step"])] = np.asarray(h[q], dtype=np.float64)
            p = plateau(h["loss"])
            if p["drop"] is not None:
                held_drop[i], held_plateaued[i] = p["drop"], int(p["plateaued"])
    data_vars: dict[str, Any] = {
        q: (("curve", "point"), values[q], {"kind": "curve"}) for q in values
    }
    for q in held:
        data_vars[f"heldout_{q}"] = (("curve", "heldout_point"), held[q], {"kind": "heldout"})
    per_curve = {
        "kind": [r["kind"] for r in rows],
        "id": [r["id"] for r in rows],
        "group": [r["group"] for r in rows],
        "upstream_id": [r["up"] for r in rows],
        "note": notes,
    }
    for name, vals in per_curve.items():
        data_vars[name] = ("curve", np.asarray(vals, dtype=str).reshape(R))
    for a in axes:
        data_vars[axis_dim(a)] = (
            "curve",
            np.asarray([r["axes"].get(a, "") for r in rows], dtype=str).reshape(R),
            {"axis_name": a},
        )
    data_vars["seed"] = ("curve", np.asarray([r["seed"] for r in rows], dtype=np.int64))
    data_vars["final_loss"] = ("curve", final)
    data_vars["plateau_drop"] = ("curve", drop)
    data_vars["plateaued"] = (
        "curve",
        plateaued,
        {"flag_values": np.asarray([-1, 0, 1], np.int8), "flag_meanings": "unknown no yes"},
    )
    data_vars["heldout_plateau_drop"] = ("curve", held_drop)
    data_vars["heldout_plateaued"] = ("curve", held_plateaued, data_vars["plateaued"][2])
    attrs = {
        "format_version": CURVES_DATASET_FORMAT,
        "sweep": index["sweep"],
        "axes": json.dumps(axes),
        "plateau_frac": PLATEAU_FRAC,
        "plateau_threshold": PLATEAU_THRESHOLD,
    }
    return xr.Dataset(data_vars, attrs=attrs)
