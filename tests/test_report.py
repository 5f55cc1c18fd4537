"""Tables, verdicts, spec and figure helpers on synthetic result sets with known statistics."""

import numpy as np
import pytest
import yaml

from e3lib import aggregate
from e3lib.report import alignment, synthetic, tables
from e3lib.report import spec as spec_mod
from e3lib.report.figures import pareto_front, reliability_bins

# Table 2 style sweep, 3 seeds. Hand-derived statistics (std with ddof=1):
#   e3            nll .60 .61 .62 → 0.610 ± 0.01/√3 = 0.00577 → "0.610 ± 0.006"
#                 error .160 .165 .170 → 16.50 % ± 0.5/√3 = 0.289 % → "16.50 ± 0.29"
#                 kl .20 .21 .22 → "0.210 ± 0.006"
#   tiling σ×1    nll .64 .65 .66, kl .001 .002 .003 → kl 0.002
#   tiling σ×4    nll .63 .64 .65
#   partitioning  nll .612 .614 (seed 2 missing) → 0.613 ± √(2e-6)/√2 = 0.001, n = 2 of 3
NLL_E3 = [0.60, 0.61, 0.62]
CELLS = [
    {
        "axes": {"method": "e3"},
        "metrics": {
            "nll": NLL_E3,
            "error": [0.160, 0.165, 0.170],
            "kl_diversity": [0.20, 0.21, 0.22],
        },
    },
    {
        "axes": {"method": "tiling", "model.noise_mult": 1},
        "metrics": {
            "nll": [0.64, 0.65, 0.66],
            "error": [0.17] * 3,
            "kl_diversity": [0.001, 0.002, 0.003],
        },
    },
    {
        "axes": {"method": "tiling", "model.noise_mult": 4},
        "metrics": {
            "nll": [0.63, 0.64, 0.65],
            "error": [0.17] * 3,
            "kl_diversity": [0.004, 0.005, 0.006],
        },
    },
    {
        "axes": {"method": "partitioning"},
        "metrics": {"nll": [0.612, 0.614, 0.0], "error": [0.17] * 3},
        "seeds": {2: None},
    },
]


@pytest.fixture(scope="module")
def table2_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2")
    index = synthetic.write_sweep(
        root, "ablation", ["method", "model.noise_mult"], [0, 1, 2], CELLS, reproduces=["table2"]
    )
    return aggregate.build_dataset(aggregate.load_index(index), root, index)


def _row(table, label):
    (row,) = [r for r in table.blocks[0].rows if r[0].text == label]
    return [c.text for c in row], [c.bold for c in row]


def test_table2_numbers_paper_values_and_order(table2_ds):
    t = tables.build_table("table2", [table2_ds])
    header = t.blocks[0].header
    assert header[:4] == ["paper row", "method", "noise_mult", "seeds"]
    assert header[4:6] == ["NLL ↓ ours", "NLL paper"]
    # paper order; paper rows we did not run are kept, marked "not run"
    assert [r[0].text for r in t.blocks[0].rows] == [
        "V-MoE (K=4)",
        "E³",
        "Tiling",
        "Tiling (σ×2)",
        "Tiling (σ×4)",
        "Partitioning",
    ]
    text, bold = _row(t, "E³")
    assert text[1:4] == ["e3", "-", "3/3"]
    assert text[4:6] == ["0.610 ± 0.006", "0.612 ± 0.001"]
    assert text[6:8] == ["16.50 ± 0.29", "16.49 ± 0.02"]  # error shown in percent
    assert text[10:12] == ["0.210 ± 0.006", "0.198 ± 0.003"]
    text, _ = _row(t, "Partitioning")
    assert text[3] == "2/3 †" and text[4] == "0.613 ± 0.001 † 2/3"
    text, _ = _row(t, "Tiling (σ×2)")
    assert text[3] == "not run" and text[4] == "—" and text[5] == "0.638 ± 0.001"
    assert t.blocks[0].rows[1][-1].kind == "paper"


def test_bold_only_when_welch_significant(table2_ds):
    t = tables.build_table("table2", [table2_ds])
    _, bold = _row(t, "E³")
    # Partitioning has n=2 < min_seeds 3 and takes no part. NLL: e3 .61 vs tiling σ×4 .64,
    # sd .01 each: t = -0.03/√(2·1e-4/3) = -3.674, ν = 4 → two-sided p = 0.021 → bold.
    # KL: e3 0.21 vs runner-up 0.005: p ≈ 1e-4 → bold. Error: e3 16.5 % (sd 0.5) vs tiling
    # 17 % (no spread): t = -0.005/(0.005/√3) = -1.732, ν = 2 → p = 0.225 → not bold.
    assert bold[4] is True and bold[10] is True and bold[6] is False
    assert not any(any(c.bold for c in r) for r in t.blocks[0].rows if r[0].text != "E³")
    assert any("KL: best vs runner-up: Welch p" in f and "(bold)" in f for f in t.footnotes)
    assert any(f.startswith("Error (%): best vs runner-up: Welch p = 0.225") for f in t.footnotes)


