"""Property-based sweep fuzzing: random sweep documents, valid and mutated.

Expansion either succeeds with every run config valid (it resolves again to itself) or
raises SweepError / ConfigError / YamlInputError naming a field; never another exception
type, never a hang (each example is timed). Deterministic (derandomized) for CI.
"""

from __future__ import annotations

import math
import time

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e3lib import sweep as S
from e3lib.config import resolve
from e3lib.errors import ConfigError
from e3lib.safeyaml import YamlInputError, loads

FIELDS = {  # axis fields and a few values each, some of them invalid
    "method": ["vmoe", "e3", "vit", "tiling", "e4", 3],
    "model.num_experts": [4, 8, 0, -1, 2.5, True],
    "model.num_selected": [1, 2, 8],
    "model.ensemble_size": [1, 2, 4],
    "model.overlap": [0, 2, 9],
    "model.moe_n": [None, 1, 2, 3, -1],
    "finetune.lr": [0.1, 0.01, -0.1, "x", math.inf],
    "finetune.end_lr": [0.0, 1e-5, 0.5, -0.01],
    "finetune.steps": [10, 20, 0],
    "finetune.warmup": [0, 5, 30],
    "data.image_size": [16, 18, 2],
    "eval.batch_size": [8, 0],
}
ERRORS = (S.SweepError, ConfigError, YamlInputError)
FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def scalar_axis(draw):
    name = draw(st.sampled_from(sorted(FIELDS)))
    values = draw(
        st.lists(
            st.sampled_from(FIELDS[name]),
            min_size=1,
            max_size=3,
            unique_by=repr if draw(st.integers(0, 4)) else None,
        )
    )
    group = {"name": name, "values": values}
    if draw(st.booleans()):
        group["when"] = {"method": draw(st.sampled_from(["vmoe", "e3"]))}
    return group


@st.composite
def sweep_docs(draw):
    doc = {
        "title": "fuzz",
        "reproduces": ["demo"],
        "base": {"model": {"size": "tiny", "num_experts": 8}},
    }
    doc["axes"] = [scalar_axis(draw) for _ in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        doc["axes"].append(
            {
                "cases": draw(
                    st.lists(
                        st.fixed_dictionaries(
                            {"method": st.sampled_from(["vmoe", "e3", "vit"])},
                            optional={"model.ensemble_size": st.sampled_from([1, 2])},
                        ),
                        min_size=1,
                        max_size=3,
                    )
                )
            }
        )
    doc["seeds"] = draw(
        st.sampled_from(
            [1, 2, 3] * 4 + [0, -1, 10**9, 1e9, 2.0, True, [0, 1], [3, 5, 1], [0, 0], [-1], [1.0]]
        )
    )
    if draw(st.booleans()):
        doc["ensembles"] = [
            {
                "label": "de",
                "kind": draw(st.sampled_from(["downstream", "upstream"])),
                "runs": [draw(st.integers(2, 4))],
                "replicates": draw(st.integers(1, 6)),
            }
        ]
    if draw(st.booleans()):
        doc["max_runs"] = draw(st.integers(1, 200))
    mutation = draw(st.sampled_from(["none"] * 6 + ["drop", "retype", "nan", "junk"]))
    if mutation == "drop":
        doc.pop(draw(st.sampled_from(sorted(doc))))
    elif mutation == "retype":
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = draw(st.sampled_from([None, 7, "x", [1], {"a": 1}, 1.5]))
    elif mutation == "nan":
        doc["base"]["finetune"] = {"lr": math.nan}
    elif mutation == "junk":
        doc["base"][draw(st.sampled_from(["model", "junk"]))] = draw(
            st.sampled_from([3, [1, 2], {"zzz": 1}, {"size": {"nested": 1}}])
        )
    return doc


def check_expansion(doc, file="fuzz.yaml"):
    t = time.perf_counter()
    try:
        sw = S.expand_doc(doc, file, "small")
    except ERRORS as err:
        field = getattr(err, "field", None) or getattr(err, "where", None)
        assert field, f"no field named: {err}"
        assert file in str(err) or isinstance(err, YamlInputError), str(err)
    else:
        assert len(sw.entries) <= doc.get("max_runs", S.DEFAULT_MAX_RUNS)
        for cfg in sw.runs.values():
            assert resolve(cfg, job=True).to_dict() == cfg  # the plan stores plain dicts
    assert time.perf_counter() - t < 5


@FUZZ
@given(sweep_docs())
def test_random_sweep_documents_expand_or_name_a_field(doc):
    check_expansion(doc)


@FUZZ
@given(sweep_docs(), st.integers(0, 400), st.sampled_from(["delete", "dup", "byte"]))
def test_random_sweep_texts_expand_or_name_a_field(doc, where, how):
    """The same documents as YAML text, with a character deleted, a line duplicated or a
    byte flipped: parsed strictly, then expanded."""
    text = yaml.safe_dump(doc, sort_keys=False)
    i = where % max(len(text), 1)
    if how == "delete":
        text = text[:i] + text[i + 1 :]
    elif how == "dup":
        lines = text.splitlines(keepends=True)
        j = i % len(lines)
        text = "".join(lines[: j + 1] + lines[j:])
    else:
        text = text[:i] + chr((ord(text[i]) ^ 0x20) if text else 65) + text[i + 1 :]
    try:
        parsed = loads(text, "fuzz.yaml")
    except YamlInputError as err:
        assert str(err).startswith("fuzz.yaml: ")
        return
    check_expansion(parsed)
