"""The Snakemake workflow: lint, planning of the demo (a dry run writes nothing), validation
before any job, incremental re-planning (nothing twice, only the delta), per-table targets,
job-side writes and statuses (stage.py), and the demo end to end through the real `e3`
commands with the tiniest settings.

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

from e3lib import sweep as S

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def fresh_checkout(dest: Path) -> Path:
    """What a clone of this working tree holds: tracked and not-ignored files (links kept)."""
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
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def smk(cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd / ".home")}
    env.pop("SNAKEMAKE_PROFILE", None)
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


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
    doc = {
        "title": f"test sweep {name}",
        "reproduces": ["demo"],
        "base": {"model": {"size": "tiny", "num_experts": 4}, "upstream": {"num_selected": 1}},
        "axes": [{"cases": [{"method": "vmoe"}, {"method": "e3", "model.ensemble_size": 2}]}],
        "seeds": seeds,
        "ensembles": [
            {"label": "down_de", "kind": "downstream", "runs": [2], "of": {"method": "vmoe"}}
        ],
        **extra,
    }
    path = cwd / "testsweeps" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path.relative_to(cwd))


def test_lint_is_clean(checkout):
    r = smk(checkout, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations, your workflow is in a good condition!" in r.stdout + r.stderr


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` except Snakemake's own bookkeeping and the test's HOME."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in (".snakemake", ".home")
    }


def test_demo_dry_run_plans_the_whole_pipeline_and_writes_nothing(checkout):
    before = files_under(checkout)
    r = smk(checkout, "-n", "--cores", "2", "--config", "results=res_dry", "reports=rep_dry")
    assert r.returncode == 0, r.stderr[-3000:]
    # sweeps/demo.yaml: ViT, V-MoE, E3 x 3 seeds; ViT and V-MoE upstreams (E3 shares the
    # V-MoE one, upstream K=2); 3 replicates of the downstream ensemble of two V-MoEs; the
    # sweep's plan stamp and index.
    assert job_counts(r.stdout) == {
        "sweep_plan": 1,
        "sweep_index": 1,
        "upstream": 2,
        "finetune": 9,
        "ensemble": 3,
        "aggregate": 1,
        "report": 1,
        "all": 1,
        "total": 19,
    }
    assert "rep_dry/index.html" in r.stdout
    # parsing and planning wrote no config, index or results folder
    assert not (checkout / "res_dry").exists()
    assert files_under(checkout) == before


def test_rules_have_no_evaluate_and_aggregate_reads_the_done_files(checkout):
    r = smk(checkout, "--list-rules")
    rules = set(r.stdout.split())
    assert {"sweep_plan", "sweep_index", "finetune", "ensemble", "aggregate"} <= rules
    assert "evaluate" not in rules
    d = smk(
        checkout,
        "-n",
        "--cores",
        "1",
        "res_rules/sweeps/demo/dataset.nc",
        "--config",
        "results=res_rules",
        "reports=rep_rules",
    )
    sweep = S.load_sweep(checkout / "sweeps" / "demo.yaml")
    block = d.stdout.split("rule aggregate:", 1)[1].split("\n\n", 1)[0]
    inputs = block.split("input:", 1)[1].splitlines()[0].split(", ")
    expected = ["res_rules/sweeps/demo/index.json"] + [
        f"res_rules/{e['done'].split('/', 1)[1]}" for e in sweep.entries
    ]
    assert sorted(i.strip() for i in inputs) == sorted(expected)


def test_invalid_sweep_stops_before_any_job(checkout):
    bad = write_sweep(
        checkout,
        "bad",
        2,
        axes=[{"name": "model.overlap", "values": [0, 3]}],
        base={"method": "e3", "model": {"num_experts": 8, "ensemble_size": 2}},
    )
    r = smk(checkout, "--cores", "1", "--config", f"sweeps=[{bad}]", "results=res_bad")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"invalid sweep: {bad}: model.ensemble_size in run (model.overlap=3, seed=0)" in out
    assert "divisible by M=2" in out
    assert not (checkout / "res_bad" / "runs").exists()
    assert not (checkout / "logs").exists()


def test_paper_job_that_does_not_fit_its_devices_stops_the_dry_run(checkout):
    # H/14 at 518 px: ~1.4k tokens per image; on the 64 chips of its v5p-128 the step needs
    # far more than 95 GiB per chip (e3lib.parallel.fitcheck, docs/scale.md)
    big = write_sweep(
        checkout,
        "toobig",
        1,
        axes=[{"name": "method", "values": ["vmoe"]}],
        ensembles=[],
        variants={
            "small": {},
            "paper": {
                "base": {
                    "model": {"size": "H/14", "num_experts": 32},
                    "data": {"image_size": 518},
                    "finetune": {"batch_size": 512},
                }
            },
        },
    )
    r = smk(
        checkout,
        "-n",
        "--cores",
        "1",
        "--config",
        f"sweeps=[{big}]",
        "variant=paper",
        "results=res_big",
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"invalid sweep: {big}: run " in out and "does not fit the requested devices" in out
    assert "tpu_type v5p-128 (64 devices of 95 GiB)" in out and "smallest v5p slice" in out
    assert not (checkout / "res_big").exists()


def test_a_run_over_the_device_hour_budget_stops_the_dry_run_unless_raised(checkout):
    # S/32 V-MoE at the paper's setting on its v3-8, for 10^9 steps: millions of
    # device-hours (e3lib.sweep.cost, docs/scale.md "Cost before launch")
    endless = write_sweep(
        checkout,
        "endless",
        1,
        axes=[{"name": "method", "values": ["vmoe"]}],
        ensembles=[],
        variants={
            "small": {},
            "paper": {
                "base": {
                    "model": {"size": "S/32", "num_experts": 32, "num_selected": 2},
                    "data": {"image_size": 384},
                    "finetune": {"batch_size": 512, "steps": 10**9},
                }
            },
        },
    )
    args = ("-n", "--cores", "1", "--config", f"sweeps=[{endless}]", "variant=paper")
    r = smk(checkout, *args, "results=res_endless")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"invalid sweep: {endless}: finetune.steps=1000000000: run " in out
    assert "device-hours" in out and "budget_run_device_hours" in out
    raised = smk(checkout, *args, "results=res_endless", "budget_run_device_hours=1e12",
                 "budget_device_hours=1e12")  # fmt: skip
    assert raised.returncode == 0, (raised.stdout + raised.stderr)[-3000:]
    assert not (checkout / "res_endless").exists()


def test_invalid_workflow_config_is_rejected(checkout):
    r = smk(checkout, "-n", "--cores", "1", "--config", "variant=huge")
    assert r.returncode != 0
    assert "variant" in r.stdout + r.stderr and "'small'" in r.stdout + r.stderr


def _complete(cwd: Path, results: str, reports: str, sweep_file: str) -> None:
    """Mark every job of a sweep finished, outputs written in dependency order."""
    sweep = S.load_sweep(cwd / sweep_file)
    runs = [e for e in sweep.entries if e["kind"] == "run"]
    stages = [
        [f"{results}/sweeps/{sweep.name}/plan/{sweep.fingerprint()}"],
        [f"{results}/sweeps/{sweep.name}/index.json", f"{results}/sweeps/{sweep.name}/index.tsv"],
        [f"{results}/upstream/{e['upstream_id']}/done.json" for e in runs],
        [f"{results}/runs/{e['id']}/done.json" for e in runs],
        [
            f"{results}/ensembles/{e['id']}/done.json"
            for e in sweep.entries
            if e["kind"] == "ensemble"
        ],
        [
            f"{results}/sweeps/{sweep.name}/dataset.nc",
            f"{results}/sweeps/{sweep.name}/dataset.done.json",
            f"{results}/sweeps/{sweep.name}/curves.nc",
        ],
        # the report of this sweep alone, with its stamp of the datasets it shows
        [
            f"{reports}/index.html",
            S.report_stamp_path(reports, [f"{results}/sweeps/{sweep.name}/dataset.nc"]),
        ],
    ]
    # As if the jobs finished a minute ago, in order, after the sweep file was written.
    t = time.time() - 60
    os.utime(cwd / sweep_file, (t - 1, t - 1))
    shutil.rmtree(cwd / reports / ".rendered", ignore_errors=True)  # the report job's too
    for i, stage in enumerate(stages):
        for rel in stage:
            p = cwd / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text('{"status": "ok"}\n')
            os.utime(p, (t + i, t + i))


def test_second_invocation_does_nothing_and_a_new_seed_runs_only_its_jobs(checkout):
    two = write_sweep(checkout, "grow", 3)
    conf = ["--config", f"sweeps=[{two}]", "results=res_grow", "reports=rep_grow"]
    first = smk(checkout, "-n", "--cores", "1", *conf)
    assert job_counts(first.stdout)["finetune"] == 6, first.stdout[-2000:]
    _complete(checkout, "res_grow", "rep_grow", two)
    again = smk(checkout, "-n", "--cores", "1", *conf)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to be done" in again.stdout + again.stderr

    # as if e3lib now expanded the unchanged sweep file differently: the default target
    # notices the plan's new fingerprint and rewrites the index (and what follows it)
    (stamp,) = (checkout / "res_grow/sweeps/grow/plan").iterdir()
    stamp.rename(stamp.with_name("0" * 16))
    stale = job_counts(smk(checkout, "-n", "--cores", "1", *conf).stdout)
    assert stale.get("sweep_plan") == stale.get("sweep_index") == stale.get("aggregate") == 1
    assert "finetune" not in stale
    stamp.with_name("0" * 16).rename(stamp)

    write_sweep(checkout, "grow", 4)  # one more seed
    grown = smk(checkout, "-n", "--cores", "1", *conf)
    counts = job_counts(grown.stdout)
    # seed 3 of V-MoE and of E3; no upstream (shared). The 3 ensemble replicates of 2 runs
    # become seeds {0,1}, {2,3}, {3,0} (were {0,1}, {1,2}, {2,0}): 2 new ensembles. The
    # changed plan rewrites the index, and the dataset and report follow
    assert counts["finetune"] == 2 and "upstream" not in counts and counts["ensemble"] == 2
    assert counts["sweep_plan"] == counts["sweep_index"] == counts["aggregate"] == 1
    sweep = S.load_sweep(checkout / two)
    new = {e["id"] for e in sweep.entries if e["kind"] == "run" and e["seed"] == 3}
    planned = set(re.findall(r"output: res_grow/runs/([0-9a-f]{12})/done.json", grown.stdout))
    assert planned == new

    write_sweep(checkout, "grow", 3)  # back to the first plan: its index is rewritten
    back = smk(checkout, "-n", "--cores", "1", *conf)
    assert job_counts(back.stdout).get("sweep_index") == 1, back.stdout[-2000:]


def test_sweeps_run_one_after_another_each_get_their_jobs_and_report(checkout):
    """A's report is built; B's plan stamp was left by an interrupted run, older than it.
    Snakemake leaves a present output alone while its inputs are missing, so running B
    alone used to be "Nothing to be done": B's stamp of the report's datasets makes the
    report rerun, and with it every job B's dataset still needs."""
    a = write_sweep(checkout, "seq_a", 3)
    base_b = {"model": {"size": "tiny", "num_experts": 8}, "upstream": {"num_selected": 1}}
    b = write_sweep(checkout, "seq_b", 3, base=base_b)
    res, rep = "res_seq", "rep_seq"
    conf_a = ["--config", f"sweeps=[{a}]", f"results={res}", f"reports={rep}"]
    conf_b = ["--config", f"sweeps=[{b}]", f"results={res}", f"reports={rep}"]
    _complete(checkout, res, rep, a)
    sweep_b = S.load_sweep(checkout / b)
    stamp = checkout / res / "sweeps/seq_b/plan" / sweep_b.fingerprint()
    stamp.parent.mkdir(parents=True)
    stamp.write_text(f"{sweep_b.fingerprint()}\n")
    # both older than A's report, as in a checkout whose sweep files came first
    t = (checkout / rep / "index.html").stat().st_mtime - 3600
    for older in (stamp, checkout / b):
        os.utime(older, (t, t))

    r = smk(checkout, "-n", "--cores", "2", *conf_b)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    # B shares no run with A (E=8, not 4): 3 seeds of V-MoE and E3 from their one upstream
    # (K=1), 3 ensemble replicates
    assert counts.get("finetune") == 6 and counts.get("upstream") == 1, r.stdout[-3000:]
    assert counts.get("ensemble") == 3
    assert counts.get("sweep_index") == counts.get("aggregate") == counts.get("report") == 1
    assert "sweep_plan" not in counts  # B's stamp is there
    planned = set(re.findall(rf"output: {res}/runs/([0-9a-f]{{12}})/done.json", r.stdout))
    assert planned == {e["id"] for e in sweep_b.entries if e["kind"] == "run"}

    # B ran to its report; A alone again: only the report (A's dataset is up to date)
    _complete(checkout, res, rep, b)
    back = job_counts(smk(checkout, "-n", "--cores", "2", *conf_a).stdout)
    assert back == {"report": 1, "all": 1, "total": 2}
    # both: a report of the two datasets, nothing else
    conf_ab = ["--config", f"sweeps=[{a},{b}]", f"results={res}", f"reports={rep}"]
    assert job_counts(smk(checkout, "-n", "--cores", "2", *conf_ab).stdout) == back