def test_table2_verdicts(table2_ds):
    t = tables.build_table("table2", [table2_ds])
    by_claim = {v.claim.split(" (")[0]: v for v in t.verdicts}
    kl = by_claim["E³'s KL is orders of magnitude above Tiling's"]
    assert kl.outcome == "held" and "ratio 105" in kl.statistic  # 0.21 / 0.002
    part = by_claim["Partitioning without tiling is worse than E³ in NLL"]
    assert part.outcome == "not enough seeds" and "n=2, need 3" in part.statistic
    til = by_claim["Tiling, even with σ×4, is worse than E³ in NLL"]
    # t = -0.03 / √(2·0.00577²) = -3.67 with 4 df → one-sided p ≈ 0.011
    assert til.outcome == "held" and til.n == "3 vs 3" and til.margin == "—"
    assert til.method.startswith("Welch t-test (one-sided, a < b)")
    p = float(til.statistic.split("p = ", 1)[1].split(" ")[0].rstrip(","))
    assert p == pytest.approx(0.0107, abs=0.002)


def test_reference_files_validate_and_spot_values():
    for tid in spec_mod.TABLE_IDS:
        spec_mod.load_reference(tid)  # raises on a schema error
    t3 = spec_mod.load_reference("table3")
    o8 = [r for r in t3["rows"] if r["key"] == {"method": "e3", "model.overlap": 8}][0]
    assert o8["values"]["kl_diversity"] == [0.122, 0.010]
    assert o8["values"]["error"] == [0.1667, 0.0007]  # 16.67 ± 0.07 % as fractions
    t17 = spec_mod.load_reference("table17")
    assert t17["rows"][2]["values"]["nll"] == [0.577, None]  # printed without stderr


def test_bad_spec_names_file_field_and_allowed(tmp_path):
    doc = yaml.safe_load(spec_mod.SPEC_FILE.read_text())
    doc["tables"]["table3"]["verdicts"][0]["test"] = "bigger"
    bad = tmp_path / "tables.yaml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(
        spec_mod.SpecError,
        match=r"tables.yaml: field tables.table3.verdicts.0"
        r".test: 'bigger' is not one of",
    ):
        spec_mod.load_spec(bad)
    doc["tables"]["table3"]["verdicts"][0]["test"] = "trend"
    doc["tables"]["table3"]["columns"] = ["nll", "accuracy"]
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(spec_mod.SpecError, match=r"columns: unknown metric 'accuracy'; allowed"):
        spec_mod.load_spec(bad)


def test_table_not_built_without_matching_dataset(table2_ds):
    assert tables.build_table("table3", [table2_ds]) is None


def test_pareto_front_and_reliability_bins():
    # (gflops, nll): (1, .9) (2, .8) (2, .95) (3, .85) (4, .7) → front 0, 1, 4
    x = np.array([1.0, 2, 2, 3, 4])
    y = np.array([0.9, 0.8, 0.95, 0.85, 0.7])
    assert pareto_front(x, y).tolist() == [0, 1, 4]
    # M=2 members, N=3 images, C=2 classes; mean probs → confidence .9, .9, .62
    probs = np.array(
        [[[0.9, 0.1], [0.2, 0.8], [0.62, 0.38]], [[0.9, 0.1], [0.0, 1.0], [0.62, 0.38]]]
    )
    labels = np.array([0, 0, 0])
    conf, acc, count = reliability_bins(probs, labels, n_bins=15)
    # .9·15 = 13.5 → bin 13 holds images 0 (correct) and 1 (wrong); .62·15 = 9.3 → bin 9
    assert count[13] == 2 and acc[13] == 0.5 and conf[13] == pytest.approx(0.9)
    assert count[9] == 1 and acc[9] == 1.0 and count.sum() == 3


