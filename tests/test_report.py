"""Tables, verdicts, spec and figure helpers on synthetic result sets with known statistics."""

import numpy as np
import pytest
import yaml

from e3lib import aggregate
from e3lib.report import spec as spec_mod, synthetic, tables
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
    {"axes": {"method": "e3"}, "metrics": {"nll": NLL_E3, "error": [0.160, 0.165, 0.170],
                                           "kl_diversity": [0.20, 0.21, 0.22]}},
    {"axes": {"method": "tiling", "model.noise_mult": 1},
     "metrics": {"nll": [0.64, 0.65, 0.66], "error": [0.17] * 3,
                 "kl_diversity": [0.001, 0.002, 0.003]}},
    {"axes": {"method": "tiling", "model.noise_mult": 4},
     "metrics": {"nll": [0.63, 0.64, 0.65], "error": [0.17] * 3,
                 "kl_diversity": [0.004, 0.005, 0.006]}},
    {"axes": {"method": "partitioning"}, "metrics": {"nll": [0.612, 0.614, 0.0],
                                                     "error": [0.17] * 3},
     "seeds": {2: None}},
]


@pytest.fixture(scope="module")
def table2_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2")
    index = synthetic.write_sweep(root, "ablation", ["method", "model.noise_mult"], [0, 1, 2],
                                  CELLS, reproduces=["table2"])
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
        "V-MoE (K=4)", "E³", "Tiling", "Tiling (σ×2)", "Tiling (σ×4)", "Partitioning"]
    text, bold = _row(t, "E³")
    assert text[1:4] == ["e3", "-", "3/3"]
    assert text[4:6] == ["0.610 ± 0.006", "0.612 ± 0.001"]
    assert text[6:8] == ["16.50 ± 0.29", "16.49 ± 0.02"]       # error shown in percent
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
    assert kl.outcome == "held" and "ratio 105" in kl.statistic   # 0.21 / 0.002
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
        spec_mod.load_reference(tid)           # raises on a schema error
    t3 = spec_mod.load_reference("table3")
    o8 = [r for r in t3["rows"] if r["key"] == {"method": "e3", "model.overlap": 8}][0]
    assert o8["values"]["kl_diversity"] == [0.122, 0.010]
    assert o8["values"]["error"] == [0.1667, 0.0007]   # 16.67 ± 0.07 % as fractions
    t17 = spec_mod.load_reference("table17")
    assert t17["rows"][2]["values"]["nll"] == [0.577, None]   # printed without stderr


def test_bad_spec_names_file_field_and_allowed(tmp_path):
    doc = yaml.safe_load(spec_mod.SPEC_FILE.read_text())
    doc["tables"]["table3"]["verdicts"][0]["test"] = "bigger"
    bad = tmp_path / "tables.yaml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(spec_mod.SpecError, match=r"tables.yaml: field tables.table3.verdicts.0"
                                                 r".test: 'bigger' is not one of"):
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
    x = np.array([1., 2, 2, 3, 4])
    y = np.array([.9, .8, .95, .85, .7])
    assert pareto_front(x, y).tolist() == [0, 1, 4]
    # M=2 members, N=3 images, C=2 classes; mean probs → confidence .9, .9, .62
    probs = np.array([[[.9, .1], [.2, .8], [.62, .38]],
                      [[.9, .1], [0., 1.], [.62, .38]]])
    labels = np.array([0, 0, 0])
    conf, acc, count = reliability_bins(probs, labels, n_bins=15)
    # .9·15 = 13.5 → bin 13 holds images 0 (correct) and 1 (wrong); .62·15 = 9.3 → bin 9
    assert count[13] == 2 and acc[13] == 0.5 and conf[13] == pytest.approx(0.9)
    assert count[9] == 1 and acc[9] == 1.0 and count.sum() == 3