def test_table_target_runs_only_the_sweeps_of_that_table(checkout):
    r = smk(
        checkout,
        "-n",
        "--cores",
        "1",
        "rep_t/table13.html",
        "--config",
        "results=res_t",
        "reports=rep_t",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    # sweeps/table13_permutation.yaml (small): e3 x K{1,2} x permute{no,yes} x 3 seeds
    assert counts["finetune"] == 12 and counts["aggregate"] == 1 and counts["report_table"] == 1
    assert "report" not in counts
    assert "res_t/sweeps/table13_permutation/dataset.nc" in r.stdout
    assert "res_t/sweeps/demo/dataset.nc" not in r.stdout
    assert not (checkout / "res_t").exists()


STAGE = [sys.executable, str(REPO / "workflow" / "scripts" / "stage.py")]


def test_stage_records_member_failed_naming_the_failed_member(tmp_path):
    ok, bad = tmp_path / "a" / "done.json", tmp_path / "b" / "done.json"
    for path, status in ((ok, "ok"), (bad, "diverged")):
        path.parent.mkdir()
        path.write_text(json.dumps({"status": status}))
    out = tmp_path / "ens" / "done.json"
    r = subprocess.run(
        [
            *STAGE,
            "--status",
            str(out),
            "--log",
            str(tmp_path / "l.log"),
            "--require-ok",
            str(ok),
            str(bad),
            "--",
            "false",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr  # a finished job: the sweep still aggregates
    assert json.loads(out.read_text()) == {
        "status": "member_failed",
        "members": {str(bad): "diverged"},
    }


def test_stage_writes_the_config_its_command_reads_only_when_changed(tmp_path):
    cfg, log = tmp_path / "configs" / "r.json", tmp_path / "l.log"
    read = [sys.executable, "-c", f"print(open({str(cfg)!r}).read())"]
    r = subprocess.run(
        [*STAGE, "--log", str(log), "--write", str(cfg), '{"a":1}\n', "--", *read],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert cfg.read_text() == '{"a":1}\n' and '{"a":1}' in log.read_text()
    os.utime(cfg, (1, 1))
    subprocess.run(
        [*STAGE, "--log", str(log), "--write", str(cfg), '{"a":1}\n', "--", "true"], check=True
    )
    assert cfg.stat().st_mtime == 1  # same content: not rewritten


def test_stage_writes_the_status_file_only_on_process_zero(tmp_path):
    """A multi-host job runs stage.py on every host: one writer of done.json."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("E3_PROCESS_ID", "SLURM_PROCID", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID")
    }
    done, log = tmp_path / "done.json", tmp_path / "l.log"
    for var, pid in (("SLURM_PROCID", "1"), ("CLOUD_TPU_TASK_ID", "3"), ("E3_PROCESS_ID", "2")):
        r = subprocess.run(
            [
                *STAGE,
                "--status",
                str(done),
                "--log",
                str(log),
                "--expect",
                str(tmp_path / "absent.json"),
                "--",
                "true",
            ],
            env=dict(env, **{var: pid}),
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr  # its --expect is process 0's to check
        assert not done.exists() and (tmp_path / f"l.log.p{pid}").is_file()
    r = subprocess.run(
        [*STAGE, "--status", str(done), "--log", str(log), "--", "false"],
        env=dict(env, SLURM_PROCID="1"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and not done.exists()  # its exit code still reaches the job
    r = subprocess.run(
        [*STAGE, "--status", str(done), "--log", str(log), "--", "true"],
        env=dict(env, SLURM_PROCID="0"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and json.loads(done.read_text())["status"] == "ok"


@pytest.mark.slow
def test_demo_end_to_end_through_snakemake(checkout):
    """The demo sweep's structure with the tiniest settings, through the real e3 commands."""
    tiny = write_sweep(
        checkout,
        "tiny_demo",
        3,
        base={
            "model": {"size": "tiny", "num_experts": 4},
            "upstream": {"num_selected": 1, "steps": 4, "warmup": 1, "batch_size": 16},
            "data": {"dataset": "demo", "image_size": 16},
            "finetune": {"steps": 4, "warmup": 1, "batch_size": 16, "checkpoint_every": 2},
            "eval": {"fewshot_shots": [1], "corrupted": False},
        },
    )
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
    for e in index["entries"]:
        done = json.loads((checkout / "res_e2e" / e["done"].split("/", 1)[1]).read_text())
        assert done["status"] == "ok"
        if e["kind"] == "run":  # written by the job itself, what `e3 run` read
            cfg = json.loads((checkout / "res_e2e" / "configs" / f"{e['id']}.json").read_text())
            assert cfg == e["config"]
    assert not (checkout / "res_e2e/sweeps/tiny_demo/status.json").exists()
    import xarray as xr

    with xr.open_dataset(checkout / "res_e2e/sweeps/tiny_demo/dataset.nc") as ds:
        assert "seed" in ds.dims and "nll" in ds.data_vars
    for e in index["entries"]:
        kind = "finetune" if e["kind"] == "run" else "ensemble"
        assert (checkout / "logs" / kind / f"{e['id']}.log").exists()
    again = smk(checkout, "-n", "--cores", "2", *conf)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_public_variant_fine_tunes_from_the_published_checkpoint_with_no_upstream_job(checkout):
    r = smk(
        checkout,
        "-n",
        "--cores",
        "2",
        "--config",
        "variant=public",
        "sweeps=[sweeps/table3_overlap.yaml]",
        "budget_device_hours=1000000",  # the sweep's estimate is over the default
        "results=res_pub",
        "reports=rep_pub",
        "logs=log_pub",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout)
    # 2 K x 4 overlaps x 4 steps x 4 learning rates x 8 seeds, from vmoe_b16_in21k
    assert counts["finetune"] == 2 * 4 * 4 * 4 * 8
    assert "upstream" not in counts
    assert not (checkout / "res_pub").exists()


def test_published_checkpoint_paths_come_from_the_command_line(checkout):
    from published_writers import write_vmoe_sharded

    (checkout / "ck").mkdir(exist_ok=True)
    write_vmoe_sharded(
        str(checkout / "ck" / "b16"),
        {"cls": __import__("numpy").zeros((1, 1, 4), "float32")},
        shard_count=1,
    )
    sweep = write_sweep(
        checkout,
        "pubck",
        3,
        base={
            "model": {"size": "tiny", "num_experts": 4},
            "upstream": {"checkpoint": "vmoe_b16_in21k"},
        },
    )
    r = smk(
        checkout,
        "-n",
        "-p",
        "--cores",
        "1",
        "--config",
        f"sweeps=[{sweep}]",
        "results=res_ck",
        "reports=rep_ck",
        "logs=log_ck",
        'upstream_checkpoints={"vmoe_b16_in21k": "ck/b16"}',
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "upstream" not in job_counts(r.stdout) and job_counts(r.stdout)["finetune"] == 6
    assert '\\"checkpoint\\":\\"ck/b16\\"' in r.stdout or '"checkpoint":"ck/b16"' in r.stdout
    bad = smk(
        checkout,
        "-n",
        "--cores",
        "1",
        "--config",
        f"sweeps=[{sweep}]",
        "results=res_ck",
        'upstream_checkpoints={"vmoe_b16": "ck/b16"}',
    )
    assert bad.returncode != 0
    out = bad.stdout + bad.stderr
    assert "upstream_checkpoints.vmoe_b16" in out and "vmoe_b16_in21k" in out  # the known names
