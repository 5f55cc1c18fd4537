"""Hyperparameter selection on the validation split (the paper's Table 7 grid, App. A.4):
the `select:` block of sweep files, `e3lib.aggregate.select_grid` on synthetic result sets
with hand-chosen validation values, the report's selected rows, and a real tiny `e3 run`
(and `e3 ensemble`) writing `val` records."""

import copy
import json
import math

import numpy as np
import pytest
from done_files import write_done_files

from e3lib import metrics
from e3lib.aggregate import AggregateError, build_dataset, load_index, select_grid, selection_of
from e3lib.report import synthetic
from e3lib.sweep import SweepError, expand_doc, load_sweep


def write_sweep(root, *args, **kwargs):
    """A synthetic result set with the done.json status files the workflow writes."""
    index = synthetic.write_sweep(root, *args, **kwargs)
    write_done_files(root, index)
    return index


SELECT = {
    "over": ["finetune.steps", "finetune.lr"],
    "metric": "nll",
    "split": "val",
    "mode": "min",
    "member": "ensemble",
}
AXES = ["method", "finetune.steps", "finetune.lr"]
GRID = [(1, 0.1), (1, 0.3), (2, 0.1), (2, 0.3)]  # grid order: steps outer, lr inner


def grid_cells(method, val_by_point, seeds_by_point=None):
    """One cell per grid point; the clean test NLL encodes the point (10·steps + 100·lr)
    so the test can tell which point's test metrics the selection carried over."""
    cells = []
    for steps, lr in GRID:
        val = val_by_point[(steps, lr)]
        clean = 10 * steps + 100 * lr
        cells.append(
            {
                "axes": {"method": method, "finetune.steps": steps, "finetune.lr": lr},
                "metrics": {"nll": [clean, clean]},
                "val_metrics": {"nll": val},
                "seeds": (seeds_by_point or {}).get((steps, lr), {}),
            }
        )
    return cells


def selected(tmp_path, cells, select=SELECT):
    index = write_sweep(tmp_path, "grid", AXES, [0, 1], cells, reproduces=["demo"], select=select)
    ds = build_dataset(load_index(index), tmp_path)
    return ds, select_grid(ds)


def at(view, method, name):
    return view[name].sel({"method": method}).item()  # (`method=` is a sel() option)


def test_picks_best_mean_over_seeds_not_best_single_seed(tmp_path):
    # method a: means (1,.1) .60, (1,.3) .65, (2,.1) .62, (2,.3) .75 → (1, 0.1).
    # (1,.3) holds the lowest single seed (.40) but not the lowest mean.
    a = {
        (1, 0.1): [0.50, 0.70],
        (1, 0.3): [0.40, 0.90],
        (2, 0.1): [0.62, 0.62],
        (2, 0.3): [0.70, 0.80],
    }
    # method b: the best mean is the last grid point, (2, .3): .20
    b = {(1, 0.1): [0.9, 0.9], (1, 0.3): [0.8, 0.8], (2, 0.1): [0.7, 0.7], (2, 0.3): [0.1, 0.3]}
    ds, view = selected(tmp_path, grid_cells("a", a) + grid_cells("b", b))
    assert "finetune__steps" not in view.dims and "finetune__lr" not in view.dims
    assert json.loads(view.attrs["axes"]) == ["method"]
    assert selection_of(view) == SELECT and selection_of(ds) is None
    assert at(view, "a", "selected__finetune__steps") == "1"
    assert at(view, "a", "selected__finetune__lr") == "0.1"
    assert at(view, "a", "select_score") == pytest.approx(0.60)
    assert at(view, "b", "selected__finetune__steps") == "2"
    assert at(view, "b", "selected__finetune__lr") == "0.3"
    assert at(view, "b", "select_score") == pytest.approx(0.20)
    assert bool(at(view, "a", "select_ok")) and bool(at(view, "b", "select_ok"))
    # the test metrics are those of the chosen point: a → 10·1 + 100·0.1 = 20,
    # b → 10·2 + 100·0.3 = 50 (both seeds)
    clean = view["nll"].sel(split="clean", corruption="none", severity=0, member="ensemble")
    assert clean.sel({"method": "a"}).values.tolist() == pytest.approx([20, 20])
    assert clean.sel({"method": "b"}).values.tolist() == pytest.approx([50, 50])
    assert view["status"].sel({"method": "a"}).values.tolist() == [0, 0]


