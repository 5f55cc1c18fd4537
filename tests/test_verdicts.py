"""The paper's claims as verdicts: outcomes on synthetic rows with hand-derived statistics.

Rows carry three seed values per cell unless a test says otherwise (min_seeds is 3).
"""

import numpy as np
import pytest
import yaml

from e3lib.report import spec as spec_mod
from e3lib.report import verdicts
from e3lib.report.rows import CellStats, Row

SPEC = spec_mod.default_spec()


def _rows(axis, values_by_level, metric="nll", extra=None):
    out = []
    for level, vals in values_by_level.items():
        v = np.asarray(vals, dtype=float)
        out.append(
            Row(
                "s",
                {axis: str(level), **(extra or {})},
                {metric: CellStats(v.mean(), np.nan, len(v), len(v), v)},
            )
        )
    return out


def _ab(a, b, metric="nll"):
    return _rows("method", {"a": a, "b": b}, metric)


BETTER = {
    "claim": "a beats b",
    "test": "better",
    "metric": "nll",
    "a": {"method": "a"},
    "b": {"method": "b"},
}


def test_defaults_are_three_seeds_and_a_two_percent_margin():
    assert SPEC["min_seeds"] == 3 and SPEC["margin_rel"] == 0.02 and SPEC["alpha"] == 0.05


def test_better_held_inconclusive_not_held():
    # a = .60 .61 .62 vs b = .63 .64 .65: t = -0.03/√(2·1e-4/3) = -3.674, ν = 4 → one-sided
    # p = 0.0107 < 0.05 → held
    res = verdicts.evaluate(BETTER, _ab([0.60, 0.61, 0.62], [0.63, 0.64, 0.65]), SPEC)
    assert res.outcome == "held" and "p = 0.0107" in res.statistic and res.n == "3 vs 3"
    # a = .62 .63 .64 vs b = .63 .64 .65 : t = -1.22 → p = 0.14 either way: inconclusive
    res = verdicts.evaluate(BETTER, _ab([0.62, 0.63, 0.64], [0.63, 0.64, 0.65]), SPEC)
    assert res.outcome == "inconclusive"
    # the reverse is significant: a is worse than b → not held
    assert (
        verdicts.evaluate(BETTER, _ab([0.63, 0.64, 0.65], [0.60, 0.61, 0.62]), SPEC).outcome
        == "not held"
    )


def test_minimum_seeds_and_degenerate_input():
    res = verdicts.evaluate(BETTER, _ab([0.60, 0.61], [0.63, 0.64, 0.65]), SPEC)
    assert res.outcome == "not enough seeds" and "n=2, need 3" in res.statistic
    # configurable: with min_seeds 2 the same rows are tested (t = -4.24... → held)
    two = dict(SPEC, min_seeds=2)
    assert verdicts.evaluate(BETTER, _ab([0.60, 0.61], [0.63, 0.64, 0.65]), two).outcome == "held"
    # zero variance on both sides: no standard error, never a pass
    res = verdicts.evaluate(BETTER, _ab([0.6, 0.6, 0.6], [0.7, 0.7, 0.7]), SPEC)
    assert res.outcome == "not computable" and "zero variance" in res.statistic
    # NaN seed values do not count: 3 values of which one NaN is n = 2
    rows = _ab([0.60, 0.61, 0.62], [0.63, 0.64, 0.65])
    rows[0].stats["nll"] = CellStats(0.605, np.nan, 2, 3, np.array([0.60, 0.61]))
    assert verdicts.evaluate(BETTER, rows, SPEC).outcome == "not enough seeds"
    none = verdicts.evaluate(dict(BETTER, a={"method": "zzz"}), rows, SPEC)
    assert none.outcome == "not enough seeds" and "n=0" in none.statistic


def test_trend_held_reverse_and_nan():
    v = {
        "claim": "KL falls",
        "test": "trend",
        "metric": "kl_diversity",
        "axis": "model.overlap",
        "direction": "decreasing",
    }
    falling = _rows(
        "model.overlap",
        {0: [0.20, 0.21, 0.22], 2: [0.15, 0.16, 0.17], 4: [0.10, 0.11, 0.12]},
        "kl_diversity",
    )
    res = verdicts.evaluate(v, falling, SPEC)
    assert res.outcome == "held" and "ρ = -0.9" in res.statistic and res.n == "0: 3, 2: 3, 4: 3"
    assert verdicts.evaluate(dict(v, direction="increasing"), falling, SPEC).outcome == "not held"
    const = _rows("model.overlap", {0: [0.2, 0.2, 0.2], 2: [0.2, 0.2, 0.2]}, "kl_diversity")
    assert verdicts.evaluate(v, const, SPEC).outcome == "not computable"  # NaN ρ
    two = _rows("model.overlap", {0: [0.20, 0.21], 2: [0.15, 0.16, 0.17]}, "kl_diversity")
    assert verdicts.evaluate(v, two, SPEC).outcome == "not enough seeds"


