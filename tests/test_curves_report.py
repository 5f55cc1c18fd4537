"""Training curves through aggregation and the report: curves.nc gathers the runs' and
upstreams' curves.json (a run without one is listed, not dropped), and the sweep's curves
page shows the final loss and the plateau statistic, hand-derived below."""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from done_files import write_done_files

from e3lib import aggregate
from e3lib.aggregate.curves import NO_CURVE, build_curves, upstream_groups
from e3lib.curves import plateau
from e3lib.report import cli_report, synthetic

# 10 points each, so the plateau windows are single points (w = max(1, ⌊10·0.1⌋) = 1):
#   e3 seed 0:  prev 1.00, last 0.99 → drop 1%      → plateaued
#   e3 seed 1:  prev 1.20, last 1.01 → drop 15.83%  → not
#   e3 mean:    prev 1.10, last 1.00 → drop 9.09%   → not; final (0.99 + 1.01)/2 = 1.00
#   vmoe seed 0: flat 2.0 → drop 0 → plateaued; seed 1 has no curves.json (old result)
#   upstream:   prev 1.04, last 1.04 → drop 0 → plateaued; final 1.04
#   its 5 held-out points (window 1): prev 1.52, last 1.55 → drop −0.03/1.52 = −1.97%, a
#   rising held-out loss → plateaued; final NLL 1.55, error 37%
LOSS = {
    ("e3", 0): [2.0] * 8 + [1.0, 0.99],
    ("e3", 1): [2.0] * 8 + [1.2, 1.01],
    ("vmoe", 0): [3.0] * 8 + [2.0, 2.0],
}
UPSTREAM = [5.0, 4.0, 3.0, 2.0, 1.5, 1.2, 1.1, 1.05, 1.04, 1.04]
HELDOUT = {
    "every": 6,
    "first_step": 0,
    "step": [6, 12, 18, 24, 30],
    "loss": [2.0, 1.6, 1.5, 1.52, 1.55],
    "error": [0.5, 0.4, 0.35, 0.36, 0.37],
}
# The e3 runs' validation points (window 1); the vmoe runs have none:
#   seed 0: prev 0.70, last 0.70 → drop 0           → plateaued
#   seed 1: prev 0.66, last 0.60 → drop 0.06/0.66 = 9.09% → not
#   mean:   prev 0.68, last 0.65 → drop 0.03/0.68 = 4.41% → not; seeds plateaued 1/2;
#           final NLL (0.70 + 0.60)/2 = 0.65, error (0.10 + 0.12)/2 = 11%
VALIDATION = {
    0: {"loss": [1.0, 0.8, 0.7, 0.70, 0.70], "error": [0.3, 0.2, 0.1, 0.1, 0.10]},
    1: {"loss": [1.0, 0.8, 0.7, 0.66, 0.60], "error": [0.3, 0.2, 0.1, 0.1, 0.12]},
}
CELLS = [
    {"axes": {"method": m}, "metrics": {"nll": [0.6, 0.61]}, "gflops": 1.0} for m in ("e3", "vmoe")
]


def curve_file(loss):
    n = len(loss)
    return {
        "format": 1,
        "log_every": 3,
        "steps": 3 * n,
        "first_step": 0,
        "step": [3 * (j + 1) for j in range(n)],
        "loss": loss,
        "ce": [v - 0.01 for v in loss],
        "aux_loss": [0.01] * n,
        "lr": [0.1] * n,
        "plateau": plateau(loss),
    }


@pytest.fixture
def sweep(tmp_path):
    index_path = synthetic.write_sweep(tmp_path, "toy", ["method"], [0, 1], CELLS)
    write_done_files(tmp_path, index_path)
    index = json.loads(Path(index_path).read_text())
    for e in index["entries"]:
        run = tmp_path / "runs" / e["id"]
        results = json.loads((run / "results.json").read_text())
        results["upstream_id"] = "up1"
        (run / "results.json").write_text(json.dumps(results))
        key = (e["axes"]["method"], e["seed"])
        if key in LOSS:
            curve = curve_file(LOSS[key])
            if key[0] == "e3":
                curve["heldout"] = {**HELDOUT, **VALIDATION[key[1]]}
            (run / "curves.json").write_text(json.dumps(curve))
    up = tmp_path / "upstream" / "up1"
    up.mkdir(parents=True)
    (up / "done.json").write_text(json.dumps({"status": "ok", "train": {"steps": 30}}))
    (up / "curves.json").write_text(json.dumps({**curve_file(UPSTREAM), "heldout": HELDOUT}))
    return tmp_path, index_path


