"""The JSON schemas of the files ``e3 aggregate`` reads (``e3lib/schemas/*.schema.json``,
shipped with the package), and validation that names the file and the field."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


class AggregateError(ValueError):
    """Bad index, results or status file; the message names the file and the field."""


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``e3lib/schemas/{name}.schema.json`` (e.g. ``index``, ``results-v2``)."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    # one checked validator per schema: jsonschema.validate re-checks the schema per call,
    # which dominated aggregating a thousand runs
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate(doc: Any, schema: str, path: str | Path) -> None:
    """Raise ``AggregateError`` naming ``path`` and the first offending field."""
    err = jsonschema.exceptions.best_match(_validator(schema).iter_errors(doc))
    if err is not None:
        field = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise AggregateError(f"{path}: field {field}: {err.message}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise AggregateError(f"{path}: not valid JSON ({err})") from None
