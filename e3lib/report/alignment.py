"""Our rows ↔ the paper's rows, matched by meaning; and the configuration that ran.

Matching (``match_reference``): a paper row matches our row when every key field the
row shares with the paper row agrees (≥ 1 shared; the paper row sharing the most wins,
ties to the earlier one). Three refinements, declared in ``reference/{id}.yaml``:

``align``     ``{axis, denominator, paper_denominator, label}``: the axis is compared as
              the ratio axis / denominator, the relationship the table is about, not as
              an absolute value. Ours: the denominator from the row key, else from the
              configuration that ran, or "$max" = the largest value of ``axis`` among our
              rows; the paper's: ``paper_denominator``. Tables 3/18: o / E (our o = 2 of
              E = 8 is the paper's o = 8 of E = 32); Table 17: E / E_max.
``context``   per paper row, configuration fields (not axes) the run must have, read from
              the row key, else the configuration that ran, else the file's ``defaults``.
``readings``  per paper row, other ``{key, context}`` under which the same printed values
              hold (Table 22's Partitioning: K=1 per subset, or K·M = 2 in total).

``run_configuration`` gives the fields every run of a sweep shares (``RUN_FIELDS``): from
the dataset attribute ``run_config`` (JSON) when present, else from the runs'
results.json files named in ``result_path``; ``upstream.seed`` is given either way, as the
list of every pretraining seed when the runs (or ensemble members) have several.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from e3lib import tree
from e3lib.aggregate import STATUS_FLAGS, axis_label, dataset_axes

RUN_FIELDS = (
    "model.size",
    "model.num_experts",
    "model.num_selected",
    "model.ensemble_size",
    "model.partition_k",
    "data.dataset",
    "data.image_size",
    "finetune.steps",
    "upstream.steps",
    "upstream.renderings",
    "upstream.seed",
)
_PLAIN = {"upstream.renderings": 1}  # not stated at these values: nothing to say
_NAMES = {
    "model.size": "size",
    "model.num_experts": "E",
    "model.num_selected": "K",
    "model.ensemble_size": "M",
    "model.partition_k": "partition K",
    "data.dataset": "data",
    "data.image_size": "image px",
    "finetune.steps": "fine-tune steps",
    "upstream.steps": "upstream steps",
    "upstream.renderings": "upstream renderings",
    "upstream.seed": "upstream seed",
}


# --------------------------------------------------------------------------- configuration


def _configs_of(result: Mapping) -> list[dict]:
    cfg = result.get("config") or {}
    return list(cfg.get("run_configs") or [cfg])  # an ensemble: its members' configs


def run_configuration(ds: xr.Dataset) -> dict[str, Any]:
    """{dotted field: value} of the RUN_FIELDS with one value over every ok run."""
    if ds.attrs.get("run_config"):
        flat = json.loads(ds.attrs["run_config"])
        return {k: v for k, v in flat.items() if k in RUN_FIELDS}
    ok = np.asarray(ds["status"].values == STATUS_FLAGS["ok"]).ravel()
    paths = np.asarray(ds["result_path"].values).ravel()[ok]
    seen: dict[str, set[str]] = {}
    values: dict[str, Any] = {}
    for path in sorted(set(paths.tolist())):
        p = Path(path)
        if not p.is_file():
            continue
        for cfg in _configs_of(json.loads(p.read_text())):
            for f in RUN_FIELDS:
                v = tree.get(cfg, f, None)
                if f == "upstream.seed" and tree.get(cfg, "upstream.checkpoint", None):
                    continue  # a published checkpoint: no pretraining seed
                if v is not None:
                    seen.setdefault(f, set()).add(json.dumps(v))
                    values[f] = v
    out = {f: values[f] for f in RUN_FIELDS if len(seen.get(f, ())) == 1}
    if len(seen.get("upstream.seed", ())) > 1:  # several pretrainings: list them all
        out["upstream.seed"] = sorted(json.loads(v) for v in seen["upstream.seed"])
    return out


# Said of a single upstream seed: every seed of the page fine-tuned from that one pretraining
# per configuration, so its spreads and tests leave out the variance between pretrainings.
ONE_PRETRAINING = "shared by all seeds: the spread between pretrainings is not in the tests"


def _describe_field(f: str, v: Any) -> str:
    if isinstance(v, list):  # "upstream seeds 0, 1, 2 (3)"
        return f"{_NAMES[f]}s {', '.join(str(x) for x in v)} ({len(v)})"
    if f == "upstream.seed":  # "upstream seed 0 (shared by all seeds: ...)"
        return f"{_NAMES[f]} {v} ({ONE_PRETRAINING})"
    return f"{_NAMES[f]} {v}" if _NAMES[f][0].islower() else f"{_NAMES[f]}={v}"


def describe_run(ds: xr.Dataset, config: Mapping[str, Any]) -> str:
    """``size tiny, E=8, data demo, ...; axes: K, o; seeds 0, 1, 2 (3)`` for a page."""
    axes = dataset_axes(ds)
    fixed = [
        _describe_field(f, config[f])
        for f in RUN_FIELDS
        if f in config and f not in axes and _PLAIN.get(f, object()) != config[f]
    ]
    seeds = json.loads(ds.attrs.get("seeds_requested", "[]"))
    text = ", ".join(fixed) if fixed else "configuration not recorded in the results"
    text += f"; axes: {', '.join(a.split('.')[-1] for a in axes)}"
    return text + f"; seeds {', '.join(str(s) for s in seeds)} ({len(seeds)})"


# --------------------------------------------------------------------------- alignment


def _ratio(value: Any, denominator: Any) -> Fraction | None:
    try:
        num, den = Fraction(str(value)), Fraction(str(denominator))
    except (ValueError, ZeroDivisionError):
        return None
    return num / den if den else None


def ratio_text(r: Fraction | None) -> str:
    return "—" if r is None else str(r)


def our_denominators(
    align: Mapping | None, keys: Sequence[Mapping[str, str]], config: Mapping[str, Any]
) -> dict[int, Any]:
    """Denominator of the aligned axis for each of our row keys (by position)."""
    if not align:
        return {}
    den = align["denominator"]
    if den == "$max":
        vals = [_ratio(k[align["axis"]], 1) for k in keys if align["axis"] in k]
        top = max((v for v in vals if v is not None), default=None)
        return {i: top for i in range(len(keys))}
    return {i: k.get(den, config.get(den)) for i, k in enumerate(keys)}


def our_ratio(align: Mapping, key: Mapping[str, str], denominator: Any) -> Fraction | None:
    if align["axis"] not in key or denominator is None:
        return None
    return _ratio(key[align["axis"]], denominator)


def paper_ratio(align: Mapping, key: Mapping[str, Any]) -> Fraction | None:
    if align["axis"] not in key:
        return None
    return _ratio(key[align["axis"]], align["paper_denominator"])


def _candidates(prow: Mapping) -> list[tuple[Mapping, Mapping, str]]:
    """(key, context, reading label) of a paper row and of each of its readings."""
    out = [(prow["key"], prow.get("context", {}), "")]
    for rd in prow.get("readings", []):
        out.append((rd["key"], rd.get("context", {}), rd.get("label", "")))
    return out


def match_reference(
    row_key: Mapping[str, str],
    ref: Mapping | None,
    config: Mapping[str, Any] | None = None,
    denominator: Any = None,
) -> tuple[dict | None, str]:
    """The matching paper row (or None) and a note saying how it was matched."""
    if not ref:
        return None, ""
    config = config or {}
    align = ref.get("align")
    defaults = ref.get("defaults", {})
    best, best_score, note = None, 0, ""
    for prow in ref["rows"]:
        for key, context, reading in _candidates(prow):
            ok = True
            for f, want in context.items():
                have = row_key.get(f, config.get(f, defaults.get(f)))
                ok &= have is not None and axis_label(have) == axis_label(want)
            shared = [k for k in key if k in row_key]
            for k in shared:
                if align and k == align["axis"]:
                    ours = our_ratio(align, row_key, denominator)
                    ok &= ours is not None and ours == paper_ratio(align, key)
                else:
                    ok &= axis_label(key[k]) == row_key[k]
            if ok and shared and len(shared) > best_score:
                best, best_score = prow, len(shared)
                note = reading
                if align and align["axis"] in shared:
                    a = align["axis"].split(".")[-1]
                    note = (
                        f"{align['label']} = {ratio_text(our_ratio(align, row_key, denominator))}"
                        f": ours {a}={row_key[align['axis']]} ↔ paper {a}="
                        f"{axis_label(key[align['axis']])}" + (f"; {reading}" if reading else "")
                    )
    return best, note