def test_shifted_set_columns_and_any_of_row_filter(tmp_path):
    # Table 25 layout on a B/32 sweep of 2 seeds (the model_sizes expansion: every row has
    # model.ensemble_size and ensemble.runs): its `where` keeps E³ (K=1, M=2), the down-DE
    # of 2 runs (ensemble.runs=2, members' model.ensemble_size=1) and V-MoE K=2, not ViT.
    # Column c_nll is the NLL of the records of split "corrupted", corruption "mean"; a_nll
    # those of shifted "imagenet_a".
    #   E³ c_nll 1.50, 1.52 → 1.510 ± 0.01414 (std, ddof=1)/√2 = 0.010;
    #   a_nll 5.0, 5.2 → 5.100 ± 0.1414/√2 = 0.100
    axes = ["method", "model.num_selected", "model.ensemble_size", "model.size", "ensemble.runs"]

    def cell(method, k, m, nll, c_nll, a_nll, runs=1):
        return {
            "axes": {
                "method": method,
                "model.num_selected": k,
                "model.ensemble_size": m,
                "model.size": "B/32",
                "ensemble.runs": runs,
            },
            "metrics": {"nll": nll},
            "split_metrics": {
                "corrupted/mean": {"nll": c_nll},
                "shifted/imagenet_a": {"nll": a_nll},
            },
        }

    de = dict(
        cell("down_de", 1, 1, [0.61, 0.62], [1.49, 1.51], [4.8, 4.9], runs=2),
        kind="ensemble",
        replicates=2,
    )
    de4 = dict(cell("down_de", 1, 1, [0.60], [1.48], [4.7], runs=4), kind="ensemble")
    cells = [
        cell("e3", 1, 2, [0.62, 0.63], [1.50, 1.52], [5.0, 5.2]),
        de,
        de4,
        cell("vmoe", 2, 1, [0.64, 0.65], [1.56, 1.58], [5.0, 5.1]),
        cell("vit", 1, 1, [0.69, 0.70], [1.70, 1.71], [5.3, 5.4]),
    ]
    index = synthetic.write_sweep(tmp_path, "sizes", axes, [0, 1], cells, reproduces=["table25"])
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index)
    table = tables.build_table("table25", [ds])
    # the down-DE of 4 runs is Table 26's, not this one's
    assert sorted((r.key["method"], r.members) for r in table.rows) == [
        ("down_de", "2"),
        ("e3", "2"),
        ("vmoe", "1"),
    ]
    e3 = next(r for r in table.rows if r.key["method"] == "e3")
    assert e3.stats["nll"].mean == pytest.approx(0.625)
    assert e3.stats["c_nll"].mean == pytest.approx(1.51)
    assert e3.stats["c_nll"].stderr == pytest.approx(0.01)
    assert e3.stats["a_nll"].mean == pytest.approx(5.1)
    assert e3.stats["a_nll"].stderr == pytest.approx(0.1)
    assert "v2_nll" not in e3.stats  # no ImageNet-V2 records: no value, not zero
    assert e3.ref["label"] == "B/32 E³, K=1, M=2" and e3.ref["values"]["c_nll"] == [1.532, 0.005]
    down = next(r for r in table.rows if r.key["method"] == "down_de")
    # 2 replicates: c_nll 1.49, 1.51 → 1.500 ± 0.010; the paper's down-DE of 2 V-MoEs
    assert down.ref["label"] == "B/32 down-DE, K=1, M=2" and down.runs_requested == 2
    header = table.blocks[0].header
    assert "C NLL ↓ ours" in header and "C NLL paper" in header
    # one column M: E³'s model.ensemble_size and the down-DE's ensemble.runs
    assert header[1:5] == ["method", "num_selected", "M", "size"]
    row = next(r for r in table.blocks[0].rows if r[0].text == "B/32 E³, K=1, M=2")
    i = header.index("C NLL ↓ ours")
    assert [c.text for c in row[i : i + 2]] == ["1.510 ± 0.010", "1.532 ± 0.005"]
    row = next(r for r in table.blocks[0].rows if r[0].text == "B/32 down-DE, K=1, M=2")
    assert [c.text for c in row[1:5]] == ["down_de", "1", "2", "B/32"]
    assert [c.text for c in row[i : i + 2]] == ["1.500 ± 0.010", "1.510 ± 0.005"]
    # a paper row we did not run shows its own M (ensemble.runs of its key)
    row = next(r for r in table.blocks[0].rows if r[0].text == "H/14 down-DE, K=1, M=2")
    assert [c.text for c in row[1:6]] == ["down_de", "1", "2", "H/14", "not run"]


def test_fewshot_columns_take_joint_where_a_method_has_several_members(tmp_path):
    # Few-shot records: V-MoE (one member) has member "ensemble"; E³ (M=2) has "joint" and
    # "disjoint" only. Column fs5 prefers "ensemble", then "joint", so each row shows its own
    # paper-default classifier: V-MoE 0.30, 0.32 → 31.00 ± 1.00 %; E³ joint 0.20, 0.22 →
    # 21.00 ± 1.00 % (std 0.01414 / √2 = 0.01), never its disjoint 0.9.
    axes = ["method", "model.num_selected", "model.ensemble_size", "model.size"]
    cells = [
        {
            "axes": {
                "method": "vmoe",
                "model.num_selected": 2,
                "model.ensemble_size": 1,
                "model.size": "B/32",
            },
            "metrics": {"nll": [0.64, 0.65]},
            "split_metrics": {"fewshot/mean/5": {"fewshot_error": [0.30, 0.32]}},
        },
        {
            "axes": {
                "method": "e3",
                "model.num_selected": 1,
                "model.ensemble_size": 2,
                "model.size": "B/32",
            },
            "metrics": {"nll": [0.62, 0.63]},
            "split_metrics": {
                "fewshot/mean/5/joint": {"fewshot_error": [0.20, 0.22]},
                "fewshot/mean/5/disjoint": {"fewshot_error": [0.9, 0.9]},
            },
        },
    ]
    index = synthetic.write_sweep(tmp_path, "sizes", axes, [0, 1], cells, reproduces=["table35"])
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index)
    table = tables.build_table("table35", [ds])
    by_method = {r.key["method"]: r for r in table.rows}
    assert by_method["vmoe"].stats["fs5"].mean == pytest.approx(0.31)
    assert by_method["e3"].stats["fs5"].mean == pytest.approx(0.21)
    assert by_method["e3"].stats["fs5"].stderr == pytest.approx(0.01)
    assert "fs1" not in by_method["e3"].stats  # no 1-shot records at all: no column value
    header = table.blocks[0].header
    row = next(r for r in table.blocks[0].rows if r[0].text == "B/32 E³, K=1, M=2")
    i = header.index("5-shot error (%) ↓ ours")
    assert [c.text for c in row[i : i + 2]] == ["21.00 ± 1.00", "26.51 ± 0.11"]


# ----------------------------------------------------------------- alignment by meaning

SMALL = {
    "model": {"size": "tiny", "num_experts": 8},
    "data": {"dataset": "demo"},
    "finetune": {"steps": 300},
}


def _overlap_ds(root, config):
    # Tables 3/18 small variant: E=8, o ∈ {0, 2, 4, 8}, K ∈ {2, 1}; NLL rises with o
    cells = [
        {
            "axes": {"model.num_selected": k, "model.overlap": o},
            "metrics": {
                "nll": [0.60 + o / 100 + d for d in (-0.001, 0, 0.001)],
                "kl_diversity": [0.2 - o / 50 + d for d in (-0.001, 0, 0.001)],
            },
        }
        for k in (2, 1)
        for o in (0, 2, 4, 8)
    ]
    index = synthetic.write_sweep(
        root,
        "table3_overlap",
        ["model.num_selected", "model.overlap"],
        [0, 1, 2],
        cells,
        reproduces=["table3", "table18"],
        config=config,
    )
    return aggregate.build_dataset(aggregate.load_index(index), root, index)