def test_mode_max_picks_the_largest_mean(tmp_path):
    a = {
        (1, 0.1): [0.50, 0.70],
        (1, 0.3): [0.40, 0.90],
        (2, 0.1): [0.62, 0.62],
        (2, 0.3): [0.70, 0.80],
    }
    # means .60 .65 .62 .75: the largest is (2, 0.3)
    _, view = selected(tmp_path, grid_cells("a", a), dict(SELECT, mode="max"))
    assert (
        at(view, "a", "selected__finetune__steps"),
        at(view, "a", "selected__finetune__lr"),
    ) == ("2", "0.3")


def test_ties_go_to_the_first_point_in_grid_order(tmp_path):
    # (1,.3) and (2,.1) both have mean .5 (different seed values); in grid order
    # (1,.1) (1,.3) (2,.1) (2,.3) the first of the two is (1, 0.3).
    a = {(1, 0.1): [0.9, 0.9], (1, 0.3): [0.25, 0.75], (2, 0.1): [0.5, 0.5], (2, 0.3): [0.9, 0.9]}
    _, view = selected(tmp_path, grid_cells("a", a))
    assert (
        at(view, "a", "selected__finetune__steps"),
        at(view, "a", "selected__finetune__lr"),
    ) == ("1", "0.3")


def test_incomplete_grid_point_flags_the_cell(tmp_path):
    # (2,.3) lost seed 1 (no results) but is not the best: the choice (1,.1) is complete,
    # the grid is not → flagged.
    a = {(1, 0.1): [0.1, 0.1], (1, 0.3): [0.5, 0.5], (2, 0.1): [0.5, 0.5], (2, 0.3): [0.5, 0.5]}
    _, view = selected(tmp_path, grid_cells("a", a, {(2, 0.3): {1: None}}))
    assert at(view, "a", "selected__finetune__lr") == "0.1"
    assert bool(at(view, "a", "select_chosen_complete"))
    assert not bool(at(view, "a", "select_grid_complete"))
    assert not bool(at(view, "a", "select_ok"))


def test_chosen_point_missing_seeds_is_flagged(tmp_path):
    # (2,.1) diverged on seed 1: its mean over the one remaining seed, .05, is the best,
    # so it is chosen, and flagged as incomplete (never shown as complete).
    a = {(1, 0.1): [0.3, 0.3], (1, 0.3): [0.5, 0.5], (2, 0.1): [0.05, 0.05], (2, 0.3): [0.5, 0.5]}
    _, view = selected(tmp_path, grid_cells("a", a, {(2, 0.1): {1: "diverged"}}))
    assert (
        at(view, "a", "selected__finetune__steps"),
        at(view, "a", "selected__finetune__lr"),
    ) == ("2", "0.1")
    assert at(view, "a", "select_score") == pytest.approx(0.05)
    assert not bool(at(view, "a", "select_chosen_complete"))
    assert not bool(at(view, "a", "select_ok"))
    assert view["status"].sel({"method": "a"}).values.tolist() == [0, 2]  # ok, diverged


def test_without_validation_records_nothing_is_reported(tmp_path):
    cells = grid_cells("a", {p: [0.5, 0.5] for p in GRID})
    for c in cells:
        del c["val_metrics"]
    _, view = selected(tmp_path, cells)
    assert at(view, "a", "selected__finetune__lr") == ""
    assert not bool(at(view, "a", "select_ok"))
    assert np.isnan(view["nll"].sel({"method": "a", "split": "clean"})).all()


def test_no_select_leaves_the_dataset_unchanged(tmp_path):
    ds, view = selected(tmp_path, grid_cells("a", {p: [0.5, 0.5] for p in GRID}), None)
    assert view is ds