def test_build_curves_gathers_runs_and_their_upstream(sweep):
    root, index_path = sweep
    ds = build_curves(aggregate.load_index(index_path), root)
    assert ds.sizes == {"curve": 5, "point": 10, "heldout_point": 5}
    kinds = list(ds["kind"].values)
    assert kinds.count("run") == 4 and kinds[-1] == "upstream"
    by = {(str(g), int(s)): i for i, (g, s) in enumerate(zip(ds["group"].values, ds["seed"]))}
    e3_1 = by[("method=e3", 1)]
    assert list(ds["loss"].values[e3_1]) == LOSS[("e3", 1)]
    assert list(ds["step"].values[e3_1]) == [3.0 * (j + 1) for j in range(10)]
    assert ds["plateau_drop"].values[e3_1] == pytest.approx(0.19 / 1.2)
    assert ds["plateaued"].values[e3_1] == 0
    assert ds["plateaued"].values[by[("method=e3", 0)]] == 1
    old = by[("method=vmoe", 1)]
    assert str(ds["note"].values[old]) == NO_CURVE and np.isnan(ds["loss"].values[old]).all()
    assert ds["plateaued"].values[old] == -1
    up = by[("upstream up1", -1)]
    assert ds["final_loss"].values[up] == 1.04 and str(ds["id"].values[up]) == "up1"
    assert list(ds["method"].values) == ["e3", "e3", "vmoe", "vmoe", ""]
    assert list(ds["heldout_loss"].values[up]) == HELDOUT["loss"]
    assert list(ds["heldout_step"].values[up]) == HELDOUT["step"]
    assert ds["heldout_plateau_drop"].values[up] == pytest.approx(-0.03 / 1.52)
    assert ds["heldout_plateaued"].values[up] == 1
    assert list(ds["heldout_loss"].values[e3_1]) == VALIDATION[1]["loss"]
    assert ds["heldout_plateau_drop"].values[e3_1] == pytest.approx(0.06 / 0.66)
    assert ds["heldout_plateaued"].values[e3_1] == 0
    assert ds["heldout_plateaued"].values[by[("method=e3", 0)]] == 1
    vmoe = by[("method=vmoe", 0)]  # a run that recorded no validation points
    assert np.isnan(ds["heldout_loss"].values[vmoe]).all()
    assert ds["heldout_plateaued"].values[vmoe] == -1


def test_curves_figure_has_a_panel_for_each_kind_of_points(sweep):
    from e3lib.report.curves import figure_panels

    root, index_path = sweep
    ds = build_curves(aggregate.load_index(index_path), root)
    panels = figure_panels(ds)
    assert [p[0] for p in panels] == [
        "fine-tuning loss",
        "fine-tuning validation loss",
        "upstream loss",
        "upstream held-out loss",
    ]
    # the validation panel: the two e3 seeds' 5 points (the vmoe runs recorded none)
    assert len(panels[1][2]) == 10 and set(panels[1][2]["group"]) == {"method=e3"}
    runs_only = ds.isel(curve=[i for i, k in enumerate(ds["kind"].values) if k == "run"])
    no_validation = runs_only.assign(heldout_loss=runs_only["heldout_loss"] * np.nan)
    assert [p[0] for p in figure_panels(no_validation)] == ["fine-tuning loss"]


def test_aggregate_writes_curves_beside_the_dataset(sweep):
    root, index_path = sweep
    out = root / "sweeps" / "toy" / "dataset.nc"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["--index", str(index_path), "--results-root", str(root), "--out", str(out)]
    assert aggregate.cli_aggregate(args) == 0
    with xr.open_dataset(out.with_name("curves.nc")) as ds:
        assert ds.sizes["curve"] == 5 and ds.attrs["plateau_threshold"] == 0.02
        assert int((ds["note"] == "").sum()) == 4


