"""`e3 status`: job states read from the files jobs write (stage.py's done.json and log,
progress.json, checkpoints, diverged.json), counts per stage and table, device-hours
spent and left, and the --json schema. Result folders of the demo sweep are written
here the way its jobs write them: done files and logs by workflow/scripts/stage.py itself
(its command replaced by one that writes the job's files or exits with the job's code)."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import jsonschema
import pytest

from e3lib import integrity
from e3lib.aggregate.axes import axis_label
from e3lib.report import status as S
from e3lib.report.status_cli import cli_status, render_text
from e3lib.sweep import expand_sweeps

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "e3lib/schemas/status.schema.json").read_text())
_spec = importlib.util.spec_from_file_location("stage", REPO / "workflow/scripts/stage.py")
stage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage)
NOW = time.time()
HOUR = 3600.0


@pytest.fixture(scope="module")
def demo():
    sweep = expand_sweeps([str(REPO / "sweeps/demo.yaml")], "small").sweeps["demo"]
    runs = {(e["axes"]["method"], e["seed"]): e for e in sweep.entries if e["kind"] == "run"}
    ens = sorted(
        (e for e in sweep.entries if e["kind"] == "ensemble"), key=lambda e: e["replicate"]
    )
    return sweep, runs, ens


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def age(path: Path, seconds: float) -> None:
    """Set the mtime of a file (or a folder and its entries) to ``seconds`` before NOW."""
    for p in [path, *(path.iterdir() if path.is_dir() else [])]:
        os.utime(p, (NOW - seconds, NOW - seconds))


def run_stage(args: list[str], command: list[str]) -> int:
    return stage.main([*args, "--", *command])


def exits(code: int) -> list[str]:
    return ["sh", "-c", f"exit {code}"]


def finetune_ok(root: Path, run: str, seconds: float, devices: int) -> None:
    out = root / "results/runs" / run
    write(out / "predictions.npz", "npz")
    write(out / "curves.json", "{}")
    result = {
        "cost": {"train_seconds": seconds},
        "provenance": {"devices": {"num_devices": devices}},
    }
    write(out / "results.json", result)
    files = [str(out / f) for f in ("results.json", "predictions.npz", "curves.json")]
    assert (
        run_stage(
            [
                "--status",
                str(out / "done.json"),
                "--log",
                f"{root}/logs/finetune/{run}.log",
                "--expect",
                *files,
            ],
            exits(0),
        )
        == 0
    )


def finetune_exit(root: Path, run: str, code: int) -> None:
    out = root / "results/runs" / run
    if code == 3:
        write(out / "diverged.json", {"status": "diverged", "step": 7})
    run_stage(
        ["--status", str(out / "done.json"), "--log", f"{root}/logs/finetune/{run}.log"],
        exits(code),
    )


def upstream_ok(root: Path, up: str, seconds: float, devices: int) -> None:
    done = root / "results/upstream" / up / "done.json"
    write(done, {"status": "ok", "train": {"train_seconds": seconds, "steps": 2000}})
    progress(root / "results/upstream" / up, 2000, 2000, seconds, devices, NOW - 2 * HOUR)
    assert (
        run_stage(["--log", f"{root}/logs/upstream/{up}.log", "--expect", str(done)], exits(0)) == 0
    )


def progress(folder: Path, step, steps, wall, devices, updated) -> None:
    """A progress.json of the schema training jobs write (step, steps, wall_seconds, ...)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(updated))
    p = write(
        folder / "progress.json",
        {
            "stage": "upstream" if "upstream" in folder.parts else "finetune",
            "step": step,
            "steps": steps,
            "started": when,
            "updated": when,
            "wall_seconds": wall,
            "num_devices": devices,
            "images_per_second_per_device": None,
        },
    )
    age(p, NOW - updated)


def ensemble_job(root: Path, ens: dict) -> None:
    out = root / "results/ensembles" / ens["id"]
    members = [str(root / "results/runs" / m / "done.json") for m in ens["members"]]
    if all(json.loads(Path(m).read_text())["status"] == "ok" for m in members):
        write(out / "results.json", "{}")
        write(out / "predictions.npz", "npz")
    run_stage(
        [
            "--status",
            str(out / "done.json"),
            "--log",
            f"{root}/logs/ensemble/{ens['id']}.log",
            "--require-ok",
            *members,
            "--expect",
            str(out / "results.json"),
            str(out / "predictions.npz"),
        ],
        exits(0),
    )