def test_shifted_set_columns_and_any_of_row_filter(tmp_path):
    # Table 25 layout on a B/32 sweep of 2 seeds: its `where` keeps E³ (K=1, M=2), the
    # 2-member V-MoE deep ensemble and V-MoE K=2, not ViT. Column c_nll is the NLL of the
    # records of split "corrupted", corruption "mean"; a_nll those of shifted "imagenet_a".
    #   E³ c_nll 1.50, 1.52 → 1.510 ± 0.01414 (std, ddof=1)/√2 = 0.010;
    #   a_nll 5.0, 5.2 → 5.100 ± 0.1414/√2 = 0.100
    axes = ["method", "model.num_selected", "model.ensemble_size", "model.size"]

    def cell(method, k, m, nll, c_nll, a_nll):
        return {"axes": {"method": method, "model.num_selected": k, "model.ensemble_size": m,
                         "model.size": "B/32"},
                "metrics": {"nll": nll},
                "split_metrics": {"corrupted/mean": {"nll": c_nll},
                                  "shifted/imagenet_a": {"nll": a_nll}}}

    cells = [cell("e3", 1, 2, [0.62, 0.63], [1.50, 1.52], [5.0, 5.2]),
             cell("down_de", 1, 2, [0.61, 0.62], [1.49, 1.51], [4.8, 4.9]),
             cell("vmoe", 2, 1, [0.64, 0.65], [1.56, 1.58], [5.0, 5.1]),
             cell("vit", 1, 1, [0.69, 0.70], [1.70, 1.71], [5.3, 5.4])]
    index = synthetic.write_sweep(tmp_path, "sizes", axes, [0, 1], cells,
                                  reproduces=["table25"])
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index)
    table = tables.build_table("table25", [ds])
    assert sorted(r.key["method"] for r in table.rows) == ["down_de", "e3", "vmoe"]
    e3 = next(r for r in table.rows if r.key["method"] == "e3")
    assert e3.stats["nll"].mean == pytest.approx(0.625)
    assert e3.stats["c_nll"].mean == pytest.approx(1.51)
    assert e3.stats["c_nll"].stderr == pytest.approx(0.01)
    assert e3.stats["a_nll"].mean == pytest.approx(5.1)
    assert e3.stats["a_nll"].stderr == pytest.approx(0.1)
    assert "v2_nll" not in e3.stats            # no ImageNet-V2 records: no value, not zero
    assert e3.ref["label"] == "B/32 E³, K=1, M=2" and e3.ref["values"]["c_nll"] == [1.532, 0.005]
    header = table.blocks[0].header
    assert "C NLL ↓ ours" in header and "C NLL paper" in header
    row = next(r for r in table.blocks[0].rows if r[0].text == "B/32 E³, K=1, M=2")
    i = header.index("C NLL ↓ ours")
    assert [c.text for c in row[i:i + 2]] == ["1.510 ± 0.010", "1.532 ± 0.005"]


def test_fewshot_columns_take_joint_where_a_method_has_several_members(tmp_path):
    # Few-shot records: V-MoE (one member) has member "ensemble"; E³ (M=2) has "joint" and
    # "disjoint" only. Column fs5 prefers "ensemble", then "joint", so each row shows its own
    # paper-default classifier: V-MoE 0.30, 0.32 → 31.00 ± 1.00 %; E³ joint 0.20, 0.22 →
    # 21.00 ± 1.00 % (std 0.01414 / √2 = 0.01), never its disjoint 0.9.
    axes = ["method", "model.num_selected", "model.ensemble_size", "model.size"]
    cells = [
        {"axes": {"method": "vmoe", "model.num_selected": 2, "model.ensemble_size": 1,
                  "model.size": "B/32"}, "metrics": {"nll": [0.64, 0.65]},
         "split_metrics": {"fewshot/mean/5": {"fewshot_error": [0.30, 0.32]}}},
        {"axes": {"method": "e3", "model.num_selected": 1, "model.ensemble_size": 2,
                  "model.size": "B/32"}, "metrics": {"nll": [0.62, 0.63]},
         "split_metrics": {"fewshot/mean/5/joint": {"fewshot_error": [0.20, 0.22]},
                           "fewshot/mean/5/disjoint": {"fewshot_error": [0.9, 0.9]}}},
    ]
    index = synthetic.write_sweep(tmp_path, "sizes", axes, [0, 1], cells,
                                  reproduces=["table35"])
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index)
    table = tables.build_table("table35", [ds])
    by_method = {r.key["method"]: r for r in table.rows}
    assert by_method["vmoe"].stats["fs5"].mean == pytest.approx(0.31)
    assert by_method["e3"].stats["fs5"].mean == pytest.approx(0.21)
    assert by_method["e3"].stats["fs5"].stderr == pytest.approx(0.01)
    assert "fs1" not in by_method["e3"].stats      # no 1-shot records at all: no column value
    header = table.blocks[0].header
    row = next(r for r in table.blocks[0].rows if r[0].text == "B/32 E³, K=1, M=2")
    i = header.index("5-shot error (%) ↓ ours")
    assert [c.text for c in row[i:i + 2]] == ["21.00 ± 1.00", "26.51 ± 0.11"]


# ----------------------------------------------------------------- alignment by meaning

SMALL = {"model": {"size": "tiny", "num_experts": 8}, "data": {"dataset": "demo"},
         "finetune": {"steps": 300}}


