"""The sweep JSON schema (``workflow/schemas/sweep.schema.yaml``) and ``SweepError``.

Every error of a sweep file is a ``SweepError`` naming the file, the field (a dotted path,
list positions in brackets: ``variants.paper.axes[1].values``), the value and the rule.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "sweep.schema.yaml"


class SweepError(ValueError):
    """An invalid sweep file: names the file, the field, the value and what is allowed."""

    def __init__(self, file: str, field: str, value: Any, rule: str):
        self.file, self.field, self.value, self.rule = file, field, value, rule
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"{file}: {field}={shown}: {rule}")


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def table_ids() -> list[str]:
    """Paper table / figure ids a sweep may reproduce (the schema's ``reproduces`` enum)."""
    return list(load_schema()["properties"]["reproduces"]["items"]["enum"])


def json_path(parts: Iterable[Any]) -> str:
    """``["axes", 0, "name"]`` -> ``"axes[0].name"``; empty -> ``"(top level)"``."""
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
        raise SweepError(
            file, json_path([*err.absolute_path, missing[0]]), None, "missing required field"
        )
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        if allowed:
            rule += f"; allowed fields here: {allowed}"
    elif err.validator == "pattern" and err.schema.get("pattern", "").startswith("^(method"):
        rule += (
            " (an axis or condition name must be a dotted run-config path such as "
            "'model.overlap' or 'method')"
        )
    raise SweepError(file, json_path(err.absolute_path), value, rule)