FLAT = {"claim": "flat", "test": "flat", "metric": "nll", "axis": "model.aux_weight", "up_to": 1.0}


def test_flat_needs_tost_within_the_margin():
    # tight: sd 0.001 at every λ ≤ 1, equal means .611: margin 0.02·0.611 = 0.01222,
    # se = √(2·1e-6/3) = 0.000816 → t = 14.97, ν = 4 → TOST p ≈ 6e-5 at both λ → held
    tight = _rows(
        "model.aux_weight",
        {
            0.01: [0.610, 0.611, 0.612],
            0.1: [0.611, 0.610, 0.612],
            1.0: [0.612, 0.611, 0.610],
            100.0: [2.0, 2.1, 2.2],
        },
    )
    res = verdicts.evaluate(FLAT, tight, SPEC)  # λ=100 is beyond up_to and left out
    assert res.outcome == "held" and res.margin == "±0.0122"
    assert res.n == "0.01: 3, 0.1: 3, 1: 3" and "TOST" in res.method
    # wide: sd 0.01, the same means: se = 0.008165, t = 0.01222/se = 1.497 → p = 0.104:
    # no evidence of a difference, yet none of equivalence either → inconclusive (the old
    # "p ≥ 0.05 means flat" rule called this held)
    wide = _rows(
        "model.aux_weight",
        {0.01: [0.60, 0.61, 0.62], 0.1: [0.61, 0.60, 0.62], 1.0: [0.62, 0.61, 0.60]},
    )
    assert verdicts.evaluate(FLAT, wide, SPEC).outcome == "inconclusive"
    # with λ=100 included: 2.1 vs .611 is far beyond the margin → not held
    assert verdicts.evaluate(dict(FLAT, up_to=1000.0), tight, SPEC).outcome == "not held"
    # an explicit absolute margin of 0.05: wide passes (t = 0.05/0.008165 = 6.12, p ≈ 0.002)
    res = verdicts.evaluate(dict(FLAT, margin=0.05), wide, SPEC)
    assert res.outcome == "held" and res.margin == "±0.05"


def test_no_difference_is_an_equivalence_test():
    nd = {
        "claim": "same",
        "test": "no_difference",
        "metric": "nll",
        "a": {"method": "a"},
        "b": {"method": "b"},
    }
    # .65 vs .67, sd .01: Welch p = 0.071 (the old rule: "held"). TOST, margin
    # 0.02·0.67 = 0.0134: (d + δ)/se = (-0.02 + 0.0134)/0.008165 = -0.81 → inconclusive
    res = verdicts.evaluate(nd, _ab([0.64, 0.65, 0.66], [0.66, 0.67, 0.68]), SPEC)
    assert res.outcome == "inconclusive" and res.margin == "±0.0134"
    # .65 vs .58: d = 0.07 ≫ δ: (0.07 − 0.0116)/0.008165 = 7.15 → different → not held
    assert (
        verdicts.evaluate(nd, _ab([0.64, 0.65, 0.66], [0.57, 0.58, 0.59]), SPEC).outcome
        == "not held"
    )
    # equal means, sd 0.001: t = 0.013/0.000816 = 15.9 → held
    assert (
        verdicts.evaluate(nd, _ab([0.649, 0.650, 0.651], [0.650, 0.651, 0.649]), SPEC).outcome
        == "held"
    )


def test_monotone_costs_need_no_seeds():
    v = {
        "claim": "GFLOPs grow with M",
        "test": "monotone",
        "metric": "gflops",
        "axis": "model.ensemble_size",
        "direction": "increasing",
    }
    one_seed = _rows("model.ensemble_size", {1: [2.0], 2: [4.0], 4: [8.0]}, "gflops")
    res = verdicts.evaluate(v, one_seed, SPEC)
    assert (
        res.outcome == "held"
        and "1: 2, 2: 4, 4: 8" in res.statistic
        and res.n == "1: 1, 2: 1, 4: 1"
    )
    flat = _rows("model.ensemble_size", {1: [2.0], 2: [2.0]}, "gflops")
    assert verdicts.evaluate(v, flat, SPEC).outcome == "not held"


def test_group_by_ambiguous_and_best():
    rows = _rows(
        "model.ensemble_size",
        {1: [0.64, 0.65, 0.66], 4: [0.57, 0.58, 0.59]},
        "nll",
        {"model.num_selected": "1"},
    ) + _rows(
        "model.ensemble_size",
        {1: [0.64, 0.65, 0.66], 4: [0.66, 0.67, 0.68]},
        "nll",
        {"model.num_selected": "2"},
    )
    v = {
        "claim": "M=4 beats M=1",
        "test": "better",
        "metric": "nll",
        "a": {"model.ensemble_size": 4},
        "b": {"model.ensemble_size": 1},
        "group_by": ["model.num_selected"],
    }
    res = verdicts.evaluate(v, rows, SPEC)
    # K=1: held (t = -8.57); K=2: .67 vs .65, t = 2.45, ν = 4: reverse one-sided p = 0.035
    assert res.outcome == "not held"
    assert "[model.num_selected=1]" in res.statistic
    assert verdicts.evaluate(dict(v, group_by=[]), rows, SPEC).outcome == "ambiguous"
    best = {"claim": "best", "test": "best", "metric": "nll", "a": {"model.ensemble_size": 4}}
    k1 = [r for r in rows if r.key["model.num_selected"] == "1"]
    assert verdicts.evaluate(best, k1, SPEC).outcome == "held"