def test_report_rows_use_the_selected_view_and_show_the_choice(tmp_path):
    from e3lib.report.tables import build_table

    a = {
        (1, 0.1): [0.50, 0.70],
        (1, 0.3): [0.40, 0.90],
        (2, 0.1): [0.62, 0.62],
        (2, 0.3): [0.70, 0.80],
    }
    b = {(1, 0.1): [0.3, 0.3], (1, 0.3): [0.5, 0.5], (2, 0.1): [0.5, 0.5], (2, 0.3): [0.5, 0.5]}
    _, view = selected(tmp_path, grid_cells("a", a) + grid_cells("b", b, {(2, 0.3): {1: None}}))
    ds = build_dataset(load_index(tmp_path / "sweeps" / "grid" / "index.json"), tmp_path)
    table = build_table("demo", [ds], reference={})
    assert [r.key for r in table.rows] == [{"method": "a"}, {"method": "b"}]
    ra, rb = table.rows
    assert ra.stats["nll"].mean == pytest.approx(20)  # clean NLL of (1, 0.1)
    assert ra.selected == {"finetune.steps": "1", "finetune.lr": "0.1"} and ra.selected_ok
    assert rb.selected == {"finetune.steps": "1", "finetune.lr": "0.1"} and not rb.selected_ok
    block = table.blocks[0]
    col = block.header.index("selected (val)")
    assert block.rows[0][col].text == "steps=1, lr=0.1"
    assert block.rows[1][col].text == "steps=1, lr=0.1 †" and block.rows[1][col].flag
    assert any("val nll" in f and "first in grid order" in f for f in table.footnotes)


# --------------------------------------------------------------------------- sweep files

DOC = {
    "title": "t",
    "reproduces": ["demo"],
    "base": {"model": {"size": "tiny"}},
    "axes": [{"name": "method", "values": ["vit", "e3"]}],
    "variants": {
        "small": {
            "add_axes": [{"name": "finetune.lr", "values": [0.01, 0.03]}],
            "select": {"over": ["finetune.lr"]},
        },
        "paper": {"add_axes": [{"name": "finetune.steps", "values": [20, 40]}]},
    },
}


def test_select_defaults_and_index():
    sweep = expand_doc(copy.deepcopy(DOC), "sweeps/x.yaml", "small")
    assert sweep.select == {
        "over": ["finetune.lr"],
        "metric": "nll",
        "split": "val",
        "mode": "min",
        "member": "ensemble",
    }
    assert sweep.index()["select"] == sweep.select
    # the paper variant here declares none
    assert "select" not in expand_doc(copy.deepcopy(DOC), "sweeps/x.yaml", "paper").index()


@pytest.mark.parametrize(
    "variant, select, field, words",
    [
        (
            "small",
            {"over": ["finetune.steps"]},
            "variants.small.select.over[0]",
            "not an axis of this sweep",
        ),
        ("small", {"over": ["method"]}, "variants.small.select.over[0]", "compared by the tables"),
        (
            "small",
            {"over": ["finetune.lr"], "metric": "auroc"},
            "variants.small.select.metric",
            "nll",
        ),
        (
            "small",
            {"over": ["finetune.lr"], "split": "clean"},
            "variants.small.select.split",
            "val",
        ),
        ("small", {"over": []}, "variants.small.select.over", ""),
    ],
)
def test_select_errors_name_file_and_field(variant, select, field, words):
    doc = copy.deepcopy(DOC)
    doc["variants"][variant]["select"] = select
    with pytest.raises(SweepError) as err:
        expand_doc(doc, "sweeps/x.yaml", variant)
    msg = str(err.value)
    assert "sweeps/x.yaml" in msg and field in msg and words in msg, msg


def test_paper_variants_declare_the_table7_selection():
    for name in ("table2_ablations", "table3_overlap", "table12_efficient_ensembles"):
        sweep = load_sweep(f"sweeps/{name}.yaml", "paper")
        assert sweep.select is not None
        assert sweep.select["over"][:2] == ["finetune.steps", "finetune.lr"]
        assert sweep.select["metric"] == "nll" and sweep.select["split"] == "val"
        assert load_sweep(f"sweeps/{name}.yaml", "small").select is None


def test_index_with_select_over_unknown_axis_is_rejected(tmp_path):
    index = write_sweep(
        tmp_path,
        "g",
        AXES,
        [0],
        grid_cells("a", {p: [0.5] for p in GRID}),
        select=dict(SELECT, over=["finetune.batch_size"]),
    )
    with pytest.raises(AggregateError, match=r"index.json: field select.over"):
        load_index(index)


# --------------------------------------------------------------------------- real runs