def test_overlap_rows_align_by_o_over_e(tmp_path):
    ds = _overlap_ds(tmp_path, SMALL)
    t3 = tables.build_table("table3", [ds])
    by_o = {r.key["model.overlap"]: r for r in t3.rows}
    # o/E: ours 0, 2/8, 4/8, 8/8 ↔ the paper's o = 0, 8, 16, 32 of E = 32 (not o = 2, 4, 8)
    assert {o: r.ref["label"] for o, r in by_o.items()} == {
        "0": "o=0 of E=32 (=E³)",
        "2": "o=8 of E=32",
        "4": "o=16 of E=32",
        "8": "o=32 of E=32 (=Tiling)",
    }
    assert by_o["2"].ref["values"]["kl_diversity"] == [0.122, 0.010]
    header = t3.blocks[0].header
    assert header[:4] == ["paper row", "o/E", "num_selected", "overlap"]
    table = {r[0].text: [c.text for c in r] for r in t3.blocks[0].rows}
    assert table["o=8 of E=32"][1:4] == ["1/4", "2", "2"]
    assert table["o=32 of E=32 (=Tiling)"][1:4] == ["1", "2", "8"]
    # paper rows with no small counterpart: their o/E, no value in our overlap column
    assert table["o=2 of E=32"][1:5] == ["1/16", "", "", "not run"]
    assert any("o/E = 1/4: ours overlap=2 ↔ paper overlap=8" in f for f in t3.footnotes)
    # Table 18 (K=1) has no paper row at o = E: our o=8 stays unmatched, below the others
    t18 = tables.build_table("table18", [ds])
    o8 = next(r for r in t18.rows if r.key["model.overlap"] == "8")
    assert o8.ref is None and t18.blocks[0].rows[-1][0].text == ""
    assert t18.blocks[0].rows[-1][1].text == "1"


def test_page_states_the_configuration_that_ran(tmp_path):
    t3 = tables.build_table("table3", [_overlap_ds(tmp_path, SMALL)])
    assert t3.title == "Table 3: overlapping expert subsets — small variant"
    assert t3.paper_title.startswith("Table 3: overlapping expert subsets (E³-B/32, K=M=2, E=32)")
    (ran,) = t3.ran
    assert ran["variant"] == "small"
    assert ran["text"] == (
        "size tiny, E=8, data demo, fine-tune steps 300; axes: num_selected, "
        "overlap; seeds 0, 1, 2 (3)"
    )
    # a larger upstream set is stated; the plain one (renderings 1) is not
    base = {"model.size": "tiny", "upstream.renderings": 1}
    assert alignment.describe_run(_overlap_ds(tmp_path / "r", SMALL), base).startswith(
        "size tiny; axes"
    )
    eight = alignment.describe_run(
        _overlap_ds(tmp_path / "r8", SMALL), {**base, "upstream.renderings": 8}
    )
    assert eight.startswith("size tiny, upstream renderings 8; axes")
    # every paper title loses its configuration (size, E, dataset) in a variant's title
    for tid in spec_mod.TABLE_IDS:
        ref = spec_mod.load_reference(tid)
        if ref:
            sub = tables.subject(ref["title"])
            assert not any(w in sub for w in ("ImageNet", "E=32", "B/32", "S/32", "CIFAR")), sub


def test_page_states_the_upstream_seeds_the_fine_tunes_started_from(tmp_path):
    import json
    from pathlib import Path

    def ran(root, upstream, per_run=False):
        ds = _overlap_ds(root, {**SMALL, "upstream": upstream})
        for path in set(np.asarray(ds["result_path"].values).ravel().tolist()):
            r = json.loads(Path(path).read_text())
            if per_run:  # upstream_seeds: per_run: fine-tune seed s from upstream seed s
                r["config"]["upstream"]["seed"] = r["config"]["seed"]
            Path(path).write_text(json.dumps(r))
        return alignment.describe_run(ds, alignment.run_configuration(ds))

    shared = ran(tmp_path / "s", {"seed": 0})
    assert shared.startswith(
        "size tiny, E=8, data demo, fine-tune steps 300, upstream seed 0 (shared by all seeds:"
        " the spread between pretrainings is not in the tests);"
    )
    per_run = ran(tmp_path / "p", {"seed": 0}, per_run=True)
    assert "fine-tune steps 300, upstream seeds 0, 1, 2 (3); axes" in per_run
    # from a published checkpoint there is no pretraining seed to state
    public = ran(tmp_path / "c", {"seed": 0, "checkpoint": "gs://x/vmoe"})
    assert "upstream seed" not in public


def test_alignment_needs_the_experts_that_ran(tmp_path):
    # without E in the runs' configuration o/E is unknown: no paper row is guessed
    t3 = tables.build_table("table3", [_overlap_ds(tmp_path, {})])
    assert all(r.ref is None for r in t3.rows)
    assert "configuration not recorded" in t3.ran[0]["text"]