def test_groups_are_those_of_the_rows_a_claim_is_about():
    # Table 14: E³ at M=2 and M=4 (ensemble vs member 0) beside V-MoE rows at M=1; the
    # claim is checked per M among E³'s rows only, not "no row matches" at M=1
    rows = []
    for m, ens, mem in (("2", 0.62, 0.67), ("4", 0.63, 0.68)):
        for member, nll in (("ensemble", ens), ("0", mem)):
            rows += _rows(
                "member",
                {member: [nll - 0.01, nll, nll + 0.01]},
                "nll",
                {"method": "e3", "model.ensemble_size": m},
            )
    rows += _rows(
        "member",
        {"ensemble": [0.64, 0.65, 0.66]},
        "nll",
        {"method": "vmoe", "model.ensemble_size": "1"},
    )
    v = {
        "claim": "E³'s ensemble beats its member 0",
        "test": "better",
        "metric": "nll",
        "a": {"method": "e3", "member": "ensemble"},
        "b": {"method": "e3", "member": "0"},
        "group_by": ["model.ensemble_size"],
    }
    res = verdicts.evaluate(v, rows, SPEC)
    # each group: .62 vs .67 (and .63 vs .68), sd .01: t = -0.05/0.008165 = -6.12, ν = 4
    assert res.outcome == "held"
    assert "[model.ensemble_size=2]" in res.statistic and "ensemble_size=1" not in res.statistic
    # a group where only one side has a row still says so
    rows += _rows(
        "member",
        {"ensemble": [0.61, 0.62, 0.63]},
        "nll",
        {"method": "e3", "model.ensemble_size": "8"},
    )
    res = verdicts.evaluate(v, rows, SPEC)
    assert (
        res.outcome == "not enough seeds"
        and "[model.ensemble_size=8] no row matches" in res.statistic
    )


def test_spec_refuses_seed_tests_on_costs_and_margins_on_directional_claims(tmp_path):
    doc = yaml.safe_load(spec_mod.SPEC_FILE.read_text())
    claim = doc["tables"]["figure2"]["verdicts"][2]
    assert claim["metric"] == "gflops" and claim["test"] == "monotone"
    claim["test"] = "trend"
    bad = tmp_path / "tables.yaml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(
        spec_mod.SpecError,
        match=r"verdicts.2.test: 'trend' on cost metric "
        r"'gflops'; allowed: \['monotone'\]",
    ):
        spec_mod.load_spec(bad)
    claim["test"] = "monotone"
    doc["tables"]["table2"]["verdicts"][1]["margin"] = 0.01
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(spec_mod.SpecError, match=r"tables.table2.verdicts.1"):
        spec_mod.load_spec(bad)


def test_every_equivalence_claim_states_its_margin():
    for tid, t in SPEC["tables"].items():
        for v in t.get("verdicts", []):
            if v["test"] in spec_mod.EQUIVALENCE_TESTS:
                assert "margin" in v or "margin_rel" in v, (tid, v["claim"])


def test_selector_max_picks_the_largest_axis_value():
    # V-MoE single models with E = 32, 16, 8 (NLL .64, .66, .68) and an upstream deep
    # ensemble of 4 runs (E=8), addressed by ensemble.runs as Table 17's claims do.
    rows = []
    for e, nll in ((32, 0.64), (16, 0.66), (8, 0.68)):
        rows += _rows(
            "model.num_experts",
            {e: [nll - 0.01, nll, nll + 0.01]},
            "nll",
            {"method": "vmoe", "ensemble.runs": "1"},
        )
    rows += _rows(
        "model.num_experts",
        {8: [0.57, 0.58, 0.59]},
        "nll",
        {"method": "up_de", "ensemble.runs": "4"},
    )
    v = {
        "claim": "M=4 beats the largest V-MoE",
        "test": "better",
        "metric": "nll",
        "a": {"ensemble.runs": 4},
        "b": {"method": "vmoe", "ensemble.runs": 1, "model.num_experts": "$max"},
    }
    res = verdicts.evaluate(v, rows, SPEC)
    assert res.outcome == "held" and "means 0.58 vs 0.64" in res.statistic
    assert [r.key["model.num_experts"] for r in verdicts.select_rows(rows, v["b"])] == ["32"]