def status_of(root: Path, sweep, **kw) -> dict:
    st = S.status([S.from_sweep(sweep)], str(root / "results"), str(root / "logs"), now=NOW, **kw)
    jsonschema.Draft202012Validator(SCHEMA).validate(st)
    return st


def counts(**kw) -> dict:
    out = dict.fromkeys(
        ("done", "running", "failed", "diverged", "member_failed", "not_started"), 0
    )
    out.update(kw)
    out["total"] = sum(out.values())
    return out


def killed_half_way(root: Path, demo) -> dict:
    """The demo sweep as a killed driver leaves it; returns the ids of interest."""
    sweep, runs, ens = demo
    up_moe, up_vit = runs[("vmoe", 0)]["upstream_id"], runs[("vit", 0)]["upstream_id"]
    upstream_ok(root, up_moe, 360.0, 1)  # 0.1 device-hours
    run_stage(["--log", f"{root}/logs/upstream/{up_vit}.log", "--expect", "x"], exits(4))
    progress(root / "results/upstream" / up_vit, 1000, 2000, 200.0, 1, NOW - HOUR)
    for s in range(3):
        finetune_ok(root, runs[("vmoe", s)]["id"], 60.0, 1)
    finetune_ok(root, runs[("e3", 0)]["id"], 120.0, 2)
    killed = runs[("e3", 1)]["id"]  # SIGKILL: an attempt header and no exit code, 2 h old
    log = write(
        root / f"logs/finetune/{killed}.log",
        "=== 2026-01-01T00:00:00+00:00 python -m e3lib.cli run\n",
    )
    (root / "results/checkpoints" / killed / "100").mkdir(parents=True)
    for p in (log, root / "results/checkpoints" / killed):
        age(p, 2 * HOUR)
    finetune_exit(root, runs[("e3", 2)]["id"], 1)
    ensemble_job(root, ens[0])
    return {"up_vit": up_vit, "killed": killed, "exit1": runs[("e3", 2)]["id"]}


def test_killed_half_way_counts_match_the_files(tmp_path, demo):
    sweep, runs, ens = demo
    ids = killed_half_way(tmp_path, demo)
    st = status_of(tmp_path, sweep)
    s = st["sweeps"][0]
    assert s["jobs"] == {
        "upstream": counts(done=1, failed=1),
        "finetune": counts(done=4, failed=2, not_started=3),
        "ensemble": counts(done=1, not_started=2),
    }
    assert [t["table"] for t in s["tables"]] == ["demo"] and s["tables"][0]["jobs"] == s["jobs"]
    problems = {(p["stage"], p["id"]): p for p in s["problems"]}
    assert set(problems) == {
        ("upstream", ids["up_vit"]),
        ("finetune", ids["killed"]),
        ("finetune", ids["exit1"]),
    }
    assert problems[("upstream", ids["up_vit"])]["reason"].startswith("interrupted (exit 4)")
    assert problems[("upstream", ids["up_vit"])]["step"] == 1000
    assert problems[("finetune", ids["killed"])]["reason"].startswith(
        "no exit code and no change for 120 min"
    )
    assert problems[("finetune", ids["exit1"])]["reason"] == "exit code 1"
    assert (
        problems[("finetune", ids["exit1"])]["log"]
        == f"{tmp_path}/logs/finetune/{ids['exit1']}.log"
    )
    assert "method=e3" in problems[("finetune", ids["exit1"])]["row"]
    assert s["running"] == []
    # spent: upstream 360 s x 1 + the interrupted upstream's 200 s x 1 + 3 x 60 s x 1 + 120 s x 2;
    # the two failed e3 runs wrote no time record
    assert s["device_hours_spent"] == pytest.approx(0.1 + (200 + 180 + 240) / HOUR)
    assert s["jobs_without_cost"] == 2
    # left: the two failed e3 runs, at the finished e3 run's 120 s / 300 steps on 2 devices;
    # no finished ViT upstream or ViT fine-tune: 4 jobs without an estimate
    assert s["hours_left"] == pytest.approx(240 / HOUR)
    assert s["device_hours_left"] == pytest.approx(480 / HOUR)
    assert s["jobs_without_estimate"] == 4 and s["estimate_from"] == ["finished runs"]
    assert st["total"]["jobs"] == s["jobs"]
    text = render_text(st)
    assert ids["killed"] in text and f"logs/finetune/{ids['exit1']}.log" in text
    assert "4 jobs with no estimate" in text