def test_fewer_experts_rows_align_by_e_ratio_and_runs(tmp_path):
    # Table 17 small variant as the expansion writes it (axes method, K, E, ensemble.runs):
    # V-MoE with E = 8, 4, 2 (runs 1), the up-DE members' own runs (up_de_member, runs 1),
    # up-DEs of 2 runs (E=4) and of 4 runs (E=2); 3 replicates each (``replicates: 3``).
    axes = ["method", "model.num_selected", "model.num_experts", "ensemble.runs"]

    def cell(method, e, runs, nll, **kw):
        return {
            "axes": {
                "method": method,
                "model.num_selected": 1,
                "model.num_experts": e,
                "ensemble.runs": runs,
            },
            "metrics": {"nll": nll},
            **kw,
        }

    ens = {"kind": "ensemble", "ensemble_kind": "upstream", "replicates": 3}
    cells = [
        cell("vmoe", 8, 1, [0.64, 0.65, 0.66]),
        cell("vmoe", 4, 1, [0.65, 0.66, 0.67]),
        cell("vmoe", 2, 1, [0.66, 0.67, 0.68]),
        cell("up_de_member", 4, 1, [0.65] * 3),
        cell("up_de_member", 2, 1, [0.66] * 3),
        cell("up_de", 4, 2, [0.60, 0.61, 0.62], **ens),
        cell("up_de", 2, 4, [0.57, 0.58, 0.59], **ens),
    ]
    index = synthetic.write_sweep(
        tmp_path,
        "table17_fewer_experts",
        axes,
        [0, 1, 2],
        cells,
        reproduces=["table17"],
        config={"model": {"size": "tiny"}},
    )
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index)
    t = tables.build_table("table17", [ds])
    got = {
        (r.key["method"], r.key["model.num_experts"]): (r.ref or {}).get("label") for r in t.rows
    }
    assert got == {
        ("vmoe", "8"): "V-MoE, K=1, M=1, E=32",
        ("vmoe", "4"): None,
        ("vmoe", "2"): None,
        ("up_de_member", "4"): None,
        ("up_de_member", "2"): None,
        ("up_de", "4"): "Up-DE, K=1, M=2, E=16",
        ("up_de", "2"): "Up-DE, K=1, M=4, E=8",
    }
    up4 = next(r for r in t.rows if r.key["ensemble.runs"] == "4")
    assert up4.align_ratio == "1/4" and "E/E_max = 1/4" in up4.ref_note
    assert up4.stats["nll"].mean == pytest.approx(0.58) and up4.runs_requested == 3
    header = t.blocks[0].header
    assert header[:6] == ["paper row", "E/E_max", "method", "num_selected", "num_experts", "M"]
    rows = {r[0].text: [c.text for c in r] for r in t.blocks[0].rows}
    assert rows["Up-DE, K=1, M=4, E=8"][1:7] == ["1/4", "up_de", "1", "2", "4", "3/3"]
    assert rows["Up-DE, K=2, M=2, E=16"][1:7] == ["1/2", "", "2", "", "2", "not run"]
    # both claims address the ensembles by ensemble.runs. Hand-derived, sd 0.01 per row:
    # runs=4 (.58) vs V-MoE at the largest E (.65): t = -0.07/√(2e-4/3) = -8.57, ν = 4;
    # runs=4 vs runs=2 (.61): t = -0.03/0.008165 = -3.674, ν = 4, one-sided p = 0.0107
    by_claim = {v.claim: v for v in t.verdicts}
    v1 = by_claim["(M=4, E=8) beats (M=1, E=32) in NLL (Table 17)"]
    v2 = by_claim["(M=4, E=8) beats (M=2, E=16) in NLL (Table 17)"]
    assert v1.outcome == "held" and v1.n == "3 vs 3" and "t = -8.57" in v1.statistic
    assert v2.outcome == "held" and "p = 0.0107" in v2.statistic


def test_partitioning_k_reading_matches_table22():
    from e3lib.report.alignment import match_reference

    ref = spec_mod.load_reference("table22")
    key = {"method": "partitioning", "model.num_selected": "1", "model.ensemble_size": "2"}
    row, note = match_reference(key, ref, {})  # absent partition_k reads per_subset
    assert row["label"].startswith("Partitioning") and note == ""
    row, _ = match_reference(key, ref, {"model.partition_k": "per_subset"})
    assert row["values"]["gflops"] == [97.885, None]
    k2 = dict(key, **{"model.num_selected": "2"})
    assert match_reference(k2, ref, {"model.partition_k": "per_subset"})[0] is None
    row, note = match_reference(k2, ref, {"model.partition_k": "total"})
    assert row["values"]["gflops"] == [97.885, None] and "partition_k=total" in note
    assert match_reference(key, ref, {"model.partition_k": "total"})[0] is None


# ----------------------------------------------------------------- deep ensembles: ensemble.runs


def test_members_label_reads_runs_for_deep_ensembles_and_m_otherwise():
    from e3lib.report.rows import display_key, members_label

    assert members_label({"method": "e3", "model.ensemble_size": "2", "ensemble.runs": "1"}) == "2"
    assert (
        members_label({"method": "down_de", "model.ensemble_size": "1", "ensemble.runs": "4"})
        == "4"
    )
    assert members_label({"ensemble.runs": 2}) == "2"  # a paper key (YAML int)
    assert members_label({"model.ensemble_size": 2, "ensemble.runs": 3}) == "3×2"
    assert members_label({"method": "vit"}) is None
    assert members_label({"model.ensemble_size": "-"}) is None  # axis does not apply
    assert display_key(["method", "model.ensemble_size", "model.size", "ensemble.runs"]) == [
        "method",
        "M",
        "model.size",
    ]
    # a pivot over one of them keeps both apart
    assert display_key(
        ["model.num_selected", "model.ensemble_size"], exclude=["ensemble.runs"]
    ) == ["model.num_selected", "model.ensemble_size"]


