"""Loading and validating the declarative report data: table specs and paper references.

``tables.yaml`` holds one spec per table id (columns, layout, claims to check);
``reference/{id}.yaml`` holds the paper's numbers of that table. Both are checked against
JSON schemas here, so a typo is an error naming the file, the field and the allowed values.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

HERE = Path(__file__).parent
SPEC_FILE = HERE / "tables.yaml"
REFERENCE_DIR = HERE / "reference"

# The table ids `e3 report --only` accepts (sweeps name them in `reproduces:`).
TABLE_IDS = (
    "table2",
    "table3",
    "table4",
    "table5",
    "table12",
    "table13",
    "table14",
    "table15",
    "table17",
    "table18",
    "table19",
    "table20",
    "table22",
    "table23",
    "table25",
    "table26",
    "table27",
    "table28",
    "table29",
    "table30",
    "table31",
    "table32",
    "table33",
    "table34",
    "table35",
    "table36",
    "figure2",
    "figure10",
    "demo",
)
VERDICT_TESTS = ("better", "ratio_above", "trend", "flat", "no_difference", "best", "monotone")
EQUIVALENCE_TESTS = ("flat", "no_difference")
DEFAULT_MIN_SEEDS = 3  # seed values per compared cell before any verdict
DEFAULT_MARGIN_REL = 0.02  # equivalence margin: 2 % of |mean| of the reference cell

_selector = {"type": "object", "minProperties": 1}
_verdict = {
    "type": "object",
    "required": ["claim", "test", "metric"],
    "additionalProperties": False,
    "properties": {
        "claim": {"type": "string"},
        "test": {"enum": list(VERDICT_TESTS)},
        "metric": {"type": "string"},
        "a": _selector,
        "b": _selector,
        "factor": {"type": "number", "exclusiveMinimum": 0},
        "axis": {"type": "string"},
        "direction": {"enum": ["increasing", "decreasing"]},
        "up_to": {"type": "number"},
        "group_by": {"type": "array", "items": {"type": "string"}},
        "margin": {"type": "number", "exclusiveMinimum": 0},
        "margin_rel": {"type": "number", "exclusiveMinimum": 0},
    },
    "allOf": [
        {
            "if": {"properties": {"test": {"enum": ["better", "ratio_above", "no_difference"]}}},
            "then": {"required": ["a", "b"]},
        },
        {
            "if": {"properties": {"test": {"const": "ratio_above"}}},
            "then": {"required": ["factor"]},
        },
        {"if": {"properties": {"test": {"const": "best"}}}, "then": {"required": ["a"]}},
        {
            "if": {"properties": {"test": {"enum": ["trend", "monotone"]}}},
            "then": {"required": ["axis", "direction"]},
        },
        {
            "if": {"properties": {"test": {"const": "flat"}}},
            "then": {"required": ["axis", "up_to"]},
        },
        {
            "if": {"properties": {"test": {"not": {"enum": list(EQUIVALENCE_TESTS)}}}},
            "then": {"not": {"anyOf": [{"required": ["margin"]}, {"required": ["margin_rel"]}]}},
        },
    ],
}
SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["metrics", "select", "tables"],
    "additionalProperties": False,
    "properties": {
        "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "min_seeds": {"type": "integer", "minimum": 2},
        "margin_rel": {"type": "number", "exclusiveMinimum": 0},
        "metrics": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["label"],
                "additionalProperties": False,
                "properties": {
                    "label": {"type": "string"},
                    "better": {"enum": ["lower", "higher"]},
                    "scale": {"type": "number"},
                    "digits": {"type": "integer"},
                    "sig": {"type": "integer", "minimum": 1},
                    "bold": {"type": "boolean"},
                    "cost": {"type": "boolean"},
                    "variable": {"type": "string"},
                    "select": {"type": "object"},
                },
            },
        },
        "select": {"type": "object"},
        "tables": {
            "type": "object",
            "propertyNames": {"enum": list(TABLE_IDS)},
            "additionalProperties": {
                "type": "object",
                "required": ["columns"],
                "additionalProperties": False,
                "properties": {
                    "title": {"type": "string"},
                    "layout": {"enum": ["rows", "pivot"]},
                    "pivot": {"type": "string"},
                    "merge": {"type": "array", "items": {"type": "string"}},
                    "where": {
                        "oneOf": [
                            {"type": "object"},
                            {"type": "array", "items": {"type": "object"}, "minItems": 1},
                        ]
                    },
                    "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "extra_dims": {
                        "type": "array",
                        "items": {
                            "enum": ["member", "split", "corruption", "severity", "task", "shots"]
                        },
                    },
                    "bold": {"type": "boolean"},
                    "analytic_flops": {"type": "boolean"},
                    "verdicts": {"type": "array", "items": _verdict},
                },
                "if": {"properties": {"layout": {"const": "pivot"}}, "required": ["layout"]},
                "then": {"required": ["pivot"]},
            },
        },
    },
}

REFERENCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "title", "source", "key", "rows"],
    "properties": {
        "id": {"enum": list(TABLE_IDS) + ["table21"]},
        "title": {"type": "string"},
        "source": {"type": "string"},
        "setting": {"type": "string"},
        "note": {"type": "string"},
        "key": {"type": "array", "items": {"type": "string"}},
        "units": {"type": "object"},
        "align": {
            "type": "object",
            "additionalProperties": False,
            "required": ["axis", "denominator", "paper_denominator", "label"],
            "properties": {
                "axis": {"type": "string"},
                "denominator": {"type": "string"},
                "paper_denominator": {"type": "number", "exclusiveMinimum": 0},
                "label": {"type": "string"},
            },
        },
        "defaults": {"type": "object"},
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "values"],
                "properties": {
                    "key": {"type": "object"},
                    "label": {"type": "string"},
                    "context": {"type": "object"},
                    "readings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["key"],
                            "additionalProperties": False,
                            "properties": {
                                "key": {"type": "object"},
                                "context": {"type": "object"},
                                "label": {"type": "string"},
                            },
                        },
                    },
                    "values": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "array",
                            "minItems": 2,
                            "maxItems": 2,
                            "prefixItems": [{"type": "number"}, {"type": ["number", "null"]}],
                        },
                    },
                },
            },
        },
    },
}


class SpecError(ValueError):
    """Invalid table spec or reference file; the message names the file and the field."""


def _check(doc: Any, schema: dict, path: Path) -> None:
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as err:
        field = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise SpecError(f"{path}: field {field}: {err.message}") from None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({err})") from None


def load_spec(path: str | Path = SPEC_FILE) -> dict:
    path = Path(path)
    spec = _load_yaml(path)
    _check(spec, SPEC_SCHEMA, path)
    for tid, table in spec["tables"].items():
        for col in table["columns"]:
            if col not in spec["metrics"]:
                raise SpecError(
                    f"{path}: field tables.{tid}.columns: unknown metric {col!r}; "
                    f"allowed: {sorted(spec['metrics'])}"
                )
        for i, v in enumerate(table.get("verdicts", [])):
            if v["metric"] not in spec["metrics"]:
                raise SpecError(
                    f"{path}: field tables.{tid}.verdicts.{i}.metric: unknown metric "
                    f"{v['metric']!r}; allowed: {sorted(spec['metrics'])}"
                )
            deterministic = bool(spec["metrics"][v["metric"]].get("cost"))
            if (v["test"] == "monotone") != deterministic:
                allowed = (
                    ["monotone"] if deterministic else sorted(set(VERDICT_TESTS) - {"monotone"})
                )
                raise SpecError(
                    f"{path}: field tables.{tid}.verdicts.{i}.test: {v['test']!r} on "
                    f"{'cost' if deterministic else 'seed-dependent'} metric {v['metric']!r}; "
                    f"allowed: {allowed}"
                    f" (costs are deterministic: checked without seeds)"
                )
    spec.setdefault("alpha", 0.05)
    spec.setdefault("min_seeds", DEFAULT_MIN_SEEDS)
    spec.setdefault("margin_rel", DEFAULT_MARGIN_REL)
    return spec


@cache
def _default_spec() -> dict:
    return load_spec(SPEC_FILE)


def default_spec() -> dict:
    return _default_spec()


def load_reference(table_id: str, directory: str | Path = REFERENCE_DIR) -> dict | None:
    """The paper's values for ``table_id``, or None when none are transcribed."""
    path = Path(directory) / f"{table_id}.yaml"
    if not path.exists():
        return None
    ref = _load_yaml(path)
    _check(ref, REFERENCE_SCHEMA, path)
    if ref["id"] != table_id:
        raise SpecError(
            f"{path}: field id: {ref['id']!r} does not match the file name (expected {table_id!r})"
        )
    return ref
