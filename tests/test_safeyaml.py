"""Strict YAML input (e3lib.safeyaml): refused inputs name the file and the place."""

import pytest

from e3lib.safeyaml import YamlInputError, load_file, loads, non_finite_paths


def test_plain_document_loads():
    assert loads("a: 1\nb: [x, 2.5]\n") == {"a": 1, "b": ["x", 2.5]}


def test_duplicate_key_names_both_lines():
    with pytest.raises(
        YamlInputError,
        match=r"s\.yaml: line 3.*duplicate key 'seeds' "
        r"\(first at line 1\)",
    ):
        loads("seeds: 3\nmethod: e3\nseeds: 5\n", "s.yaml")


def test_merge_keys_are_not_duplicates():
    doc = loads("base: &b {k: 1}\nrun:\n  <<: *b\n  e: 8\n")
    assert doc["run"] == {"k": 1, "e": 8}


def test_alias_bomb_refused_fast():
    # 9 levels of 9 aliases each: 9**9 = 387M leaves once expanded, 81 aliases in the text.
    lines = ['l0: &l0 ["x"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    text = "\n".join(lines) + "\n"
    with pytest.raises(YamlInputError, match="alias"):
        loads(text, "bomb.yaml")
    # with the alias count allowed, the expanded size check still refuses it
    with pytest.raises(YamlInputError, match="expands to more than 100000 nodes"):
        loads(text, "bomb.yaml", max_aliases=1000)


def test_non_finite_numbers_named_by_path():
    assert non_finite_paths({"a": [1.0, float("nan")], "b": {"c": float("inf")}}) == ["a[1]", "b.c"]
    with pytest.raises(
        YamlInputError,
        match=r"x\.yaml: model\.noise_mult: numbers must be "
        "finite",
    ):
        loads("model: {noise_mult: .nan}\n", "x.yaml")


def test_syntax_error_has_line():
    with pytest.raises(YamlInputError, match=r"bad\.yaml: line 2, column \d+: invalid YAML"):
        loads("a: [1, 2\nb: 3\n", "bad.yaml")


def test_file_checks(tmp_path):
    with pytest.raises(YamlInputError, match="no such file"):
        load_file(tmp_path / "missing.yaml")
    with pytest.raises(YamlInputError, match="is a directory"):
        load_file(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlInputError, match=r"latin\.yaml: byte 9: not UTF-8"):
        load_file(latin)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 200 + "\n")
    with pytest.raises(YamlInputError, match="over the limit of 100 bytes"):
        load_file(big, max_bytes=100)
    ok = tmp_path / "ok.yaml"
    ok.write_text("seeds: 3\n")
    assert load_file(ok) == {"seeds": 3}
