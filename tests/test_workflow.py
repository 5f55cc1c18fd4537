"""The Snakemake workflow: lint, planning of the demo, validation before any job, incremental
re-planning (nothing twice, only the delta), per-table targets, and the demo end to end
through the real `e3` commands with the tiniest settings.

Every test runs Snakemake in its own copy of the checkout (tracked + not-ignored files), so
nothing here touches the repository's results/, logs/ or reports/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def fresh_checkout(dest: Path) -> Path:
    """What a clone of this working tree holds: tracked and not-ignored files (links kept)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src, dst = REPO / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            continue   # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def smk(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd / ".home")}
    env.pop("SNAKEMAKE_PROFILE", None)
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def job_counts(out: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry run."""
    block = out.split("Job stats:", 1)[1] if "Job stats:" in out else ""
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return fresh_checkout(tmp_path_factory.mktemp("wf"))


def write_sweep(cwd: Path, name: str, seeds: int, **extra) -> str:
    doc = {"title": f"test sweep {name}", "reproduces": ["demo"],
           "base": {"model": {"size": "tiny", "num_experts": 4},
                    "upstream": {"num_selected": 1}},
           "axes": [{"cases": [{"method": "vmoe"},
                               {"method": "e3", "model.ensemble_size": 2}]}],
           "seeds": seeds,
           "ensembles": [{"label": "down_de", "kind": "downstream", "sizes": [2],
                          "of": {"method": "vmoe"}}], **extra}
    path = cwd / "testsweeps" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path.relative_to(cwd))


def test_lint_is_clean(checkout):
    r = smk(checkout, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations, your workflow is in a good condition!" in r.stdout + r.stderr


def test_demo_dry_run_plans_the_whole_pipeline(checkout):
    r = smk(checkout, "-n", "--cores", "2", "--config", "results=res_dry", "reports=rep_dry")
    assert r.returncode == 0, r.stderr[-3000:]
    # sweeps/demo.yaml: ViT, V-MoE, E3 x 2 seeds; ViT and V-MoE upstreams (E3 shares the
    # V-MoE one, upstream K=2); one downstream ensemble of the two V-MoEs.
    assert job_counts(r.stdout) == {"upstream": 2, "finetune": 6, "ensemble": 1, "evaluate": 1,
                                    "aggregate": 1, "report": 1, "all": 1, "total": 13}
    assert "rep_dry/index.html" in r.stdout
    index = json.loads((checkout / "res_dry/sweeps/demo/index.json").read_text())
    assert len(index["entries"]) == 7


def test_invalid_sweep_stops_before_any_job(checkout):
    bad = write_sweep(checkout, "bad", 2,
                      axes=[{"name": "model.overlap", "values": [0, 3]}],
                      base={"method": "e3", "model": {"num_experts": 8, "ensemble_size": 2}})
    r = smk(checkout, "--cores", "1", "--config", f"sweeps=[{bad}]", "results=res_bad")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"invalid sweep: {bad}: model.ensemble_size in run (model.overlap=3, seed=0)" in out
    assert "divisible by M=2" in out
    assert not (checkout / "res_bad" / "runs").exists()
    assert not (checkout / "logs").exists()


def test_invalid_workflow_config_is_rejected(checkout):
    r = smk(checkout, "-n", "--cores", "1", "--config", "variant=huge")
    assert r.returncode != 0
    assert "variant" in r.stdout + r.stderr and "'small'" in r.stdout + r.stderr


def _complete(cwd: Path, results: str, reports: str, sweep: str) -> None:
    """Mark every job of a sweep finished, outputs written in dependency order."""
    index_path = cwd / results / "sweeps" / sweep / "index.json"
    index = json.loads(index_path.read_text())
    stages = [
        [f"{results}/upstream/{e['upstream_id']}/done.json" for e in index["entries"]
         if e["kind"] == "run"],
        [f"{results}/runs/{e['id']}/done.json" for e in index["entries"] if e["kind"] == "run"],
        [f"{results}/ensembles/{e['id']}/done.json" for e in index["entries"]
         if e["kind"] == "ensemble"],
        [f"{results}/sweeps/{sweep}/status.json"],
        [f"{results}/sweeps/{sweep}/dataset.nc"],
        [f"{reports}/index.html"],
    ]
    # As if the sweep was expanded a minute ago and its jobs finished right after, in
    # order: every output older than now, so a later re-expansion (which rewrites the
    # index only when the sweep changed) is newer than what depends on it.
    t0 = time.time() - 60
    for expanded in (index_path, index_path.with_name("index.tsv")):
        os.utime(expanded, (t0, t0))
    t = t0 + 1
    for i, stage in enumerate(stages):
        for rel in stage:
            p = cwd / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text('{"status": "ok"}\n')
            os.utime(p, (t + i, t + i))


def test_second_invocation_does_nothing_and_a_new_seed_runs_only_its_jobs(checkout):
    two = write_sweep(checkout, "grow", 2)
    conf = ["--config", f"sweeps=[{two}]", "results=res_grow", "reports=rep_grow"]
    first = smk(checkout, "-n", "--cores", "1", *conf)
    assert job_counts(first.stdout)["finetune"] == 4, first.stdout[-2000:]
    _complete(checkout, "res_grow", "rep_grow", "grow")
    again = smk(checkout, "-n", "--cores", "1", *conf)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to be done" in again.stdout + again.stderr

    write_sweep(checkout, "grow", 3)                      # one more seed
    grown = smk(checkout, "-n", "--cores", "1", *conf)
    counts = job_counts(grown.stdout)
    # seed 2 of V-MoE and of E3; no upstream (shared) and no new ensemble (3 // 2 = 1)
    assert counts["finetune"] == 2 and "upstream" not in counts and "ensemble" not in counts
    index = json.loads((checkout / "res_grow/sweeps/grow/index.json").read_text())
    new = {e["id"] for e in index["entries"] if e["kind"] == "run" and e["seed"] == 2}
    planned = set(re.findall(r"output: res_grow/runs/([0-9a-f]{12})/done.json", grown.stdout))
    assert planned == new


def test_table_target_runs_only_the_sweeps_of_that_table(checkout):
    r = smk(checkout, "-n", "--cores", "1", "rep_t/table13.html", "--config", "results=res_t",
            "reports=rep_t")
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    # sweeps/table13_permutation.yaml (small): e3 x K{1,2} x permute{no,yes} x 2 seeds
    assert counts["finetune"] == 8 and counts["aggregate"] == 1 and counts["report_table"] == 1
    assert "report" not in counts
    assert "res_t/sweeps/table13_permutation/dataset.nc" in r.stdout
    assert "res_t/sweeps/demo/dataset.nc" not in r.stdout


@pytest.mark.slow
def test_demo_end_to_end_through_snakemake(checkout):
    """The demo sweep's structure with the tiniest settings, through the real e3 commands."""
    tiny = write_sweep(checkout, "tiny_demo", 2, base={
        "model": {"size": "tiny", "num_experts": 4}, "upstream": {"num_selected": 1, "steps": 4,
                                                                  "warmup": 1, "batch_size": 16},
        "data": {"dataset": "demo", "image_size": 16},
        "finetune": {"steps": 4, "warmup": 1, "batch_size": 16, "checkpoint_every": 2},
        "eval": {"fewshot_shots": [1], "corrupted": False}})
    conf = ["--config", f"sweeps=[{tiny}]", "results=res_e2e", "reports=rep_e2e"]
    r = smk(checkout, "--cores", "2", *conf, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    report = checkout / "rep_e2e" / "index.html"
    assert f"Report: {report}" in out
    assert report.stat().st_size > 0
    index = json.loads((checkout / "res_e2e/sweeps/tiny_demo/index.json").read_text())
    for e in index["entries"]:
        # index paths are "results/..." relative to the results root (here res_e2e)
        res = json.loads((checkout / "res_e2e" / e["result"].split("/", 1)[1]).read_text())
        assert res["status"] == "ok" and res["records"]
    status = json.loads((checkout / "res_e2e/sweeps/tiny_demo/status.json").read_text())
    assert status["counts"] == {"ok": len(index["entries"])}
    import xarray as xr
    with xr.open_dataset(checkout / "res_e2e/sweeps/tiny_demo/dataset.nc") as ds:
        assert "seed" in ds.dims and "nll" in ds.data_vars
    for e in index["entries"]:
        kind = "finetune" if e["kind"] == "run" else "ensemble"
        assert (checkout / "logs" / kind / f"{e['id']}.log").exists()
    again = smk(checkout, "-n", "--cores", "2", *conf)
    assert "Nothing to be done" in again.stdout + again.stderr