def test_a_running_run_is_counted_with_its_own_rate(tmp_path, demo):
    sweep, runs, _ = demo
    killed_half_way(tmp_path, demo)
    run = runs[("e3", 1)]["id"]  # the killed run, retried: a new attempt, fresh progress
    with open(tmp_path / f"logs/finetune/{run}.log", "a") as f:
        f.write("=== 2026-01-01T03:00:00+00:00 python -m e3lib.cli run\nstep 150/300\n")
    age(tmp_path / f"logs/finetune/{run}.log", 60)
    progress(tmp_path / "results/runs" / run, 150, 300, 30.0, 2, NOW - 60)
    s = status_of(tmp_path, sweep)["sweeps"][0]
    assert s["jobs"]["finetune"] == counts(done=4, running=1, failed=1, not_started=3)
    (r,) = s["running"]
    assert (r["id"], r["step"], r["steps"]) == (run, 150, 300)
    assert r["minutes_since_change"] == pytest.approx(1.0, abs=0.1)
    # its 30 s on 2 devices are spent; 150 steps left at 30 s / 150 steps: 30 s x 2 devices
    assert s["device_hours_spent"] == pytest.approx(0.1 + (200 + 180 + 240 + 60) / HOUR)
    assert s["hours_left"] == pytest.approx((120 + 30) / HOUR)
    assert s["device_hours_left"] == pytest.approx((240 + 60) / HOUR)
    assert s["estimate_from"] == ["finished runs", "own progress"]
    # the same files read 40 minutes later: no change since, so the attempt is failed
    later = S.status(
        [S.from_sweep(sweep)], str(tmp_path / "results"), str(tmp_path / "logs"), now=NOW + 40 * 60
    )
    assert later["sweeps"][0]["jobs"]["finetune"]["failed"] == 2


def test_diverged_run_and_failed_member_of_a_deep_ensemble(tmp_path, demo):
    sweep, runs, ens = demo
    up_moe, up_vit = runs[("vmoe", 0)]["upstream_id"], runs[("vit", 0)]["upstream_id"]
    upstream_ok(tmp_path, up_moe, 360.0, 1)
    write(
        tmp_path / "results/upstream" / up_vit / "diverged.json", {"status": "diverged", "step": 5}
    )
    run_stage(["--log", f"{tmp_path}/logs/upstream/{up_vit}.log", "--expect", "x"], exits(3))
    finetune_ok(tmp_path, runs[("vmoe", 0)]["id"], 60.0, 1)
    finetune_exit(tmp_path, runs[("vmoe", 1)]["id"], 3)
    finetune_ok(tmp_path, runs[("vmoe", 2)]["id"], 60.0, 1)
    for e in ens:
        ensemble_job(tmp_path, e)
    s = status_of(tmp_path, sweep)["sweeps"][0]
    bad = runs[("vmoe", 1)]["id"]
    with_bad = sum(bad in e["members"] for e in ens)
    assert with_bad == 2  # replicates (0, 1) and (1, 2) of the ensemble of 2 runs
    assert s["jobs"]["upstream"] == counts(done=1, diverged=1)
    assert s["jobs"]["finetune"] == counts(done=2, diverged=1, not_started=6)
    assert s["jobs"]["ensemble"] == counts(done=1, member_failed=2)
    states = {(p["stage"], p["id"]): (p["state"], p["reason"]) for p in s["problems"]}
    assert states[("upstream", up_vit)] == ("diverged", "diverged at step 5 (diverged.json)")
    assert states[("finetune", bad)] == ("diverged", "diverged (done.json)")
    failed_ens = [e["id"] for e in ens if bad in e["members"]]
    for eid in failed_ens:
        assert states[("ensemble", eid)] == ("member_failed", f"members not ok: {bad}: diverged")