def test_tiny_run_and_ensemble_write_val_records(tmp_path):
    from e3lib import evaluate, train
    from e3lib.config import resolve
    from e3lib.data import load_suite

    tiny = {
        "method": "e3",
        "model": {"ensemble_size": 2},
        "finetune": {"steps": 3, "warmup": 1, "batch_size": 16, "checkpoint_every": 3},
        "eval": {"corrupted": False, "fewshot": False, "ood": False, "batch_size": 64},
    }
    cfgs = [resolve(dict(tiny, seed=s)) for s in (0, 1)]
    outs = [tmp_path / "r0", tmp_path / "r1"]
    paths = [tmp_path / f"cfg{s}.json" for s in (0, 1)]
    for path, cfg in zip(paths, cfgs):
        path.write_text(json.dumps(cfg.to_dict()))
    # `e3 run` with two seeds packed in one process (one compile)
    assert (
        train.cli_run(
            ["--config", *map(str, paths), "--out", *map(str, outs), "--log-mode", "plain"]
        )
        == train.EXIT_OK
    )
    val = load_suite(cfgs[0]).val
    for out in outs:
        res = json.loads((out / "results.json").read_text())
        recs = {
            (r["member"], r["metric"]): r["value"] for r in res["records"] if r["split"] == "val"
        }
        for member in ("ensemble", "0", "1"):
            for metric in ("nll", "error", "ece"):
                assert math.isfinite(recs[(member, metric)]), (member, metric)
        with np.load(out / "predictions.npz") as z:
            assert np.array_equal(z["labels.val"], val.labels)
            probs = z["probs.val"]  # (M=2, N_val, C)
        assert probs.shape[:2] == (2, len(val.labels))
        # ensemble NLL = mean over val images of −ln(mean over members of p(label))
        p_true = probs.mean(0)[np.arange(len(val.labels)), val.labels]
        assert recs[("ensemble", "nll")] == pytest.approx(-np.log(p_true).mean(), rel=1e-5)
    # deep ensemble of the two runs: members are the runs' mean predictions
    res = evaluate.ensemble_runs([str(o) for o in outs], tmp_path / "ens", "downstream")
    with np.load(outs[0] / "predictions.npz") as a, np.load(outs[1] / "predictions.npz") as b:
        runs = np.stack([a["probs.val"].mean(0), b["probs.val"].mean(0)])  # (R=2, N_val, C)
    want = metrics.prediction_metrics(runs, val.labels)["ensemble"]["nll"]
    got = [
        r["value"]
        for r in res["records"]
        if (r["split"], r["member"], r["metric"]) == ("val", "ensemble", "nll")
    ]
    assert got == [pytest.approx(want, rel=1e-6)]
    with np.load(tmp_path / "ens" / "predictions.npz") as z:
        assert z["probs.val"].shape[:2] == (2, len(val.labels))


def test_aggregate_cli_reports_flagged_cells_and_sweep_page_lists_full_grid(tmp_path, capsys):
    from e3lib.aggregate import cli_aggregate, open_dataset
    from e3lib.report.html import Input
    from e3lib.report.selection import selection_summary

    a = {
        (1, 0.1): [0.50, 0.70],
        (1, 0.3): [0.40, 0.90],
        (2, 0.1): [0.62, 0.62],
        (2, 0.3): [0.70, 0.80],
    }
    b = {(1, 0.1): [0.3, 0.3], (1, 0.3): [0.5, 0.5], (2, 0.1): [0.5, 0.5], (2, 0.3): [0.5, 0.5]}
    cells = grid_cells("a", a) + grid_cells("b", b, {(2, 0.3): {1: None}})
    index = write_sweep(tmp_path, "grid", AXES, [0, 1], cells, select=SELECT)
    out = tmp_path / "dataset.nc"
    assert (
        cli_aggregate(["--index", str(index), "--results-root", str(tmp_path), "--out", str(out)])
        == 0
    )
    # b's grid misses seed 1 of (2, 0.3): 2 cells, 1 flagged
    assert "2 cells, 1 flagged" in capsys.readouterr().out
    ds = open_dataset(out)
    assert "finetune__lr" in ds.dims  # the file keeps the full grid
    page = selection_summary(Input(out, ds))
    assert len(page["grid"]) == 8
    chosen = [g["axes"] for g in page["grid"] if g["chosen"]]
    assert chosen == [["a", "1", "0.1"], ["b", "1", "0.1"]]
    means = {tuple(g["axes"]): g["mean"] for g in page["grid"]}
    assert means[("a", "1", "0.3")] == pytest.approx(0.65)  # (.40 + .90) / 2
    incomplete = [g["axes"] for g in page["grid"] if not g["complete"]]
    assert incomplete == [["b", "2", "0.3"]]
