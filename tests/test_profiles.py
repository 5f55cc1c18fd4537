"""Profiles: the tpu profile's gcloud driver against a fake `gcloud`, profile resolution from
the repo root of a fresh checkout, and the keys the implicit `default` profile may hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import fresh_checkout

REPO = Path(__file__).resolve().parents[1]
TPU_VM = REPO / "profiles" / "tpu" / "tpu_vm.py"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# A stand-in for gcloud: records every call, keeps queued resources as files, runs the
# `tpu-vm ssh --command` locally, and simulates a spot preemption when FAKE_PREEMPT=1.
FAKE_GCLOUD = textwrap.dedent(r"""
    #!/usr/bin/env python3
    import json, os, subprocess, sys
    state = os.environ["FAKE_GCLOUD_DIR"]
    args = sys.argv[1:]
    with open(os.path.join(state, "calls.jsonl"), "a") as f:
        f.write(json.dumps(args) + "\n")
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    pos = [a for a in args if not a.startswith("--")]
    def qr(name):
        return os.path.join(state, name + ".qr")
    if pos[:4] == ["compute", "tpus", "queued-resources", "create"]:
        if os.environ.get("FAKE_CREATE_FAILS"):
            print("ERROR: (gcloud) quota exceeded", file=sys.stderr)
            sys.exit(1)
        open(qr(pos[4]), "w").write(os.environ.get("FAKE_INITIAL_STATE", "ACTIVE"))
    elif pos[:4] == ["compute", "tpus", "queued-resources", "describe"]:
        if not os.path.exists(qr(pos[4])):
            sys.exit(1)
        print(open(qr(pos[4])).read())
    elif pos[:4] == ["compute", "tpus", "queued-resources", "delete"]:
        if os.path.exists(qr(pos[4])):
            os.remove(qr(pos[4]))
    elif pos[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        if os.environ.get("FAKE_PREEMPT"):
            open(qr(pos[4]), "w").write("SUSPENDED")
            sys.exit(255)
        sys.exit(subprocess.call(opts["command"], shell=True))
    else:
        sys.exit(2)
""").lstrip()


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    bindir, state = tmp_path / "bin", tmp_path / "gcloud-state"
    bindir.mkdir()
    state.mkdir()
    exe = bindir / "gcloud"
    exe.write_text(FAKE_GCLOUD.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_DIR", str(state))
    monkeypatch.setenv("E3_TPU_STATE_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("E3_TPU_POLL_SECONDS", "0.1")
    monkeypatch.setenv("E3_TPU_ZONE", "us-central2-b")
    monkeypatch.delenv("E3_GCLOUD", raising=False)

    def calls():
        path = state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return calls


def tpu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TPU_VM), *args], capture_output=True, text=True, timeout=60
    )


def wait_status(job: str, timeout: float = 30.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = tpu("status", job).stdout.strip()
        assert status in ("running", "success", "failed"), status
        if status != "running":
            return status
        time.sleep(0.1)
    return "running"


def jobscript(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "jobscript.sh"
    p.write_text("#!/bin/bash\n" + body + "\n")
    return p


def test_submit_runs_jobscript_on_a_spot_tpu_and_reports_success(tmp_path, fake_gcloud):
    marker = tmp_path / "ran"
    js = jobscript(tmp_path, f"echo ok > {marker}")
    sub = tpu(
        "submit",
        "--accelerator-type",
        "v3-8",
        "--runtime",
        "60",
        "--name",
        "e3-finetune-7",
        str(js),
    )
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip()
    assert job.startswith("e3-finetune-7-")
    assert wait_status(job) == "success"
    assert marker.read_text() == "ok\n"
    calls = fake_gcloud()
    create = next(c for c in calls if c[3] == "create")
    assert "--accelerator-type=v3-8" in create and "--spot" in create
    assert "--zone=us-central2-b" in create and f"--node-id={job}" in create
    ssh = next(c for c in calls if c[2] == "tpu-vm")
    assert "--worker=all" in ssh and f"--command=bash {js}" in ssh
    # the TPU is given back after the job
    assert any(c[3] == "delete" and c[4] == job for c in calls)


def test_failing_jobscript_reports_failed(tmp_path, fake_gcloud):
    job = tpu(
        "submit", "--accelerator-type", "v3-8", str(jobscript(tmp_path, "exit 3"))
    ).stdout.strip()
    assert wait_status(job) == "failed"


def test_preemption_reports_failed_and_frees_the_tpu(tmp_path, fake_gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_PREEMPT", "1")
    job = tpu(
        "submit", "--accelerator-type", "v3-8", str(jobscript(tmp_path, "true"))
    ).stdout.strip()
    assert wait_status(job) == "failed"
    state = json.loads((tmp_path / "jobs" / f"{job}.json").read_text())
    # seen either by the driver (ssh exit 255) or first by a status poll: both name the state
    assert "SUSPENDED" in state["reason"], state
    assert any(c[3] == "delete" and c[4] == job for c in fake_gcloud())


def test_preempted_while_running_is_detected_by_status(tmp_path, fake_gcloud):
    js = jobscript(tmp_path, "sleep 30")
    job = tpu("submit", "--accelerator-type", "v3-8", str(js)).stdout.strip()
    deadline = time.time() + 20
    while "started" not in json.loads((tmp_path / "jobs" / f"{job}.json").read_text()):
        assert time.time() < deadline
        time.sleep(0.1)
    assert tpu("status", job).stdout.strip() == "running"
    (tmp_path / "gcloud-state" / f"{job}.qr").write_text("SUSPENDING")  # spot reclaimed
    assert tpu("status", job).stdout.strip() == "failed"
    assert not (tmp_path / "gcloud-state" / f"{job}.qr").exists()


def test_waiting_for_capacity_is_running_and_cancel_deletes(tmp_path, fake_gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_INITIAL_STATE", "WAITING_FOR_RESOURCES")
    job = tpu(
        "submit", "--accelerator-type", "v5litepod-8", str(jobscript(tmp_path, "true"))
    ).stdout.strip()
    time.sleep(0.3)
    assert tpu("status", job).stdout.strip() == "running"
    assert tpu("cancel", job).returncode == 0
    assert tpu("status", job).stdout.strip() == "failed"
    assert any(c[3] == "delete" and c[4] == job for c in fake_gcloud())


def test_create_failure_fails_the_submission(tmp_path, fake_gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_CREATE_FAILS", "1")
    sub = tpu("submit", "--accelerator-type", "v3-8", str(jobscript(tmp_path, "true")))
    assert sub.returncode == 1
    assert "quota exceeded" in sub.stderr and sub.stdout == ""


def test_local_jobs_need_no_gcloud(tmp_path, fake_gcloud):
    marker = tmp_path / "local"
    job = tpu(
        "submit", "--accelerator-type", "none", str(jobscript(tmp_path, f"touch {marker}"))
    ).stdout.strip()
    assert wait_status(job) == "success" and marker.exists()
    assert fake_gcloud() == []


TOY_SNAKEFILE = textwrap.dedent("""
    rule all:
        input: "out/done.txt"

    rule train:
        output: "out/done.txt"
        params: ckpt="ckpt"        # like results/checkpoints/{run}: not an output
        resources: tpu_type="v3-8", runtime=5
        shell: "mkdir -p {params.ckpt} && echo step >> {params.ckpt}/steps && "
               "cp {params.ckpt}/steps {output}"
""")


@pytest.mark.slow
def test_tpu_profile_retries_a_preempted_job_which_resumes(tmp_path, fake_gcloud, monkeypatch):
    """Snakemake with the tpu profile: the first TPU is preempted after the job made progress
    (ssh exit 255); Snakemake resubmits, the retry finds the checkpoint dir and finishes."""
    work = tmp_path / "wf"
    (work / "profiles").mkdir(parents=True)
    shutil.copytree(REPO / "profiles" / "tpu", work / "profiles" / "tpu")
    os.symlink("profiles/tpu", work / "tpu")
    (work / "Snakefile").write_text(TOY_SNAKEFILE)
    # The fake gcloud runs the first attempt's jobscript, then drops the connection.
    preempt_after = tmp_path / "gcloud-state" / "preempt_after_first_ssh"
    preempt_after.write_text("1")
    run_line = """    sys.exit(subprocess.call(opts["command"], shell=True))"""
    fake = (tmp_path / "bin" / "gcloud").read_text()
    assert run_line in fake
    (tmp_path / "bin" / "gcloud").write_text(
        fake.replace(
            run_line,
            """
    rc = subprocess.call(opts["command"], shell=True)
    marker = os.path.join(state, "preempt_after_first_ssh")
    if os.path.exists(marker):
        os.remove(marker)
        open(qr(pos[4]), "w").write("SUSPENDED")
        sys.exit(255)
    sys.exit(rc)""",
        )
    )
    monkeypatch.setenv("E3_TPU_STATE_DIR", str(work / ".snakemake" / "tpu-jobs"))
    env = {**os.environ, "HOME": str(tmp_path)}
    r = subprocess.run(
        [
            *SNAKEMAKE,
            "--profile",
            "tpu",
            "--latency-wait",
            "5",
            "--max-status-checks-per-second",
            "10",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    # two attempts, each one step: the second one saw the first one's checkpoint
    assert (work / "out" / "done.txt").read_text() == "step\nstep\n", out[-4000:]
    creates = [c for c in fake_gcloud() if c[3] == "create"]
    assert len(creates) == 2 and all("--accelerator-type=v3-8" in c for c in creates)


# ----------------------------------------------------------------------------- resolution


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return fresh_checkout(tmp_path_factory.mktemp("clone"))


@pytest.mark.parametrize("profile,executor", [("tpu", "cluster-generic"), ("slurm", "slurm")])
def test_profile_dry_run_from_fresh_checkout(checkout, tmp_path, profile, executor):
    env = {**os.environ, "HOME": str(tmp_path)}  # no ~/.config/snakemake, no credentials
    env.pop("SNAKEMAKE_PROFILE", None)
    r = subprocess.run(
        [*SNAKEMAKE, "--profile", profile, "-n"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert f"Using profiles {profile} and workflow specific profile profiles/default" in out
    assert "finetune" in out and "This was a dry-run" in out
    assert not (tmp_path / ".config").exists()


def test_tpu_jobs_carry_the_tpu_type_of_their_model_size(checkout, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    r = subprocess.run(
        [
            *SNAKEMAKE,
            "--profile",
            "tpu",
            "-n",
            "--config",
            "variant=paper",
            "sweeps=[sweeps/table13_permutation.yaml]",
            "results=res_paper",
        ],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # B/32 fine-tunes on v3-8 (the TPU compiler: 7.97 GiB per core for V-MoE K=2), its
    # pretraining on v3-64 (e3lib.sweep.SIZE_RESOURCES, docs/scale.md)
    assert "tpu_type=v3-8" in r.stdout and "tpu_type=v3-64" in r.stdout


def test_default_profile_agrees_with_the_cluster_profiles():
    """profiles/default overrides --profile X key by key: it may only hold keys whose value
    is the same in every profile, and none of the execution keys."""
    load = lambda name: yaml.safe_load((REPO / "profiles" / name / "profile.yaml").read_text())
    default = load("default")
    assert not set(default) & {
        "cores",
        "jobs",
        "executor",
        "resources",
        "default-resources",
        "set-resources",
        "retries",
        "latency-wait",
    }
    for name in ("tpu", "slurm"):
        prof = load(name)
        for key, value in default.items():
            assert prof.get(key) == value, f"profiles/{name}: {key}"
        assert (REPO / name).resolve() == (REPO / "profiles" / name).resolve()
    assert "{resources.tpu_type}" in load("tpu")["cluster-generic-submit-cmd"]
