"""Fault-injection matrix: kills, preemptions, corruptions and concurrent drivers against the
real workflow on a small sweep, each recovered with the documented command (the same
`snakemake` command, rerun) and compared bitwise with an undisturbed run.

    python benchmarks/fault_matrix.py [--only NAME ...] [--keep DIR]

A copy of the checkout (tracked and not-ignored files) in a temporary directory runs the
sweep below (tiny V-MoE, 3 seeds, deep ensembles of two of them; 6 fine-tuning steps with a
checkpoint every 2) once undisturbed; every trial starts from a copy of that finished
directory, injects one fault, reruns the same command until it succeeds (at most 3 times)
and compares every entry's metric records and prediction arrays, and the sweep dataset's
metrics, with the undisturbed ones. Columns: faults injected, survived (the workflow ended
complete), identical (bitwise), runs lost (entries not ok at the end), steps recomputed
(training steps run again, from the runs' records), reruns (commands after the faulty one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
SWEEP = {
    "title": "fault matrix",
    "reproduces": ["demo"],
    "base": {
        "method": "vmoe",
        "model": {"size": "tiny", "num_experts": 4, "num_selected": 1},
        "upstream": {"num_selected": 1, "steps": 4, "warmup": 1, "batch_size": 16},
        "data": {"dataset": "demo", "image_size": 16},
        "finetune": {"steps": STEPS, "warmup": 1, "batch_size": 16, "checkpoint_every": 2},
        "eval": {"fewshot_shots": [1], "corrupted": False},
    },
    "axes": [{"cases": [{"method": "vmoe"}]}],
    "seeds": 3,
    "ensembles": [
        {"label": "down_de", "kind": "downstream", "runs": [2], "of": {"method": "vmoe"}}
    ],
}
CONF = ["--config", "sweeps=[faults/matrix.yaml]", "results=res", "reports=rep"]


def copy_checkout(dest: Path) -> Path:
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src, dst = REPO / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    (dest / "faults").mkdir()
    (dest / "faults" / "matrix.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return dest


def smk_cmd(extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", "2", *CONF, *extra]  # extra: config


def env_for(cwd: Path, fault: str | None = None) -> dict:
    env = {**os.environ, "HOME": str(cwd / ".home")}
    env.pop("SNAKEMAKE_PROFILE", None)
    env.pop("E3_FAULT_AT_STEP", None)
    if fault:
        env["E3_FAULT_AT_STEP"] = fault
    return env


def smk(cwd: Path, fault: str | None = None, extra: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        smk_cmd(extra),
        cwd=cwd,
        env=env_for(cwd, fault),
        capture_output=True,
        text=True,
        timeout=900,
    )


def entries(cwd: Path) -> list[dict]:
    return json.loads((cwd / "res/sweeps/matrix/index.json").read_text())["entries"]


def entry_dir(cwd: Path, e: dict) -> Path:
    return cwd / "res" / ("runs" if e["kind"] == "run" else "ensembles") / e["id"]


def snapshot(cwd: Path) -> dict:
    """What must be identical: every entry's records and predictions, the dataset's metrics."""
    import xarray as xr

    out = {}
    for e in entries(cwd):
        d = entry_dir(cwd, e)
        if not (d / "results.json").exists():
            continue
        out[e["id"]] = json.loads((d / "results.json").read_text())["records"]
        with np.load(d / "predictions.npz") as z:
            out[e["id"] + ".npz"] = {k: z[k].tobytes() for k in z.files}
    with xr.open_dataset(cwd / "res/sweeps/matrix/dataset.nc") as ds:
        out["dataset"] = {k: ds[k].values.tobytes() for k in json.loads(ds.attrs["metrics"])}
    return out


def status(cwd: Path) -> dict[str, str]:
    out = {}
    for e in entries(cwd):
        try:
            out[e["id"]] = json.loads((entry_dir(cwd, e) / "done.json").read_text())["status"]
        except (OSError, ValueError):
            out[e["id"]] = "missing"
    return out


def steps_run(cwd: Path) -> dict[str, int]:
    """Training steps of each run's latest attempt (steps - the step it resumed from)."""
    out = {}
    for e in entries(cwd):
        if e["kind"] != "run" or not (entry_dir(cwd, e) / "results.json").exists():
            continue
        train = json.loads((entry_dir(cwd, e) / "results.json").read_text()).get("train", {})
        out[e["id"]] = STEPS - int(train.get("resumed_from_step") or 0)
    return out


def started(cwd: Path) -> dict[str, str]:
    out = {}
    for e in entries(cwd):
        try:
            out[e["id"]] = json.loads((entry_dir(cwd, e) / "done.json").read_text())["started"]
        except (OSError, ValueError, KeyError):
            out[e["id"]] = ""
    return out


def a_run(cwd: Path, i: int = 0) -> Path:
    return entry_dir(cwd, [e for e in entries(cwd) if e["kind"] == "run"][i])


def forget_run(cwd: Path) -> Path:
    """Remove one finished run (outputs and checkpoints): the next command trains it."""
    d = a_run(cwd)
    shutil.rmtree(d)
    shutil.rmtree(cwd / "res" / "checkpoints" / d.name, ignore_errors=True)
    return d


