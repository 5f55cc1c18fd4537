"""Dotted config paths (e3lib.tree): the one home of get/set/merge/flatten."""

import pytest

from e3lib import tree
from e3lib.errors import ConfigError


def test_get_and_has_leaf():
    cfg = {"model": {"num_experts": 8, "noise": None}, "method": "e3"}
    assert tree.get(cfg, "model.num_experts") == 8
    assert tree.get(cfg, "model.k", default=3) == 3
    with pytest.raises(KeyError):
        tree.get(cfg, "model.k")
    assert tree.has_leaf(cfg, "model.noise")  # a None leaf is still a leaf
    assert not tree.has_leaf(cfg, "model")  # a sub-tree is not
    assert not tree.has_leaf(cfg, "model.num_experts.x")


def test_nest_unflatten_flatten_roundtrip():
    assert tree.nest("a.b.c", 1) == {"a": {"b": {"c": 1}}}
    flat = {"model.size": "B/32", "model.num_experts": 32, "method": "e3"}
    nested = tree.unflatten(flat)
    assert nested == {"model": {"size": "B/32", "num_experts": 32}, "method": "e3"}
    assert tree.flatten(nested) == flat


def test_merge_keeps_base_and_shares_leaves():
    base = {"model": {"k": 1, "e": 8}, "seed": 0}
    out = tree.merge(base, {"model": {"k": 2}, "extra": 1})
    assert out == {"model": {"k": 2, "e": 8}, "seed": 0, "extra": 1}
    assert base == {"model": {"k": 1, "e": 8}, "seed": 0}


def test_merge_known_rejects_unknown_and_non_mapping():
    base = {"model": {"k": 1}}
    assert tree.merge_known(base, {"model": {"k": 2}}) == {"model": {"k": 2}}
    with pytest.raises(ConfigError, match=r"model\.q=3: unknown field; known fields here: \['k'\]"):
        tree.merge_known(base, {"model": {"q": 3}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        tree.merge_known(base, {"model": 5})


def test_parse_assignments():
    got = tree.parse_assignments(["model.num_selected=2", "model.size=B/32", "x=0.001"])
    assert got == {"model": {"num_selected": 2, "size": "B/32"}, "x": 0.001}
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        tree.parse_assignments(["model.num_selected"])