def test_report_curves_page_table_and_missing_curves(sweep, tmp_path):
    root, index_path = sweep
    out = root / "sweeps" / "toy" / "dataset.nc"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["--index", str(index_path), "--results-root", str(root), "--out", str(out)]
    assert aggregate.cli_aggregate(args) == 0
    site = tmp_path / "site"
    assert cli_report(["--datasets", str(out), "--out", str(site)]) == 0
    assert 'href="curves_toy.html"' in (site / "sweep_toy.html").read_text()
    page = (site / "curves_toy.html").read_text()
    assert (site / "figures" / "curves_toy.png").stat().st_size > 1000
    rows = {
        r.split("</td>")[1].split(">")[-1]: r
        for r in page.split("<tr>")
        if r.startswith('<td class="label">')
    }
    e3 = rows["method=e3"]
    assert ">2/2<" in e3 and ">1.0000<" in e3 and ">9.09%<" in e3 and ">no<" in e3
    assert ">1/2<" in e3  # seeds plateaued
    vmoe = rows["method=vmoe"]
    assert ">1/2<" in vmoe and ">2.0000<" in vmoe and ">0.00%<" in vmoe and ">yes<" in vmoe
    up = rows["upstream up1"]
    assert ">1.0400<" in up and ">yes<" in up
    # held-out columns: final NLL 1.55, error 37%, drop −1.97% (rising) → plateaued
    assert ">1.5500<" in up and ">37.00%<" in up and ">-1.97%<" in up
    assert up.count(">yes<") == 2
    # validation columns: final NLL 0.65, error 11%, mean-curve drop 4.41% → not, 1/2 seeds
    assert ">0.6500<" in e3 and ">11.00%<" in e3 and ">4.41%<" in e3 and e3.count(">no<") == 2
    assert e3.count(">1/2<") == 2
    assert vmoe.count(">—<") == 5  # no validation points recorded
    assert "Runs without a curve (1)" in page and "written before training curves" in page

    # A dataset aggregated before curves were collected: the page says so.
    out.with_name("curves.nc").unlink()
    assert cli_report(["--datasets", str(out), "--out", str(site)]) == 0
    page = (site / "curves_toy.html").read_text()
    assert "No training curves" in page and "run `e3 aggregate` again" in page


# Upstreams grouped by configuration: upA and upB are seeds 0 and 1 of one pretraining
# (K = 2), upC another (K = 1). Held-out points, window 1 (5 points):
#   upA: prev 1.50, last 1.44 → drop 4%      → not plateaued
#   upB: prev 1.70, last 1.71 → rising       → plateaued
#   their mean curve: prev (1.50 + 1.70)/2 = 1.60, last (1.44 + 1.71)/2 = 1.575
#     → drop 0.025/1.60 = 1.5625% → plateaued; seeds plateaued 1/2; final NLL 1.575
HELD_AB = {"upA": [2.0, 1.6, 1.5, 1.50, 1.44], "upB": [2.0, 1.6, 1.5, 1.70, 1.71]}
UP_CONFIG = {"method": "vmoe", "size": "tiny", "num_experts": 8, "steps": 30, "data_dir": None}
UPSTREAM_OF = {("e3", 0): "upA", ("e3", 1): "upB", ("vmoe", 0): "upC", ("vmoe", 1): "upC"}
UPSTREAM_SETTINGS = {"upA": (2, 0), "upB": (2, 1), "upC": (1, 0)}  # (num_selected, seed)


def test_upstream_groups_name_a_configuration_without_its_seed():
    a = {**UP_CONFIG, "num_selected": 2, "seed": 0}
    labels = upstream_groups(
        {
            "upA": a,
            "upB": {**a, "seed": 1},
            "upC": {**a, "num_selected": 1},
            "upD": {**a, "method": "vit", "num_experts": None, "num_selected": None},
            "upE": {**a, "renderings": 8},  # absent (1) in the others of its method
            "old": None,
        }
    )
    # num_experts is 8 for every V-MoE (None for the ViT): not shown; renderings is
    # absent from three V-MoEs and 8 in one: shown where set
    assert labels == {
        "upA": "upstream method=vmoe, size=tiny, num_selected=2",
        "upB": "upstream method=vmoe, size=tiny, num_selected=2",
        "upC": "upstream method=vmoe, size=tiny, num_selected=1",
        "upD": "upstream method=vit, size=tiny",
        "upE": "upstream method=vmoe, size=tiny, num_selected=2, renderings=8",
        "old": "upstream old",
    }


def test_upstream_seeds_of_one_configuration_form_one_group(sweep, tmp_path):
    root, index_path = sweep
    for e in json.loads(Path(index_path).read_text())["entries"]:
        run = root / "runs" / e["id"]
        results = json.loads((run / "results.json").read_text())
        results["upstream_id"] = UPSTREAM_OF[(e["axes"]["method"], e["seed"])]
        (run / "results.json").write_text(json.dumps(results))
    _write_upstreams(root)
    out = root / "sweeps" / "toy" / "dataset.nc"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["--index", str(index_path), "--results-root", str(root), "--out", str(out)]
    assert aggregate.cli_aggregate(args) == 0
    with xr.open_dataset(out.with_name("curves.nc")) as ds:
        ups = {
            str(i): (str(g), int(s))
            for i, g, s, k in zip(*(ds[v].values for v in ("id", "group", "seed", "kind")))
            if k == "upstream"
        }
    k2 = "upstream method=vmoe, size=tiny, num_selected=2"
    k1 = "upstream method=vmoe, size=tiny, num_selected=1"
    assert ups == {"upA": (k2, 0), "upB": (k2, 1), "upC": (k1, 0)}
    site = tmp_path / "site"
    assert cli_report(["--datasets", str(out), "--out", str(site)]) == 0
    rows = _upstream_rows((site / "curves_toy.html").read_text())
    assert set(rows) == {k2, k1}
    assert ">2/2<" in rows[k2] and ">1.5750<" in rows[k2] and ">1.56%<" in rows[k2]
    assert rows[k2].count(">yes<") == 2 and ">1/2<" in rows[k2]  # mean curve; seeds 1/2
    assert ">-1.97%<" in rows[k1] and ">1/1<" in rows[k1]


