"""Run identity: defaults-pruned hashing and stale-result detection."""

import copy

from e3lib import config, config_stale


def test_run_id_hashes_only_fields_that_differ_from_defaults():
    cfg = config.resolve({"method": "e3", "model": {"ensemble_size": 2}})
    # The id is the hash of the fields that differ from DEFAULTS: ensemble_size, and the
    # "None = derived" fields, which resolve spells out (tiny: last 2 blocks; C at
    # evaluation = C at training; upstream: a V-MoE with the run's E and K on the paired
    # set). Method e3 and the rest are defaults.
    expected = {
        "model": {"ensemble_size": 2, "moe_n": 2, "eval_capacity_factor": 1.5},
        "upstream": {"method": "vmoe", "num_experts": 8, "num_selected": 1, "dataset": "demo"},
    }
    assert config.non_default_fields(cfg) == expected
    assert config.run_id(cfg) == config.short_hash(expected)
    # Spelling a default explicitly does not change the identity.
    same = config.resolve({"method": "e3", "model": {"ensemble_size": 2, "overlap": 0}})
    assert config.run_id(same) == config.run_id(cfg)
    other = config.resolve({"method": "e3", "model": {"ensemble_size": 2}, "seed": 1})
    assert config.run_id(other) != config.run_id(cfg)


def test_a_new_field_with_its_default_keeps_existing_ids(monkeypatch):
    cfg = config.resolve({"method": "vmoe", "model": {"num_selected": 2}})
    before = config.run_id(cfg)
    defaults = copy.deepcopy(config.DEFAULTS)
    defaults["model"]["a_future_option"] = False
    monkeypatch.setattr(config, "DEFAULTS", defaults)
    grown = cfg.to_dict()
    grown["model"]["a_future_option"] = False
    assert config.non_default_fields(grown, defaults) == config.non_default_fields(cfg)
    assert "a_future_option" not in config.non_default_fields(grown, defaults)["model"]
    assert config.short_hash(config.non_default_fields(grown, defaults)) == before


def test_int_and_float_of_equal_value_are_different_identities():
    # 1 and 1.0 compare equal in Python but are different configs on disk; keep them apart.
    a = config.non_default_fields({"model": {"noise_mult": 1}}, {"model": {"noise_mult": 1.0}})
    assert a == {"model": {"noise_mult": 1}}


def test_stale_fields_names_changed_values_and_ignores_new_fields():
    stored = {"seed": 0, "model": {"capacity_factor": 1.5, "num_experts": 8}}
    current = {"seed": 0, "model": {"capacity_factor": 2.0, "num_experts": 8, "new_field": 3}}
    assert config.stale_fields(stored, current) == ["model.capacity_factor"]
    assert config.stale_fields(stored, stored) == []


def test_stale_size_shape_catches_an_edited_size_entry(monkeypatch):
    cfg = config.resolve({"method": "vit", "model": {"size": "mini"}})
    stored = config.size_shape(cfg)
    assert stored == {
        "patch": 4,
        "hidden": 64,
        "mlp": 128,
        "layers": 4,
        "heads": 4,
        "moe_last_n": 2,
    }
    assert config.stale_size_shape(stored, cfg) == []
    assert config.stale_size_shape(None, cfg) == []  # results from before shapes were stored
    # Widening "mini" keeps the run id (it hashes the name) but makes the result stale.
    sizes = dict(config.MODEL_SIZES, mini=dict(stored, hidden=96))
    monkeypatch.setattr(config_stale, "MODEL_SIZES", sizes)
    assert config.run_id(cfg) == config.run_id(
        config.resolve({"method": "vit", "model": {"size": "mini"}})
    )
    assert config.stale_size_shape(stored, cfg) == ["model.size"]
