"""The sweep and config JSON schemas agree with the tables they mirror (one place per concept:
e3lib.config.CHOICES, e3lib.models.registry.METHODS, the report's table ids)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from e3lib import sweep as S
from e3lib.config import CHOICES, ConfigError, resolve
from e3lib.models.registry import METHODS

REPO = Path(__file__).resolve().parents[1]


def _enum(path: list[str]) -> list:
    node = S.load_schema()["$defs"]["run_overrides"]
    for part in path:
        node = node["properties"][part]
    return node["enum"]


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(S.load_schema())
    config_schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(config_schema)


def test_methods_come_from_the_registry_only():
    # The schema lists no methods (a new registry entry needs no schema edit); every
    # registry name passes the schema and resolve rejects a name the registry lacks.
    method = S.load_schema()["$defs"]["run_overrides"]["properties"]["method"]
    assert "enum" not in method
    validator = jsonschema.Draft202012Validator(S.load_schema()["$defs"]["run_overrides"])
    for name in METHODS:
        assert not list(validator.iter_errors({"method": name})), name
    with pytest.raises(ConfigError, match="method='moe_v2'.*allowed: .*'e3'"):
        resolve({"method": "moe_v2"})


def test_choice_enums_are_config_choices():
    covered = 0
    for dotted, allowed in CHOICES.items():
        section, _, name = dotted.partition(".")
        props = S.load_schema()["$defs"]["run_overrides"]["properties"][section]["properties"]
        assert name in props, f"{dotted} has CHOICES but no enum in sweep.schema.yaml"
        assert list(props[name]["enum"]) == list(allowed), dotted
        covered += 1
    assert covered == len(CHOICES)


def test_reproducible_ids_are_the_report_table_ids():
    from e3lib.report.spec import TABLE_IDS

    assert list(S.table_ids()) == list(TABLE_IDS)


def test_table_ids_cover_the_report_reference_tables():
    ids = set(S.table_ids())
    reference = {p.stem for p in (REPO / "e3lib/report/reference").glob("*.yaml")}
    # table21 is derived from table20's runs (percentages), not reproduced by a sweep
    assert reference - {"table21"} <= ids
    assert {"demo", "figure2", "figure10"} <= ids
