"""Fault injection, fast cases: damaged result, prediction and dataset files, a deleted
done.json, a flipped bit in a checkpoint, a job killed or preempted at a step, a stale lock,
and sweeps that must not hide each other's runs. Each fault is injected into the files the
real writers produce (stage.py, e3 aggregate, Orbax); the slow end-to-end cases (a killed
driver, the whole matrix) are in test_workflow.py and benchmarks/fault_matrix.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_workflow import (
    _complete,
    checkout,  # noqa: F401  (module fixture reused)
    job_counts,
    smk,
    write_sweep,
)

from e3lib import aggregate, integrity, locks
from e3lib import sweep as S
from e3lib.report import cli_report, synthetic

REPO = Path(__file__).resolve().parents[1]
STAGE = [sys.executable, str(REPO / "workflow" / "scripts" / "stage.py")]


def flip_bit(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def staged_entry(root: Path, rid: str = "aaaaaaaaaaaa") -> Path:
    """An entry written through stage.py, as the finetune rule does: done.json last."""
    out = root / "runs" / rid
    writer = (
        f"import numpy as np, json, os; os.makedirs({str(out)!r}, exist_ok=True); "
        f"np.savez({str(out / 'predictions.npz')!r}, probs=np.eye(4)); "
        f"open({str(out / 'results.json')!r}, 'w').write(json.dumps({{'status': 'ok'}}))"
    )
    r = subprocess.run(
        [
            *STAGE,
            "--status",
            str(out / "done.json"),
            "--log",
            str(root / "l.log"),
            "--expect",
            str(out / "results.json"),
            str(out / "predictions.npz"),
            "--",
            sys.executable,
            "-c",
            writer,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return out


def test_stage_records_the_checksum_of_each_output_relative_to_the_entry(tmp_path):
    out = staged_entry(tmp_path)
    files = json.loads((out / "done.json").read_text())["files"]
    assert sorted(files) == ["predictions.npz", "results.json"]
    assert files["results.json"] == {
        "size": len('{"status": "ok"}'),
        "sha256": integrity.sha256(out / "results.json"),
    }


@pytest.mark.parametrize(
    "damage", ["truncate_results", "truncate_predictions", "delete", "garble_done"]
)
def test_damaged_entry_is_set_aside_at_start_and_only_listed_by_a_dry_run(tmp_path, damage):
    out = staged_entry(tmp_path)
    done = out / "done.json"
    {
        "truncate_results": lambda: truncate(out / "results.json"),
        "truncate_predictions": lambda: truncate(out / "predictions.npz"),
        "delete": lambda: (out / "predictions.npz").unlink(),
        "garble_done": lambda: truncate(done),
    }[damage]()
    [msg] = integrity.screen([done], dry_run=True)
    assert msg.startswith(f"e3: would recompute the entry of {done}") and done.exists()
    [msg] = integrity.screen([done])
    assert msg.startswith(f"e3: recomputing the entry of {done}")
    assert not done.exists() and len(list(out.glob("done.json.damaged-*"))) == 1
    assert integrity.screen([done]) == []  # now simply missing: the job reruns


def _sweep_with_checksums(root: Path) -> Path:
    """A synthetic sweep (vmoe x 2 seeds, with predictions) whose done files record the
    checksums of their outputs, as stage.py writes them."""
    index = synthetic.write_sweep(
        root,
        "faults",
        ["method"],
        [0, 1],
        [{"axes": {"method": "vmoe"}, "metrics": {"nll": [1.0, 2.0]}}],
        reproduces=["demo"],
        with_predictions=True,
    )
    for done in root.glob("runs/*/done.json"):
        files = integrity.record(
            [done.parent / "results.json", done.parent / "predictions.npz"], done.parent
        )
        done.write_text(json.dumps({"status": "ok", "files": files}))
    return index


def test_flipped_bit_in_predictions_passes_the_fast_check_and_fails_the_aggregate(tmp_path, capsys):
    index = _sweep_with_checksums(tmp_path)
    entry = json.loads(index.read_text())["entries"][1]
    run = tmp_path / "runs" / entry["id"]
    flip_bit(run / "predictions.npz")
    assert integrity.screen([run / "done.json"]) == []  # same size: fast check passes
    [msg] = integrity.screen([run / "done.json"], dry_run=True, deep=True)  # verify=deep
    assert "predictions.npz: checksum differs" in msg
    args = [
        "--index",
        str(index),
        "--results-root",
        str(tmp_path),
        "--out",
        str(tmp_path / "sweeps/faults/dataset.nc"),
    ]
    assert aggregate.cli_aggregate(args) == 2
    err = capsys.readouterr().err
    assert "predictions.npz: checksum differs" in err
    assert "1 damaged entry set aside" in err and "run the same command again" in err
    assert not (run / "done.json").exists()
    assert not (tmp_path / "sweeps/faults/dataset.nc").exists()  # no partial dataset
    # the rerun (before the job recomputes it) counts the entry missing, never as ok
    assert aggregate.cli_aggregate(args) == 0
    assert "1 ok, 1 missing" in capsys.readouterr().out


def test_truncated_or_flipped_dataset_is_never_reported(tmp_path, capsys):
    index = _sweep_with_checksums(tmp_path)
    nc = tmp_path / "sweeps/faults/dataset.nc"
    args = ["--index", str(index), "--results-root", str(tmp_path), "--out", str(nc)]
    assert aggregate.cli_aggregate(args) == 0
    done = nc.with_name("dataset.done.json")
    assert json.loads(done.read_text())["files"]["dataset.nc"]["sha256"] == integrity.sha256(nc)
    flip_bit(nc, at=0.9)
    rc = cli_report(["--datasets", str(nc), "--out", str(tmp_path / "rep")])
    assert rc == 2 and "checksum differs" in capsys.readouterr().err
    assert not done.exists() and not (tmp_path / "rep" / "index.html").exists()
    assert aggregate.cli_aggregate(args) == 0  # what the rerun does: re-aggregate
    truncate(nc)
    page = tmp_path / "rep" / "index.html"
    page.parent.mkdir(exist_ok=True)
    page.write_text("built from the old dataset")
    # the start-up check catches it, and moves the dataset and its report pages aside
    [msg] = integrity.screen_sweep([], done, [nc, page])
    assert msg.startswith(f"e3: rebuilding {nc.parent} and its report: {nc}: ")
    assert "bytes" in msg and not done.exists() and not nc.exists() and not page.exists()


def test_member_failed_ensemble_is_reported_failed_naming_its_member(tmp_path):
    cells = [
        {"axes": {"method": "vmoe"}, "metrics": {"nll": [1.0, 2.0]}, "seeds": {1: "diverged"}},
        {"axes": {"method": "down_de"}, "kind": "ensemble", "metrics": {"nll": [1.5, 1.5]}},
    ]
    index = synthetic.write_sweep(
        tmp_path, "faults", ["method"], [0, 1], cells, reproduces=["demo"]
    )
    entries = json.loads(index.read_text())["entries"]
    diverged = next(e for e in entries if e["kind"] == "run" and e["seed"] == 1)
    ens = next(e for e in entries if e["kind"] == "ensemble" and e["seed"] == 0)
    (tmp_path / "ensembles" / ens["id"] / "done.json").write_text(
        json.dumps(
            {
                "status": "member_failed",
                "members": {f"results/runs/{diverged['id']}/done.json": "diverged"},
            }
        )
    )
    ds = aggregate.build_dataset(aggregate.load_index(index), tmp_path, index)
    assert ds.attrs["entries_member_failed"] == 1 and ds.attrs["entries_missing"] == 0
    nc = aggregate.write_netcdf_atomic(ds, tmp_path / "sweeps/faults/dataset.nc")
    assert cli_report(["--datasets", str(nc), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "sweep_faults.html").read_text()
    assert "1 diverged, 1 member failed)" in page
    assert f"{ens['id']} ({diverged['id']}: diverged)" in page
    index_page = (tmp_path / "rep" / "index.html").read_text()
    assert "2 / 0 / 1 / 1" in index_page and diverged["id"] in index_page


def test_ensemble_job_refuses_a_damaged_member_and_sets_it_aside(tmp_path):
    a, b = staged_entry(tmp_path, "aaaaaaaaaaaa"), staged_entry(tmp_path, "bbbbbbbbbbbb")
    flip_bit(b / "predictions.npz")
    ens = tmp_path / "ensembles" / "cccccccccccc" / "done.json"
    r = subprocess.run(
        [
            *STAGE,
            "--status",
            str(ens),
            "--log",
            str(tmp_path / "e.log"),
            "--require-ok",
            str(a / "done.json"),
            str(b / "done.json"),
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "checksum differs" in r.stderr
    assert "run the same command again" in r.stderr
    assert not ens.exists() and not (b / "done.json").exists() and (a / "done.json").exists()


def test_flipped_bit_in_the_latest_checkpoint_falls_back_to_the_previous_step(tmp_path):
    from e3lib.checkpoint import TrainCheckpoints

    like = {"w": np.zeros((64, 64), np.float32), "step": np.zeros((), np.int32)}
    ck = TrainCheckpoints(tmp_path / "ck", every=1)
    for step in (1, 2):
        state = {"w": np.full((64, 64), step, np.float32), "step": np.full((), step, np.int32)}
        ck.save(step, state)
    step_dir = tmp_path / "ck" / "2"
    largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    flip_bit(largest)
    state, step = ck.restore_verified(like)
    ck.close()
    assert step == 1 and float(state["w"][0, 0]) == 1.0
    [fb] = ck.fallbacks
    assert fb["step"] == 2 and "checksum differs" in fb["reason"]


def test_stale_lock_of_a_killed_driver_is_cleared_and_the_run_proceeds(checkout, tmp_path):  # noqa: F811
    sweep = write_sweep(checkout, "lockme", 3)
    conf = ["--config", f"sweeps=[{sweep}]", "results=res_lock", "reports=rep_lock"]
    _complete(checkout, "res_lock", "rep_lock", sweep)
    # a driver that held a lock on this run's outputs and was SIGKILLed
    victim = subprocess.Popen(["sleep", "60"])
    lockdir = checkout / ".snakemake" / "locks"
    lockdir.mkdir(parents=True, exist_ok=True)
    (lockdir / "0.output.lock").write_text("rep_lock/index.html\n")
    rec = checkout / ".snakemake" / locks.DRIVERS
    rec.mkdir(exist_ok=True)
    (rec / f"{os.uname().nodename}-{victim.pid}.json").write_text(
        json.dumps(
            {
                "host": os.uname().nodename,
                "pid": victim.pid,
                "started": locks._start_time(victim.pid),
                "since": "earlier",
                "locks": ["0.output.lock"],
            }
        )
    )
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    dry = smk(checkout, "-n", "--cores", "1", *conf)
    assert "would remove a stale Snakemake lock (0.output.lock)" in dry.stderr
    assert (lockdir / "0.output.lock").exists()
    r = smk(checkout, "--cores", "1", *conf)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "removed a stale Snakemake lock" in out and "cannot be locked" not in out
    assert "Nothing to be done" in out
    # an unowned lock (a driver started elsewhere) is explained, with the command
    lockdir.mkdir(parents=True, exist_ok=True)
    (lockdir / "0.output.lock").write_text("rep_lock/index.html\n")
    r = smk(checkout, "--cores", "1", *conf)
    assert r.returncode != 0 and "snakemake --unlock" in r.stderr
    (lockdir / "0.output.lock").unlink()


def test_deleted_or_truncated_done_json_reruns_that_entry_only(checkout):  # noqa: F811
    """Snakemake accepts a missing intermediate file while its consumer (the dataset) is up
    to date: without the start-up check a deleted done.json was "Nothing to be done"."""
    sweep = write_sweep(checkout, "deleted", 3)
    conf = ["--config", f"sweeps=[{sweep}]", "results=res_del", "reports=rep_del"]
    _complete(checkout, "res_del", "rep_del", sweep)
    fp = S.load_sweep(checkout / sweep).fingerprint()
    cheap = f"res_del/sweeps/deleted/plan/{fp}"  # a real run with nothing else to do
    runs = sorted((checkout / "res_del" / "runs").iterdir())
    for damage in ("delete", "tear"):
        if damage == "delete":
            (runs[0] / "done.json").unlink()
        else:
            (runs[0] / "done.json").write_text('{"stat')  # a torn write
        dry = smk(checkout, "-n", "--cores", "1", *conf)
        assert "e3: would rebuild res_del/sweeps/deleted" in dry.stderr
        assert (checkout / "res_del/sweeps/deleted/dataset.done.json").exists()  # dry: as is
        real = smk(checkout, "--cores", "1", cheap, *conf)
        assert real.returncode == 0, real.stderr[-2000:]
        assert "e3: rebuilding res_del/sweeps/deleted" in real.stderr
        counts = job_counts(smk(checkout, "-n", "--cores", "1", *conf).stdout)
        assert counts.get("finetune") == 1 and counts.get("aggregate") == 1
        assert counts.get("report") == 1 and "upstream" not in counts
        _complete(checkout, "res_del", "rep_del", sweep)


def test_one_sweep_never_hides_another_sweeps_runs(checkout):  # noqa: F811
    """Dry-run B, build A's report, then run B: B's own runs are planned. And B refused by
    the lock of a concurrent A (sharing runs) plans its runs once A is gone."""
    a = write_sweep(checkout, "iso_a", 3)
    b = write_sweep(checkout, "iso_b", 4)  # shares seeds 0-2 (and ensembles)
    conf_b = ["--config", f"sweeps=[{b}]", "results=res_iso", "reports=rep_iso"]
    first = job_counts(smk(checkout, "-n", "--cores", "1", *conf_b).stdout)
    assert first["finetune"] == 8
    _complete(checkout, "res_iso", "rep_iso", a)  # A ran to its report
    lock = checkout / ".snakemake" / "locks" / "0.output.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(
        "\n".join(
            f"res_iso/runs/{p.name}/done.json" for p in (checkout / "res_iso" / "runs").iterdir()
        )
        + "\n"
    )
    refused = smk(checkout, "--cores", "1", *conf_b)  # A still holding its lock
    assert refused.returncode != 0 and "cannot be locked" in refused.stdout + refused.stderr
    lock.unlink()  # A finished
    after = smk(checkout, "-n", "--cores", "1", *conf_b)
    counts = job_counts(after.stdout)
    # seed 3 of V-MoE and E3 (the others are A's, computed once), B's index and dataset
    assert counts["finetune"] == 2 and counts["aggregate"] == 1 and counts["report"] == 1
    assert counts["sweep_index"] == 1
    assert not (checkout / "res_iso" / "sweeps" / "iso_b").exists()  # dry runs wrote nothing


@pytest.mark.slow
def test_killed_driver_rerun_proceeds_and_ends_bitwise_equal():
    """The real tiny workflow, its driver and jobs SIGKILLed while a run trains; the same
    command proceeds (no "Directory cannot be locked") and every result, prediction and the
    dataset equal an undisturbed run's (benchmarks/fault_matrix.py, one trial)."""
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "fault_matrix.py"),
            "--only",
            "driver SIGKILL (with its jobs)",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    row = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("{")))
    assert row["survived"] and row["identical"] and row["runs_lost"] == 0
    assert row["reruns"] == 1
