"""The paper's GFLOPs (Tables 20-22) beside this toolkit's analytic count.

``paper_gflops(cfg)`` finds the row of Table 20 (index dispatch) or 22 (einsum dispatch) a
run config matches; ``compare_with_paper(table_id)`` prices every row of a table with
``e3lib.cost.analytic`` (Table 21: percentage differences E³ vs V-MoE), once per reading of
a row that carries several (``readings``: Table 22's Partitioning, ``model.partition_k``
per_subset at K=1 or total at K=2). The report's tables and ``e3 flops`` show them.
Reference values: ``e3lib/report/reference/table2*.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e3lib import tree
from e3lib.config import resolve
from e3lib.cost.analytic import analytic_gflops
from e3lib.errors import ConfigError
from e3lib.run_config import RunConfig
from e3lib.sweep.ensembles import ENSEMBLE_RUNS_AXIS

REFERENCE_DIR = Path(__file__).parent / "reference"


def _load_reference(table_id: str) -> dict:
    import yaml

    path = REFERENCE_DIR / f"{table_id}.yaml"
    with open(path) as f:
        return yaml.safe_load(f)


def _flat(cfg: RunConfig) -> dict:
    """Dotted run-config fields as the reference rows key them, plus ``method``."""
    return tree.flatten({k: v for k, v in cfg.to_dict().items() if k != "seed"})


def _readings(row: Mapping[str, Any]) -> list[tuple[dict, str]]:
    """(key with context, reading label) under which a row's printed value holds: its own
    key, then each of its ``readings`` (Table 22's Partitioning: K per subset or in total)."""
    out = [({**row["key"], **row.get("context", {})}, "")]
    out += [
        ({**rd["key"], **rd.get("context", {})}, rd.get("label", ""))
        for rd in row.get("readings", [])
    ]
    return out


def paper_gflops(
    cfg: RunConfig,
    deep_ensemble: int = 1,
    dispatch: str = "indices",
    ignore: tuple[str, ...] = (),
) -> tuple[str, str, float, dict] | None:
    """The paper's GFLOPs for this config, if a row of Table 20 (index dispatch) or Table 22
    (einsum dispatch) matches it: (table id, row label, value, differing fields) or None.

    A row matches when the table's ``setting_fields`` and the row's key (or one of its
    readings) all equal the config's, compared resolved (a setting of null, "None =
    derived", compares as its derived value); fields named in ``ignore`` may differ and are
    returned as {field: (paper value, config value)}.
    """
    flat = _flat(cfg)
    flat[ENSEMBLE_RUNS_AXIS] = deep_ensemble  # a deep ensemble of that many runs
    table_id = "table20" if dispatch == "indices" else "table22"
    table = _load_reference(table_id)
    for row in table["rows"]:
        for key, reading in _readings(row):
            row_cfg, n = row_config(table, key)
            paper = _flat(row_cfg)
            paper[ENSEMBLE_RUNS_AXIS] = n
            wanted = [*table.get("setting_fields", {}), *key, ENSEMBLE_RUNS_AXIS]
            differing = {
                k: (paper.get(k), flat.get(k)) for k in wanted if flat.get(k) != paper.get(k)
            }
            if set(differing) <= set(ignore):
                label = f"{row['label']} ({reading})" if reading else row["label"]
                return table_id, label, row["values"]["gflops"][0], differing
    return None


def row_config(table: Mapping[str, Any], row_key: Mapping[str, Any]) -> tuple[RunConfig, int]:
    """The resolved run config of a Table 20/22 row, and its deep-ensemble size."""
    flat = dict(table.get("setting_fields", {}))
    flat.update({k: v for k, v in row_key.items() if k != ENSEMBLE_RUNS_AXIS})
    source = str(REFERENCE_DIR / f"{table['id']}.yaml")
    return resolve(tree.unflatten(flat), source=source), int(row_key.get(ENSEMBLE_RUNS_AXIS, 1))


def compare_with_paper(table_id: str, num_classes: int = 1000) -> list[dict]:
    """Our analytic GFLOPs beside every cell of Table 20 or 22 (Table 21: percentages).

    Each item: label, key, paper, ours, and ``rel`` = ours/paper − 1 (Tables 20, 22) or
    ``diff`` = ours − paper in percentage points (Table 21).
    """
    if table_id == "table21":
        return _compare_table21(num_classes)
    dispatch = {"table20": "indices", "table22": "einsum"}.get(table_id)
    if dispatch is None:
        raise ConfigError("table_id", table_id, "allowed: ['table20', 'table21', 'table22']")
    table = _load_reference(table_id)
    out = []
    for row in table["rows"]:
        for key, reading in _readings(row):
            cfg, n = row_config(table, key)
            ours = n * analytic_gflops(cfg, num_classes, dispatch)
            paper = row["values"]["gflops"][0]
            label = f"{row['label']} ({reading})" if reading else row["label"]
            out.append(dict(label=label, key=key, paper=paper, ours=ours, rel=ours / paper - 1))
    return out


def _compare_table21(num_classes: int) -> list[dict]:
    out = []
    for row in _load_reference("table21")["rows"]:
        size = row["key"]["model.size"]
        base = {
            "data.image_size": 384,
            "model.num_experts": 32,
            "model.size": size,
            "model.num_selected": 1,
        }
        e3_flat = dict(base, method="e3", **{"model.ensemble_size": 2})
        e3 = analytic_gflops(resolve(tree.unflatten(e3_flat)), num_classes)
        vmoe = analytic_gflops(resolve(tree.unflatten(dict(base, method="vmoe"))), num_classes)
        other = vmoe if row["key"]["comparison"] == "e3_vs_vmoe" else 2 * vmoe
        ours = 100 * (e3 - other) / other
        paper = row["values"]["delta_gflops"][0]
        out.append(
            dict(label=row["label"], key=row["key"], paper=paper, ours=ours, diff=ours - paper)
        )
    return out