def _overlap_ds(root, config):
    # Tables 3/18 small variant: E=8, o ∈ {0, 2, 4, 8}, K ∈ {2, 1}; NLL rises with o
    cells = [{"axes": {"model.num_selected": k, "model.overlap": o},
              "metrics": {"nll": [0.60 + o / 100 + d for d in (-.001, 0, .001)],
                          "kl_diversity": [0.2 - o / 50 + d for d in (-.001, 0, .001)]}}
             for k in (2, 1) for o in (0, 2, 4, 8)]
    index = synthetic.write_sweep(root, "table3_overlap",
                                  ["model.num_selected", "model.overlap"], [0, 1, 2], cells,
                                  reproduces=["table3", "table18"], config=config)
    return aggregate.build_dataset(aggregate.load_index(index), root, index)


def test_overlap_rows_align_by_o_over_e(tmp_path):
    ds = _overlap_ds(tmp_path, SMALL)
    t3 = tables.build_table("table3", [ds])
    by_o = {r.key["model.overlap"]: r for r in t3.rows}
    # o/E: ours 0, 2/8, 4/8, 8/8 ↔ the paper's o = 0, 8, 16, 32 of E = 32 (not o = 2, 4, 8)
    assert {o: r.ref["label"] for o, r in by_o.items()} == {
        "0": "o=0 of E=32 (=E³)", "2": "o=8 of E=32", "4": "o=16 of E=32",
        "8": "o=32 of E=32 (=Tiling)"}
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
    assert ran["text"] == ("size tiny, E=8, data demo, fine-tune steps 300; axes: num_selected, "
                           "overlap; seeds 0, 1, 2 (3)")
    # every paper title loses its configuration (size, E, dataset) in a variant's title
    for tid in spec_mod.TABLE_IDS:
        ref = spec_mod.load_reference(tid)
        if ref:
            sub = tables.subject(ref["title"])
            assert not any(w in sub for w in ("ImageNet", "E=32", "B/32", "S/32", "CIFAR")), sub


def test_alignment_needs_the_experts_that_ran(tmp_path):
    # without E in the runs' configuration o/E is unknown: no paper row is guessed
    t3 = tables.build_table("table3", [_overlap_ds(tmp_path, {})])
    assert all(r.ref is None for r in t3.rows)
    assert "configuration not recorded" in t3.ran[0]["text"]


def test_fewer_experts_rows_align_by_e_ratio(tmp_path):
    # Table 17 small variant: V-MoE with E = 8, 4, 2 and up-DEs of M=2 (E=4) and M=4 (E=2)
    axes = ["model.num_selected", "model.num_experts", "method", "model.ensemble_size"]

    def cell(e, method, m):
        return {"axes": {"model.num_selected": 1, "model.num_experts": e, "method": method,
                         "model.ensemble_size": m}, "metrics": {"nll": [0.6, 0.61, 0.62]}}

    cells = [cell(8, "vmoe", 1), cell(4, "vmoe", 1), cell(2, "vmoe", 1), cell(4, "up_de", 2),
             cell(2, "up_de", 4)]
    index = synthetic.write_sweep(tmp_path, "table17_fewer_experts", axes, [0, 1, 2], cells,
                                  reproduces=["table17"], config={"model": {"size": "tiny"}})
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index)
    t = tables.build_table("table17", [ds])
    got = {(r.key["method"], r.key["model.num_experts"]): (r.ref or {}).get("label")
           for r in t.rows}
    assert got == {("vmoe", "8"): "V-MoE, K=1, M=1, E=32", ("vmoe", "4"): None,
                   ("vmoe", "2"): None, ("up_de", "4"): "Up-DE, K=1, M=2, E=16",
                   ("up_de", "2"): "Up-DE, K=1, M=4, E=8"}
    up4 = next(r for r in t.rows if r.key["model.ensemble_size"] == "4")
    assert up4.align_ratio == "1/4" and "E/E_max = 1/4" in up4.ref_note


def test_partitioning_k_reading_matches_table22():
    from e3lib.report.alignment import match_reference

    ref = spec_mod.load_reference("table22")
    key = {"method": "partitioning", "model.num_selected": "1", "model.ensemble_size": "2"}
    row, note = match_reference(key, ref, {})        # absent partition_k reads per_subset
    assert row["label"].startswith("Partitioning") and note == ""
    row, _ = match_reference(key, ref, {"model.partition_k": "per_subset"})
    assert row["values"]["gflops"] == [97.885, None]
    k2 = dict(key, **{"model.num_selected": "2"})
    assert match_reference(k2, ref, {"model.partition_k": "per_subset"})[0] is None
    row, note = match_reference(k2, ref, {"model.partition_k": "total"})
    assert row["values"]["gflops"] == [97.885, None] and "partition_k=total" in note
    assert match_reference(key, ref, {"model.partition_k": "total"})[0] is None