def flip_bit(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wait_for(pred, timeout: float = 600) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError("fault point never reached")
        time.sleep(0.2)


def ckpt_steps(cwd: Path, run: Path) -> list[int]:
    d = cwd / "res" / "checkpoints" / run.name / "integrity"
    return sorted(int(p.stem) for p in d.glob("*.json")) if d.is_dir() else []


def kill_driver_during_job(cwd: Path) -> None:
    """The login node dies: driver and its jobs SIGKILLed while a run trains."""
    run = forget_run(cwd)
    p = subprocess.Popen(
        smk_cmd(),
        cwd=cwd,
        env=env_for(cwd),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: 2 in ckpt_steps(cwd, run))
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def kill_driver_only(cwd: Path) -> None:
    """The driver alone SIGKILLed (its job keeps running and finishes on its own)."""
    run = forget_run(cwd)
    p = subprocess.Popen(
        smk_cmd(), cwd=cwd, env=env_for(cwd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: 2 in ckpt_steps(cwd, run))
    p.send_signal(signal.SIGKILL)
    p.wait()
    wait_for(lambda: (run / "done.json").exists() or not _has_job(run), timeout=600)


def _has_job(run: Path) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if run.name in Path(f"/proc/{pid}/cmdline").read_text():
                return True
        except OSError:
            pass
    return False


def job_sigkill_at_step(cwd: Path) -> None:
    forget_run(cwd)
    smk(cwd, fault="kill:3")


def job_preempted_at_step(cwd: Path) -> None:
    forget_run(cwd)
    smk(cwd, fault="term:4")  # SIGTERM: checkpoint, exit 4 (preempted)


def flipped_bit_in_checkpoint(cwd: Path) -> None:
    run = forget_run(cwd)
    smk(cwd, fault="term:4")  # checkpoints at steps 2 and 4
    step = max(ckpt_steps(cwd, run))
    files = [p for p in (cwd / "res/checkpoints" / run.name / str(step)).rglob("*") if p.is_file()]
    flip_bit(max(files, key=lambda p: p.stat().st_size))


def truncated_results(cwd: Path) -> None:
    truncate(a_run(cwd) / "results.json")


def flipped_bit_in_predictions(cwd: Path) -> None:
    flip_bit(a_run(cwd, 1) / "predictions.npz")


def deleted_done(cwd: Path) -> None:
    (a_run(cwd) / "done.json").unlink()


def truncated_dataset(cwd: Path) -> None:
    truncate(cwd / "res/sweeps/matrix/dataset.nc")


def two_drivers_at_once(cwd: Path) -> None:
    """The same command launched twice together; one may be refused by the lock."""
    forget_run(cwd)
    procs = [
        subprocess.Popen(
            smk_cmd(),
            cwd=cwd,
            env=env_for(cwd),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    for p in procs:
        p.wait(timeout=900)


TRIALS = {
    "driver SIGKILL (with its jobs)": kill_driver_during_job,
    "driver SIGKILL (job survives)": kill_driver_only,
    "job SIGKILL at step 3": job_sigkill_at_step,
    "job preempted (SIGTERM) at step 4": job_preempted_at_step,
    "flipped bit in latest checkpoint": flipped_bit_in_checkpoint,
    "truncated results.json": truncated_results,
    # same size: found by the SHA-256 check when the file is used (aggregate, ensemble) or,
    # at rest, by the start-up check with `--config verify=deep`
    "flipped bit in predictions.npz (rerun with verify=deep)": flipped_bit_in_predictions,
    "deleted done.json": deleted_done,
    "truncated dataset.nc": truncated_dataset,
    "two drivers at once": two_drivers_at_once,
}


def trial(base: Path, work: Path, name: str, inject, reference: dict) -> dict:
    cwd = work / "".join(c if c.isalnum() else "_" for c in name)
    extra = ["verify=deep"] if "verify=deep" in name else []
    shutil.copytree(base, cwd, symlinks=True)
    before = started(cwd)
    t0 = time.time()
    inject(cwd)
    reruns, ok = 0, False
    while reruns < 3 and not ok:
        r = smk(cwd, extra=extra)
        reruns += 1
        ok = r.returncode == 0 and "cannot be locked" not in r.stdout + r.stderr
    st = status(cwd)
    after, steps = started(cwd), steps_run(cwd)
    redone = [rid for rid in after if after[rid] != before.get(rid)]
    row = {
        "fault": name,
        "survived": ok and all(s == "ok" for s in st.values()),
        "identical": ok and snapshot(cwd) == reference,
        "runs_lost": sum(s != "ok" for s in st.values()),
        "steps_recomputed": sum(steps.get(rid, 0) for rid in redone),
        "reruns": reruns,
        "seconds": round(time.time() - t0),
    }
    if not ok:
        row["tail"] = (r.stdout + r.stderr)[-1500:]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="substrings of trial names")
    ap.add_argument("--keep", help="work in this directory and keep it")
    a = ap.parse_args(argv)
    work = Path(a.keep or tempfile.mkdtemp(prefix="e3-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    base = copy_checkout(work / "base")
    t0 = time.time()
    r = smk(base)
    if r.returncode != 0:
        print((r.stdout + r.stderr)[-3000:], file=sys.stderr)
        return 1
    reference = snapshot(base)
    print(f"undisturbed run: {time.time() - t0:.0f} s, {len(entries(base))} entries", flush=True)
    rows = []
    for name, inject in TRIALS.items():
        if a.only and not any(s in name for s in a.only):
            continue
        rows.append(trial(base, work, name, inject, reference))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| fault | injected | survived | identical | runs lost | steps recomputed | reruns |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['fault']} | 1 | {'yes' if row['survived'] else 'NO'} | "
            f"{'yes' if row['identical'] else 'NO'} | {row['runs_lost']} | "
            f"{row['steps_recomputed']} | {row['reruns']} |"
        )
    tot = len(rows)
    print(
        f"| **total** | {tot} | {sum(r['survived'] for r in rows)} | "
        f"{sum(r['identical'] for r in rows)} | {sum(r['runs_lost'] for r in rows)} | "
        f"{sum(r['steps_recomputed'] for r in rows)} | {sum(r['reruns'] for r in rows)} |"
    )
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["survived"] and r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
