"""Profiles: resolution from the repo root of a fresh checkout, what a dry run of the
skypilot (alias tpu) profile lists, and the keys the implicit `default` profile may hold.
The skypilot profile's scripts are tested in tests/test_skypilot.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import fresh_checkout

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# ----------------------------------------------------------------------------- resolution


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return fresh_checkout(tmp_path_factory.mktemp("clone"))


@pytest.mark.parametrize(
    "profile,executor",
    [("skypilot", "cluster-generic"), ("tpu", "cluster-generic"), ("slurm", "slurm")],
)
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


def test_skypilot_dry_run_lists_one_managed_job_per_run_with_its_slice(checkout, tmp_path):
    """The paper variant of Tables 3/18 (2 K x 6 overlaps x 16 grid points x 8 seeds = 1536
    B/32 fine-tunes from one B/32 upstream): one finetune job per run, each asking for a
    v3-32 (the pretraining for a v3-64), and a dry run never calls SkyPilot."""
    calls = tmp_path / "sky-calls"
    fake_sky = tmp_path / "sky"
    fake_sky.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    fake_sky.chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path), "E3_SKY": str(fake_sky)}
    env.pop("SNAKEMAKE_PROFILE", None)
    r = subprocess.run(
        [
            *SNAKEMAKE,
            "--profile",
            "skypilot",
            "-n",
            "--config",
            "variant=paper",
            "sweeps=[sweeps/table3_overlap.yaml]",
            "budget_device_hours=200000",  # the sweep's estimate is over the default
        ],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    jobs = r.stdout.split("\nrule ")[1:]
    finetunes = [j for j in jobs if j.startswith("finetune:")]
    runs = {line.split("=", 1)[1] for j in finetunes for line in j.splitlines()
            if line.strip().startswith("wildcards: run=")}  # fmt: skip
    assert len(finetunes) == len(runs) == 1536
    assert all("tpu_type=v3-8," in j for j in finetunes)
    [upstream] = [j for j in jobs if j.startswith("upstream:")]
    assert "tpu_type=v3-64," in upstream
    assert not calls.exists()


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
    for name in ("skypilot", "tpu", "slurm"):
        prof = load(name)
        for key, value in default.items():
            assert prof.get(key) == value, f"profiles/{name}: {key}"
        assert (REPO / name).resolve() == (REPO / "profiles" / name).resolve()
    # tpu is the skypilot profile (the former gcloud driver is retired)
    assert (REPO / "profiles" / "tpu").resolve() == (REPO / "profiles" / "skypilot").resolve()
    assert load("skypilot")["cluster-generic-submit-cmd"].endswith("sky_jobs.py submit")