def _ds(root, sweep, axes, seeds, cells, reproduces, **kw):
    index = synthetic.write_sweep(root, sweep, axes, seeds, cells, reproduces=reproduces, **kw)
    return aggregate.build_dataset(aggregate.load_index(index), root, index)


def test_table15_deep_ensembles_by_runs(tmp_path):
    # Table 15 as sweeps/table15_upstream_ensembles.yaml expands (axes method, model.size,
    # ensemble.runs; V-MoE and up-DE member runs at runs=1), at B/32 with 6 seeds: the
    # ensembles of 2 runs have 6 // 2 = 3 replicates, those of 4 runs 6 // 4 = 1.
    axes = ["method", "model.size", "ensemble.runs"]

    def cell(method, runs, nll, kl, kind="run", **kw):
        return {
            "axes": {"method": method, "model.size": "B/32", "ensemble.runs": runs},
            "metrics": {"nll": nll, "kl_diversity": kl},
            "kind": kind,
            **kw,
        }

    six = [0.64, 0.65, 0.66, 0.64, 0.65, 0.66]
    cells = [
        cell("vmoe", 1, six, [0.0] * 6),
        cell("up_de_member", 1, six, [0.0] * 6),
        cell("down_de", 2, [0.62, 0.63, 0.64], [0.07, 0.08, 0.09], "ensemble"),
        cell("down_de", 4, [0.61], [0.08], "ensemble"),
        cell(
            "up_de", 2, [0.58, 0.59, 0.60], [0.20, 0.21, 0.22], "ensemble", ensemble_kind="upstream"
        ),
        cell("up_de", 4, [0.56], [0.21], "ensemble", ensemble_kind="upstream"),
    ]
    ds = _ds(tmp_path, "table15_upstream_ensembles", axes, list(range(6)), cells, ["table15"])
    t = tables.build_table("table15", [ds])
    # `where` keeps the ensembles only; each matches the paper row of its own number of runs
    got = {
        (r.key["method"], r.key["ensemble.runs"]): (r.ref["label"], r.runs_requested)
        for r in t.rows
    }
    assert got == {
        ("down_de", "2"): ("B/32 down-DE, M=2", 3),
        ("down_de", "4"): ("B/32 down-DE, M=4", 1),
        ("up_de", "2"): ("B/32 up-DE, M=2", 3),
        ("up_de", "4"): ("B/32 up-DE, M=4", 1),
    }
    header = t.blocks[0].header
    assert header[:5] == ["paper row", "method", "size", "M", "seeds"]
    rows = {r[0].text: [c.text for c in r] for r in t.blocks[0].rows}
    # down-DE of 2 runs: nll .62 .63 .64 → 0.630 ± 0.01/√3 = 0.006; paper 0.620 ± 0.001
    assert rows["B/32 down-DE, M=2"][1:7] == [
        "down_de",
        "B/32",
        "2",
        "3/3",
        "0.630 ± 0.006",
        "0.620 ± 0.001",
    ]
    # one replicate: no error bar; paper 0.607 ± 0.000
    assert rows["B/32 down-DE, M=4"][3:7] == ["4", "1/1", "0.610 (n=1)", "0.607 ± 0.000"]
    assert rows["H/14 up-DE, M=4"][1:5] == ["up_de", "H/14", "4", "not run"]
    # claims at M=2 (ensemble.runs=2), per size: up .59 vs down .63, sd .01, n = 3 each:
    # t = -0.04/√(2e-4/3) = -4.90, ν = 4; KL .21 vs .08: t = 0.13/0.008165 = 15.9
    by_claim = {v.claim: v for v in t.verdicts}
    nll = by_claim["up-DE beats down-DE in NLL at every size, M=2 (Table 15)"]
    assert nll.outcome == "held" and nll.n == "3 vs 3" and "t = -4.9" in nll.statistic
    kl = by_claim["up-DE is more diverse (KL) than down-DE at every size, M=2 (Table 15)"]
    assert kl.outcome == "held" and "t = 15.9" in kl.statistic