def test_a_finished_sweep(tmp_path, demo):
    sweep, runs, ens = demo
    for up in {e["upstream_id"] for e in runs.values()}:
        upstream_ok(tmp_path, up, 360.0, 1)
    for e in runs.values():
        finetune_ok(tmp_path, e["id"], 60.0, 1)
    for e in ens:
        ensemble_job(tmp_path, e)
    s = status_of(tmp_path, sweep)["sweeps"][0]
    assert s["jobs"] == {
        "upstream": counts(done=2),
        "finetune": counts(done=9),
        "ensemble": counts(done=3),
    }
    assert s["problems"] == [] and s["running"] == []
    assert s["device_hours_spent"] == pytest.approx(2 * 0.1 + 9 * 60 / HOUR)
    assert (s["hours_left"], s["jobs_without_estimate"], s["estimate_from"]) == (0, 0, [])
    # the start-up check sets a damaged entry aside: rerunning recomputes it
    damaged = runs[("e3", 0)]["id"]
    integrity.set_aside(tmp_path / "results/runs" / damaged / "done.json", "size differs")
    s = status_of(tmp_path, sweep)["sweeps"][0]
    assert s["jobs"]["finetune"] == counts(done=8, failed=1)
    (p,) = s["problems"]
    assert (p["id"], p["reason"]) == (
        damaged,
        "its done.json was set aside as damaged: a rerun recomputes it",
    )
    # left: 300 steps at the finished e3 runs' 60 s / 300 steps on 1 device
    assert s["hours_left"] == pytest.approx(60 / HOUR) and s["estimate_from"] == ["finished runs"]


def test_not_started_sweep_has_no_estimate_unless_a_plan_gives_one(tmp_path, demo):
    sweep, runs, _ = demo
    s = status_of(tmp_path, sweep)["sweeps"][0]
    assert s["jobs"]["finetune"] == counts(not_started=9)
    assert s["jobs_without_estimate"] == 11 and s["hours_left"] == 0
    assert "left: no estimate (11 jobs)" in render_text(status_of(tmp_path, sweep))

    def plan(stage, cfg):  # a compiled plan's seconds per step and devices, by stage
        return (0.5, 4) if stage == "finetune" else None

    s = status_of(tmp_path, sweep, prior=plan)["sweeps"][0]
    assert s["hours_left"] == pytest.approx(9 * 300 * 0.5 / HOUR)
    assert s["device_hours_left"] == pytest.approx(9 * 300 * 0.5 * 4 / HOUR)
    assert s["jobs_without_estimate"] == 2 and s["estimate_from"] == ["plan"]


def test_table_scopes_select_the_rows_of_each_table():
    """Tables 3 and 18 share one sweep, split by K (tables.yaml `where`)."""
    cfg = {"upstream": {"checkpoint": None}}
    entries = [
        {
            "id": f"{k}{s}" * 6,
            "kind": "run",
            "seed": s,
            "axes": {"model.num_selected": k},
            "upstream_id": "u" * 12,
            "config": cfg,
        }
        for k in (2, 1)
        for s in (0, 1)
    ]
    spec = S.default_spec()
    assert [e["axes"]["model.num_selected"] for e in S.table_entries(entries, "table3", spec)] == [
        2,
        2,
    ]
    assert [e["axes"]["model.num_selected"] for e in S.table_entries(entries, "table18", spec)] == [
        1,
        1,
    ]
    assert len(S.table_entries(entries, "demo", spec)) == 4


@pytest.mark.parametrize("value", [0, 2, 2.0, 2.5, 1e20, -3.0, True, False, None, "e3", "2", 0.1])
def test_axis_text_agrees_with_the_dataset_labels(value):
    assert S.axis_text(value) == axis_label(value)