def _write_upstreams(root):
    for up, (k, seed) in UPSTREAM_SETTINGS.items():
        (root / "upstream" / up).mkdir(parents=True)
        config = {**UP_CONFIG, "num_selected": k, "seed": seed}
        done = {"status": "ok", "config": config, "train": {"steps": 30}}
        (root / "upstream" / up / "done.json").write_text(json.dumps(done))
        held = {**HELDOUT, "loss": HELD_AB.get(up, HELDOUT["loss"])}
        curve = {**curve_file(UPSTREAM), "heldout": held}
        (root / "upstream" / up / "curves.json").write_text(json.dumps(curve))


def _upstream_rows(page):
    return {
        r.split("</td>")[1].split(">")[-1]: r
        for r in page.split("<tr>")
        if r.startswith('<td class="label">upstream')
    }


def test_pretrainings_page_judges_a_configuration_on_its_seeds_in_every_sweep(tmp_path):
    # sweep "a" fine-tunes from upA (K = 2, seed 0) and upC (K = 1), sweep "b" from upB
    # (K = 2, seed 1) and upC: each sweep's page sees one seed of K = 2, the pretrainings
    # page both (upC once), with the hand-derived values of the test above
    root = tmp_path / "results"
    ups = {"a": {"e3": "upA", "vmoe": "upC"}, "b": {"e3": "upB", "vmoe": "upC"}}
    _write_upstreams(root)
    datasets = []
    for name, by_method in ups.items():
        index_path = synthetic.write_sweep(root, name, ["method"], [0, 1], CELLS)
        write_done_files(root, index_path)
        for e in json.loads(Path(index_path).read_text())["entries"]:
            run = root / "runs" / e["id"]
            results = json.loads((run / "results.json").read_text())
            results["upstream_id"] = by_method[e["axes"]["method"]]
            (run / "results.json").write_text(json.dumps(results))
        out = root / "sweeps" / name / "dataset.nc"
        args = ["--index", str(index_path), "--results-root", str(root), "--out", str(out)]
        assert aggregate.cli_aggregate(args) == 0
        datasets.append(str(out))
    site = tmp_path / "site"
    assert cli_report(["--datasets", *datasets, "--out", str(site)]) == 0
    k2 = "upstream method=vmoe, size=tiny, num_selected=2"
    k1 = "upstream method=vmoe, size=tiny, num_selected=1"
    a = _upstream_rows((site / "curves_a.html").read_text())
    b = _upstream_rows((site / "curves_b.html").read_text())
    # on its own sweep's page seed 0 falls 4% (prev 1.50, last 1.44), seed 1 rises
    assert ">1/1<" in a[k2] and ">4.00%<" in a[k2] and ">no<" in a[k2] and ">0/1<" in a[k2]
    assert ">1/1<" in b[k2] and ">-0.59%<" in b[k2] and ">no<" not in b[k2]
    page = (site / "pretrainings.html").read_text()
    rows = _upstream_rows(page)
    assert set(rows) == {k2, k1}
    # both seeds: mean curve prev 1.60, last 1.575 → 1.5625% → plateaued; 1 of 2 seeds
    assert ">2/2<" in rows[k2] and ">1.5750<" in rows[k2] and ">1.56%<" in rows[k2]
    assert rows[k2].count(">yes<") == 2 and ">1/2<" in rows[k2]
    assert ">1/1<" in rows[k1] and ">-1.97%<" in rows[k1]  # upC once, though both use it
    assert (site / "figures" / "pretrainings.png").stat().st_size > 1000
    assert 'href="pretrainings.html"' in (site / "index.html").read_text()
    assert 'href="index.html">← report' in page


def test_pretrainings_page_without_upstream_curves_says_so(sweep, tmp_path):
    root, index_path = sweep
    (root / "upstream" / "up1" / "curves.json").unlink()  # the only upstream: no curve
    out = root / "sweeps" / "toy" / "dataset.nc"
    args = ["--index", str(index_path), "--results-root", str(root), "--out", str(out)]
    assert aggregate.cli_aggregate(args) == 0
    assert cli_report(["--datasets", str(out), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "pretrainings.html").read_text()
    assert "no sweep of the report has an upstream curve" in page
