"""The typed run config: what ``resolve`` returns, its dict form and the run ids it keeps.

``tests/fixtures/run_ids_small.json`` holds the run and upstream ids of every shipped
sweep's ``small`` variant. Written first when ``resolve`` still returned a plain dict (the
typed config hashed to exactly those ids), it now pins them against unnoticed changes: a
deliberate change of a shipped sweep or of its recipe rewrites it with
``python tests/test_run_config.py --write-pinned`` (and says so in its commit).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from e3lib.config import DEFAULTS, override, resolve, run_id, upstream_id
from e3lib.errors import ConfigError
from e3lib.models.registry import METHODS
from e3lib.run_config import SECTIONS, ModelConfig, RunConfig, require_run_config
from e3lib.sweep import load_sweep

ROOT = Path(__file__).resolve().parent.parent
PINNED_FILE = ROOT / "tests" / "fixtures" / "run_ids_small.json"
PINNED = json.loads(PINNED_FILE.read_text())


def small_ids(name: str) -> dict:
    """Sorted run and upstream ids of one shipped sweep's small variant."""
    sweep = load_sweep(ROOT / "sweeps" / name, "small")
    return {"runs": sorted(sweep.runs), "upstreams": sorted(set(sweep.run_upstream.values()))}


def test_resolve_returns_the_typed_config_with_typed_fields():
    cfg = resolve({"method": "e3", "model": {"ensemble_size": 2, "num_experts": 8}})
    assert isinstance(cfg, RunConfig) and isinstance(cfg.model, ModelConfig)
    assert cfg.model.ensemble_size == 2 and type(cfg.model.ensemble_size) is int
    assert cfg.model.moe_n == 2  # derived: tiny's last 2 blocks
    assert cfg.model.eval_capacity_factor == 1.5  # derived: the training C
    assert cfg.upstream.method == "vmoe" and cfg.upstream.num_experts == 8
    assert cfg.eval.fewshot_shots == (1, 5, 10, 25)  # lists held as tuples
    assert type(cfg.finetune.lr) is float and type(cfg.data.image_size) is int


def test_the_config_is_immutable():
    cfg = resolve({"method": "vmoe"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.num_experts = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    meshed = resolve({"method": "vmoe", "mesh": {"data": -1, "expert": 2}})
    with pytest.raises(TypeError):
        meshed.mesh["expert"] = 4  # type: ignore[index]
    assert meshed.to_dict()["mesh"] == {"data": -1, "expert": 2}


def test_a_changed_config_is_validated_again():
    cfg = resolve({"method": "e3", "model": {"ensemble_size": 2}})
    bigger = override(cfg, {"model": {"num_selected": 2}})
    assert bigger.model.num_selected == 2 and cfg.model.num_selected == 1
    assert run_id(bigger) != run_id(cfg)
    with pytest.raises(ConfigError, match="model.num_selected"):
        override(cfg, {"model": {"num_selected": 0}})


def test_defaults_come_from_the_dataclasses_and_name_every_method_field():
    typed = RunConfig().to_dict()
    assert typed == DEFAULTS
    assert set(DEFAULTS) == {f.name for f in dataclasses.fields(RunConfig)}
    for name, section in SECTIONS.items():
        assert set(DEFAULTS[name]) == {f.name for f in dataclasses.fields(section)}
    for method in METHODS.values():
        for dotted, default in method.fields.items():
            section, name = dotted.split(".")
            assert DEFAULTS[section][name] == default, (method.name, dotted)


def test_to_dict_round_trips_and_keeps_the_resolved_dict():
    raw = {
        "method": "partitioning",
        "model": {"ensemble_size": 2, "num_selected": 2, "partition_k": "total"},
    }
    cfg = resolve(raw)
    d = cfg.to_dict()
    assert isinstance(d["eval"]["fewshot_shots"], list) and d["upstream"]["fresh"] == ["head"]
    assert RunConfig.from_dict(d) == cfg and resolve(d) == cfg and resolve(cfg) == cfg
    assert d["model"]["partition_k"] == "total"
    with pytest.raises(ConfigError, match="model.bogus"):
        RunConfig.from_dict({**d, "model": {**d["model"], "bogus": 1}})
    with pytest.raises(ConfigError, match="finetune.lr"):
        RunConfig.from_dict(
            {**d, "finetune": {k: v for k, v in d["finetune"].items() if k != "lr"}}
        )


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_small_sweeps_keep_their_run_ids(name):
    assert small_ids(name) == PINNED[name]
    sweep = load_sweep(ROOT / "sweeps" / name, "small")
    for rid, d in sweep.runs.items():
        cfg = resolve(d, job=True)  # a job config read back, as `e3 run` does
        assert cfg.to_dict() == d and RunConfig.from_dict(d).to_dict() == d
        assert run_id(cfg) == rid and upstream_id(cfg) == sweep.run_upstream[rid]


def test_consumers_refuse_a_plain_dict():
    from e3lib.models import build_model
    from e3lib.train.finetune import finetune_and_evaluate

    plain = resolve({"method": "vmoe"}).to_dict()
    with pytest.raises(TypeError, match="RunConfig"):
        build_model(plain, 10)
    with pytest.raises(TypeError, match="RunConfig"):
        finetune_and_evaluate([plain], None, ["unused"], None)
    with pytest.raises(TypeError, match="RunConfig"):
        require_run_config(plain, "here")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write-pinned"]:
        sys.exit("usage: python tests/test_run_config.py --write-pinned")
    names = sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml"))
    PINNED_FILE.write_text(json.dumps({n: small_ids(n) for n in names}, indent=1) + "\n")