def test_cli_json_on_the_demo(tmp_path, demo, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    killed_half_way(tmp_path, demo)
    args = [
        "sweeps/demo.yaml",
        "--results",
        str(tmp_path / "results"),
        "--logs",
        str(tmp_path / "logs"),
    ]
    assert cli_status([*args, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator(SCHEMA).validate(st)
    assert st["sweeps"][0]["jobs"]["finetune"]["done"] == 4
    assert cli_status(args) == 0
    assert "sweep demo" in capsys.readouterr().out
    assert cli_status(["sweeps/demo.yaml", "--stale-minutes", "0"]) == 2
    assert cli_status(["sweeps/nope.yaml"]) == 2
    assert "sweep file not found" in capsys.readouterr().err


def test_report_index_shows_the_status_with_failing_jobs_linked_to_their_logs(tmp_path, demo):
    import xarray as xr

    from e3lib.report.html import Input, Site, render_index
    from e3lib.sweep import write_index

    sweep, runs, _ = demo
    ids = killed_half_way(tmp_path, demo)
    index = tmp_path / "results/sweeps/demo/index.json"
    index.parent.mkdir(parents=True)
    write_index(sweep, index, index.with_suffix(".tsv"))
    attrs = {"sweep": "demo", "index_path": str(index), "results_root": str(tmp_path / "results")}
    # aggregated when 3 entries were finished; the folder now holds 5 (4 runs, 1 ensemble)
    ds = xr.Dataset(attrs={**attrs, "reproduces": '["demo"]', "entries_ok": 3})
    gone = xr.Dataset(attrs={**attrs, "sweep": "gone", "index_path": str(tmp_path / "no.json")})
    out = tmp_path / "reports"
    out.mkdir()
    site = Site(out=out, inputs=[Input(tmp_path / "d.nc", ds), Input(tmp_path / "g.nc", gone)])
    site.logs = str(tmp_path / "logs")
    render_index(site)
    html = (out / "index.html").read_text()
    assert '<h2 id="status">' in html
    assert f'<a href="../logs/finetune/{ids["exit1"]}.log">' in html
    assert f'<a href="../logs/upstream/{ids["up_vit"]}.log">' in html
    assert "the results folder holds 5 finished entries, the dataset 3: aggregate again" in html
    assert f"Status not available: index {tmp_path / 'no.json'} cannot be read" in html
    # the finetune row: 9 jobs, 4 done, 0 running, 2 failed (flagged), 0, 0, 3 not started
    row = html.split('<td class="label">finetune</td>', 1)[1].split("</tr>", 1)[0]
    cells = [c.split(">", 1)[1].split("<", 1)[0] for c in row.split("<td")[1:]]
    assert cells == ["9", "4", "0", "2", "0", "0", "3"]
    assert '<td class="flag">2</td>' in row


def test_read_head_stops_before_the_records_and_falls_back_to_the_whole_file(tmp_path):
    from e3lib.report.status_cost import read_head

    doc = {
        "format": 2,
        "provenance": {"devices": {"num_devices": 8}},
        "cost": {"train_seconds": 9.5},
    }
    records = [{"metric": "nll", "value": i, "note": '\n "records": '} for i in range(5000)]
    big = write(tmp_path / "a.json", json.dumps({**doc, "records": records}, indent=1))
    assert read_head(big, chunk=4096) == doc  # the head only: records never parsed
    compact = write(tmp_path / "b.json", json.dumps({**doc, "records": records[:2]}))
    assert read_head(compact)["records"] == records[:2]  # no indented key: the whole file
    assert read_head(tmp_path / "absent.json") is None


def test_a_job_killed_by_a_signal_is_named_so(tmp_path, demo):
    sweep, runs, _ = demo
    run = runs[("vit", 1)]["id"]
    log = f"{tmp_path}/logs/finetune/{run}.log"
    out = tmp_path / "results/runs" / run
    assert (
        run_stage(["--status", str(out / "done.json"), "--log", log], ["sh", "-c", "kill -9 $$"])
        == -9
    )
    assert Path(log).read_text().endswith("=== exit code -9\n")  # subprocess's convention
    (p,) = status_of(tmp_path, sweep)["sweeps"][0]["problems"]
    assert (p["id"], p["state"], p["reason"]) == (run, "failed", "killed by signal 9 (SIGKILL)")
    assert p["row"].startswith("method=vit, ")  # axes in the sweep's order