def test_table14_one_m_column_for_e3_and_deep_ensembles(tmp_path):
    # Table 14 as sweeps/table14_members.yaml expands: E³ (K=1, M=2 = model.ensemble_size)
    # and the down-DE of 2 V-MoEs (ensemble.runs=2, model.ensemble_size=1), member dim.
    axes = ["method", "model.num_selected", "model.ensemble_size", "ensemble.runs"]
    cells = [
        {
            "axes": {"method": "e3", "model.num_selected": 1, "model.ensemble_size": 2},
            "metrics": {"nll": [0.62, 0.63]},
            "member_metrics": {"0": {"nll": [0.67, 0.68]}, "1": {"nll": [0.68, 0.69]}},
        },
        {
            "axes": {"method": "vmoe", "model.num_selected": 1, "model.ensemble_size": 1},
            "metrics": {"nll": [0.64, 0.65]},
        },
        {
            "axes": {
                "method": "down_de",
                "model.num_selected": 1,
                "model.ensemble_size": 1,
                "ensemble.runs": 2,
            },
            "kind": "ensemble",
            "replicates": 2,
            "metrics": {"nll": [0.61, 0.63]},
            "member_metrics": {"0": {"nll": [0.64, 0.65]}, "1": {"nll": [0.65, 0.66]}},
        },
    ]
    ds = _ds(tmp_path, "table14_members", axes, [0, 1], cells, ["table14"])
    t = tables.build_table("table14", [ds])
    labels = {(r.key["method"], r.key["member"]): (r.ref or {}).get("label") for r in t.rows}
    assert labels[("e3", "ensemble")] == "E³ (K=1), M=2, ensemble"
    assert labels[("down_de", "ensemble")] == "Down-DE (V-MoE, K=1), M=2, ensemble"
    assert labels[("down_de", "1")] == "Down-DE (V-MoE, K=1), M=2, member 1"
    assert labels[("vmoe", "ensemble")] is None
    header = t.blocks[0].header
    assert header[:5] == ["paper row", "method", "num_selected", "M", "member"]
    rows = {r[0].text: [c.text for c in r] for r in t.blocks[0].rows}
    # down-DE ensemble nll .61 .63 → 0.620 ± 0.01414/√2 = 0.010; paper 0.620 ± 0.001
    assert rows["Down-DE (V-MoE, K=1), M=2, ensemble"][1:8] == [
        "down_de",
        "1",
        "2",
        "ensemble",
        "2/2",
        "0.620 ± 0.010",
        "0.620 ± 0.001",
    ]
    assert rows["E³ (K=1), M=2, member 0"][1:8] == [
        "e3",
        "1",
        "2",
        "0",
        "2/2",
        "0.675 ± 0.005",
        "0.671 ± 0.003",
    ]
    assert rows["Up-DE (V-MoE, K=1), M=4, member 3"][1:6] == ["up_de", "", "4", "3", "not run"]


def test_table12_efficient_ensembles_keep_m_of_one_model(tmp_path):
    # Table 12's sweep has no deep ensemble: E³, MIMO, MC Dropout and BatchEnsemble stay on
    # model.ensemble_size (axes as sweeps/table12_efficient_ensembles.yaml small expands).
    axes = [
        "method",
        "model.ensemble_size",
        "model.num_selected",
        "model.expert_dropout",
        "model.mimo_batch_repetition",
    ]

    def cell(method, m, k, nll, br=1, drop=0.0):
        return {
            "axes": {
                "method": method,
                "model.ensemble_size": m,
                "model.num_selected": k,
                "model.expert_dropout": drop,
                "model.mimo_batch_repetition": br,
            },
            "metrics": {"nll": nll},
        }

    cells = [
        cell("vit", 1, 1, [0.69, 0.70]),
        cell("batchensemble", 2, 1, [0.68, 0.69]),
        cell("mimo", 2, 2, [0.63, 0.64], br=2),
        cell("mc_dropout", 2, 1, [0.64, 0.65], drop=0.1),
        cell("e3", 2, 1, [0.62, 0.63]),
    ]
    ds = _ds(tmp_path, "table12_efficient_ensembles", axes, [0, 1], cells, ["table12"])
    t = tables.build_table("table12", [ds])
    labels = {r.key["method"]: (r.ref or {}).get("label") for r in t.rows}
    assert labels == {
        "vit": "ViT",
        "batchensemble": "BE ViT, M=2",
        "mimo": "MIMO V-MoE (BR=2), K=2, M=2",
        "mc_dropout": "MC Dropout V-MoE, K=1, M=2",
        "e3": "E³, K=1, M=2",
    }
    header = t.blocks[0].header
    assert header[1:3] == ["method", "M"]
    rows = {r[0].text: [c.text for c in r] for r in t.blocks[0].rows}
    assert rows["E³, K=1, M=2"][1:3] == ["e3", "2"] and rows["ViT"][1:3] == ["vit", "1"]
    assert rows["E³, K=2, M=4"][1:4] == ["e3", "4", "2"]  # not run: its paper key


def test_figure2_grid_over_deep_ensemble_runs(tmp_path):
    # Figure 2 as sweeps/figure2_km_grid.yaml expands: V-MoE runs (ensemble.runs=1) and
    # their down-DEs (runs 2, 4), per K; 3 replicates each. NLL falls with runs and with K.
    axes = ["method", "model.num_selected", "ensemble.runs"]
    cells = []
    for k in (1, 2):
        for runs in (1, 2, 4):
            nll = [0.80 - 0.02 * k - 0.01 * runs + d for d in (-0.001, 0, 0.001)]
            c = {
                "axes": {
                    "method": "vmoe" if runs == 1 else "down_de",
                    "model.num_selected": k,
                    "ensemble.runs": runs,
                },
                "metrics": {"nll": nll},
                "gflops": 10.0 * runs * (1 + 0.2 * k),
            }
            cells.append(dict(c, kind="ensemble", replicates=3) if runs > 1 else c)
    ds = _ds(tmp_path, "figure2_km_grid", axes, [0, 1, 2], cells, ["figure2"])
    t = tables.build_table("figure2", [ds])
    nll = t.blocks[0]
    # method merged: one grid row per K, one column per number of runs
    assert nll.header == ["num_selected", "runs=1", "runs=2", "runs=4"]
    assert [c.text for c in nll.rows[0]] == ["1", "0.770 ± 0.001", "0.760 ± 0.001", "0.740 ± 0.001"]
    assert [v.outcome for v in t.verdicts] == ["held", "held", "held"]
    from e3lib.report import figures

    df = figures.tidy(ds)
    assert sorted(set(df["M"])) == ["1", "2", "4"]
    figs = figures._km_heatmap(ds, df, tmp_path / "fig", "figure2_km_grid")
    assert [f.kind for f in figs] == ["km_heatmap", "km_heatmap"] and figs[0].path.exists()


def _deep_ensemble_labels() -> set[str]:
    """Labels of every deep ensemble the shipped sweeps declare (any variant)."""
    from pathlib import Path

    labels = set()
    for path in Path(__file__).parent.parent.joinpath("sweeps").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        blocks = [doc.get("ensembles") or []] + [
            (v or {}).get("ensembles") or [] for v in (doc.get("variants") or {}).values()
        ]
        labels |= {e["label"] for b in blocks for e in b}
    return labels


def test_deep_ensemble_rows_are_addressed_by_runs_everywhere():
    # every selector of tables.yaml and every paper key that names a deep-ensemble method
    # gives its size as ensemble.runs, never as model.ensemble_size (M of one model)
    labels = _deep_ensemble_labels()
    assert {"down_de", "up_de", "vit_de"} <= labels
    spec = spec_mod.default_spec()
    selectors = []
    for tid, t in spec["tables"].items():
        where = t.get("where", [])
        selectors += [(tid, w) for w in (where if isinstance(where, list) else [where])]
        selectors += [(tid, v[s]) for v in t.get("verdicts", []) for s in ("a", "b") if s in v]
    for tid in spec_mod.TABLE_IDS:
        ref = spec_mod.load_reference(tid) or {"rows": []}
        selectors += [(tid, r["key"]) for r in ref["rows"]]
    de = [(tid, s) for tid, s in selectors if s.get("method") in labels]
    assert len(de) > 50
    bad = [
        (tid, s)
        for tid, s in de  # (a bare {method: …} names every size)
        if "model.ensemble_size" in s or "ensemble.runs" not in s and len(s) > 1
    ]
    assert not bad, bad


def _expanded_ds(root, sweep_file, reproduces):
    """A dataset on exactly the rows ``e3 expand`` makes of a shipped sweep's small variant:
    its axes, its run cells (all seeds) and its ensemble cells (their replicates), with
    synthetic NLL 0.70 − 0.01·runs (+ 0.001 per seed position; member "0": 0.75 + …), KL
    0.1·runs, GFLOPs 10·runs."""
    from e3lib.sweep import ENSEMBLE_RUNS_AXIS, load_sweep

    sw = load_sweep(f"sweeps/{sweep_file}.yaml", "small")
    cells: dict[tuple, dict] = {}
    for e in sw.entries:
        c = cells.setdefault(
            tuple(sorted(e["axes"].items())),
            {
                "axes": e["axes"],
                "kind": e["kind"],
                "replicates": 0,
                "ensemble_kind": e.get("ensemble_kind", "downstream"),
            },
        )
        c["replicates"] += 1
    seeds = sorted({e["seed"] for e in sw.entries if e["kind"] == "run"})
    for c in cells.values():
        n = len(seeds) if c["kind"] == "run" else c["replicates"]
        runs = c["axes"][ENSEMBLE_RUNS_AXIS]
        c["metrics"] = {
            "nll": [0.70 - 0.01 * runs + 0.001 * i for i in range(n)],
            "kl_diversity": [0.1 * runs] * n,
        }
        c["member_metrics"] = {"0": {"nll": [0.75 + 0.001 * i for i in range(n)]}}
        c["gflops"] = 10.0 * runs
    return sw, _ds(root, sweep_file, sw.axes, seeds, list(cells.values()), reproduces)


# (sweep, table, deep-ensemble rows shown, whether each meets its paper row). Small
# variants: Tables 15/25/26 run tiny/mini models, which no paper row (S/32 … H/14) matches;
# Table 14 shows members ensemble and 0 of each; Table 25 keeps down-DE(2), Table 26 (4).
@pytest.mark.parametrize(
    "sweep_file, table_id, n_de, matched",
    [
        ("table15_upstream_ensembles", "table15", 8, False),
        ("table17_fewer_experts", "table17", 4, True),
        ("table14_members", "table14", 8, True),
        ("figure2_km_grid", "figure2", 6, False),
        ("model_sizes", "table25", 2, False),
        ("model_sizes", "table26", 2, False),
    ],
)
def test_deep_ensemble_rows_of_real_expansions_reach_their_tables(
    tmp_path, sweep_file, table_id, n_de, matched
):
    # every deep-ensemble row the expansion makes for the table shows with M = its runs, and
    # every claim's selectors find their rows (none "no row matches", none ambiguous)
    sw, ds = _expanded_ds(tmp_path, sweep_file, [table_id])
    t = tables.build_table(table_id, [ds])
    de = [r for r in t.rows if r.key.get("ensemble.runs", "1") != "1"]
    assert len(de) == n_de
    assert all(r.members == r.key["ensemble.runs"] for r in de)
    if matched:  # the paper row of the same method (or E ratio), runs and member
        for r in de:
            assert r.ref is not None and f"M={r.key['ensemble.runs']}" in r.ref["label"], r.key
    for r in de:
        base = (
            0.70 - 0.01 * int(r.key["ensemble.runs"])
            if r.key.get("member", "ensemble") == "ensemble"
            else 0.75
        )
        assert r.stats["nll"].mean == pytest.approx(base + 0.0005 * (r.runs_requested - 1))
    claims = spec_mod.default_spec()["tables"][table_id].get("verdicts", [])
    for claim, v in zip(claims, t.verdicts, strict=True):
        if claim["metric"] in ("nll", "kl_diversity", "gflops"):  # the metrics written
            assert v.outcome != "ambiguous" and "no row matches" not in v.statistic, v
