"""The skypilot profile (profiles/skypilot): SkyPilot tasks built from Snakemake jobscripts,
and submit / status / cancel / clean-up against a fake `sky` command (tests/fake_sky.py)
that replays managed-job states or executes the task's `run` like SkyPilot's controller."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "skypilot"
SKY_JOBS = PROFILE / "sky_jobs.py"
sys.path.insert(0, str(PROFILE))
import sky_task  # noqa: E402

# A cluster-generic jobscript of a finetune job (the shape Snakemake 9 writes with a
# status command), in the work directory /work/e3.
JOBSCRIPT = textwrap.dedent("""\
    #!/bin/sh
    # properties = {"type": "single", "rule": "finetune", "local": false, "input": [], "output": ["results/runs/0123456789ab/done.json"], "wildcards": {"run": "0123456789ab"}, "params": {}, "log": ["logs/finetune/0123456789ab.log"], "threads": 1, "resources": {"tmpdir": "<TBD>", "tpu_type": "v3-32", "gpu": 16, "mem_mb": 48000, "runtime": 80}, "jobid": 7}
    cd /work/e3 && /venv/bin/python -m snakemake --snakefile '/work/e3/Snakefile' --target-jobs 'finetune:run=0123456789ab' --allowed-rules finetune --cores 'all' --attempt 2 --wait-for-files '/work/e3/.snakemake/tmp.x1' --force --config 'variant=paper' 'sweeps=[sweeps/table3_overlap.yaml]' --latency-wait 120 --scheduler-solver-path '/venv/bin' --runtime-source-cache-path '/root/.cache/sm/tmpq' --mode 'remote' && exit 0 || exit 1
""")  # noqa: E501


def write_jobscript(path: Path, **resources) -> Path:
    text = JOBSCRIPT
    if resources:
        props = json.loads(text.splitlines()[1].split(" = ", 1)[1])
        props["resources"].update(resources)
        text = text.replace(text.splitlines()[1], f"# properties = {json.dumps(props)}")
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the task


def test_remote_args_drop_this_machines_paths_and_keep_the_job():
    job = sky_task.Job.read(str(write_jobscript(Path("/tmp") / f"js{os.getpid()}.sh")))
    assert sky_task.remote_args(job.line, "/work/e3") == [
        "--snakefile",
        "Snakefile",
        "--target-jobs",
        "finetune:run=0123456789ab",
        "--allowed-rules",
        "finetune",
        "--cores",
        "all",
        "--attempt",
        "2",
        "--force",
        "--config",
        "variant=paper",
        "sweeps=[sweeps/table3_overlap.yaml]",
        "--latency-wait",
        "120",
        "--mode",
        "remote",
    ]
    assert job.name("e3") == "e3-ft-0123456789ab"


@pytest.mark.parametrize(
    "accelerator,res,expected",
    [
        ("tpu", {"tpu_type": "v3-32", "gpu": 4}, ("tpu-v3-32", 1)),
        ("tpu", {"tpu_type": "v5litepod-16"}, ("tpu-v5litepod-16", 1)),
        ("tpu", {"tpu_type": "none", "gpu": 0}, (None, 1)),
        ("H100", {"tpu_type": "v3-32", "gpu": 4}, ("H100:4", 1)),
        ("H100", {"tpu_type": "v3-32", "gpu": 8}, ("H100:8", 1)),
        ("H100", {"tpu_type": "v5p-128", "gpu": 128}, ("H100:8", 16)),
        ("A100-80GB", {"gpu": 0}, (None, 1)),
    ],
)
def test_accelerators_from_the_jobs_resources(accelerator, res, expected):
    assert sky_task.accelerators(res, sky_task.Settings(accelerator=accelerator)) == expected


def test_a_partial_node_of_a_multi_node_job_is_refused():
    with pytest.raises(sky_task.TaskError, match="gpu=12: not a multiple of .*=8"):
        sky_task.accelerators({"gpu": 12}, sky_task.Settings(accelerator="H100"))


def test_task_of_a_multi_node_gpu_job(tmp_path):
    job = sky_task.Job.read(str(write_jobscript(tmp_path / "js.sh")))
    settings = sky_task.Settings(accelerator="H100", bucket="gs://bkt/e3", infra="gcp")
    doc = sky_task.task(job, "/work/e3", settings)
    assert doc["name"] == "e3-ft-0123456789ab" and doc["num_nodes"] == 2
    assert doc["workdir"] == "/work/e3"
    assert doc["resources"] == {
        "accelerators": "H100:8",
        "use_spot": True,
        "job_recovery": {
            "strategy": "EAGER_NEXT_REGION",
            "max_restarts_on_errors": 0,
            "recover_on_exit_codes": [4],
        },
        "labels": {"e3-project": "e3", "e3-stage": "finetune", "e3-run": "0123456789ab"},
        "infra": "gcp",
    }
    assert doc["file_mounts"] == {
        "~/sky_workdir/logs": {"source": "gs://bkt/e3/logs", "mode": "MOUNT"},
        "~/sky_workdir/results": {"source": "gs://bkt/e3/results", "mode": "MOUNT"},
    }
    assert doc["setup"] == "pip install -q -e '.[workflow]' 'jax[cuda12]'"
    assert "python -m snakemake --snakefile Snakefile --target-jobs" in doc["run"]


@pytest.mark.parametrize(
    "tpu_type,runtime",
    [
        ("v3-32", "tpu-ubuntu2204-base"),
        ("v4-64", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_software_follows_the_generation(tmp_path, tpu_type, runtime):
    job = sky_task.Job.read(str(write_jobscript(tmp_path / "js.sh", tpu_type=tpu_type)))
    doc = sky_task.task(job, "/work/e3", sky_task.Settings(bucket="none"))
    assert doc["resources"]["accelerators"] == f"tpu-{tpu_type}" and doc["num_nodes"] == 1
    assert doc["resources"]["accelerator_args"] == {"runtime_version": runtime}
    assert "file_mounts" not in doc and doc["setup"].endswith("'jax[tpu]'")
    pinned = sky_task.Settings(bucket="none", tpu_runtime="tpu-vm-v4-base")
    assert sky_task.task(job, "/w", pinned)["resources"]["accelerator_args"] == {
        "runtime_version": "tpu-vm-v4-base"
    }


def test_run_script_maps_skypilot_nodes_onto_jax_distributed(tmp_path):
    """The run script on rank 1 of 2 nodes: E3_* from SKYPILOT_*; the stage command's exit
    code 4 (recorded by stage.py) becomes the job's, not Snakemake's 1."""
    fake_python = tmp_path / "python"  # records the start-up variables, exits like a preempted job
    fake_python.write_text(
        "#!/bin/sh\n"
        f'echo "$E3_COORDINATOR $E3_NUM_PROCESSES $E3_PROCESS_ID" > {tmp_path}/env\n'
        'echo 4 > "$E3_EXIT_CODE_FILE"; exit 1\n'
    )
    fake_python.chmod(0o755)
    script = sky_task.run_script(["--target-jobs", "x"], sky_task.Settings())
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": "1",
        "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
    }
    r = subprocess.run(["bash", "-c", script], env=env)
    assert r.returncode == 4
    assert (tmp_path / "env").read_text() == "10.0.0.5:8476 2 1\n"
    one = subprocess.run(["bash", "-c", script], env={**env, "SKYPILOT_NUM_NODES": "1"})
    assert one.returncode == 4 and (tmp_path / "env").read_text() == "  \n"


def test_generated_tasks_parse_with_skypilots_own_parser(tmp_path):
    """With SkyPilot's own task parser, from E3_SKY_PYTHON (an interpreter in a separate
    environment, as in CI) or else this one; skipped when neither imports it."""
    py = os.environ.get("E3_SKY_PYTHON") or sys.executable
    docs = {}
    for kind, settings in [
        ("tpu", sky_task.Settings(bucket="gs://bkt/e3")),
        ("gpu", sky_task.Settings(accelerator="H100", spot=False, bucket="none")),
    ]:
        job = sky_task.Job.read(str(write_jobscript(tmp_path / f"{kind}.sh")))
        path = tmp_path / f"{kind}.yaml"
        path.write_text(sky_task.to_yaml(sky_task.task(job, str(tmp_path), settings)))
        docs[kind] = str(path)
    check = textwrap.dedent("""
        import json, sys, sky
        out = {}
        for kind, path in json.loads(sys.argv[1]).items():
            t = sky.Task.from_yaml(path)
            r = list(t.resources)[0]
            out[kind] = [t.name, t.num_nodes, r.accelerators, r.use_spot, r.job_recovery,
                         r.labels, sorted(t.storage_mounts)]
        print(json.dumps(out))
    """)
    r = subprocess.run(
        [py, "-c", check, json.dumps(docs)], capture_output=True, text=True, timeout=120
    )
    if "No module named 'sky'" in r.stderr:
        pytest.skip(f"skypilot is not importable from {py} (set E3_SKY_PYTHON to one with it)")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    recovery = {
        "strategy": "EAGER_NEXT_REGION",
        "max_restarts_on_errors": 0,
        "recover_on_exit_codes": [4],
    }
    labels = {"e3-project": "e3", "e3-stage": "finetune", "e3-run": "0123456789ab"}
    name = "e3-ft-0123456789ab"
    mounts = ["~/sky_workdir/logs", "~/sky_workdir/results"]
    assert out["tpu"] == [name, 1, {"tpu-v3-32": 1}, True, recovery, labels, mounts]
    assert out["gpu"] == [name, 2, {"H100": 8}, False, recovery, labels, []]


# ----------------------------------------------------------------------------- fake sky


@pytest.fixture
def fake_sky(tmp_path, monkeypatch):
    state = tmp_path / "sky-state"
    state.mkdir()
    exe = tmp_path / "bin" / "sky"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n" + (REPO / "tests" / "fake_sky.py").read_text())
    exe.chmod(0o755)
    monkeypatch.setenv("E3_SKY", str(exe))
    monkeypatch.setenv("FAKE_SKY_DIR", str(state))
    monkeypatch.setenv("E3_SKY_STATE_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("E3_SKY_QUEUE_TTL", "0")
    monkeypatch.setenv("E3_SKY_BUCKET", "none")  # the fake runs jobs in place
    monkeypatch.setenv("E3_SKY_RETRY_SECONDS", "0")
    for var in ("FAKE_SKY_STATES", "E3_SKY_ACCELERATOR", "E3_SKY_PROJECT"):
        monkeypatch.delenv(var, raising=False)

    class Fake:
        def calls(self, *prefix):
            path = state / "calls.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            return [c for c in map(json.loads, lines) if c[: len(prefix)] == list(prefix)]

        def seed(self, *records):
            (state / "jobs.json").write_text(json.dumps([{"_replay": [], **r} for r in records]))

        def jobs(self):
            return json.loads((state / "jobs.json").read_text())

    return Fake()


def sky_jobs(*args, cwd=None, script=SKY_JOBS) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def sky_cleanup(*args, cwd=None) -> subprocess.CompletedProcess:
    return sky_jobs(*args, cwd=cwd, script=PROFILE / "sky_cleanup.py")


def test_replayed_states_map_onto_snakemake_statuses(fake_sky):
    fake_sky.seed(
        {"job_id": 1, "job_name": "e3-ft-aa", "status": "PENDING",
         "_replay": ["RUNNING", "RECOVERING", "SUCCEEDED"]}
    )  # fmt: skip
    seen = [sky_jobs("status", "e3-ft-aa@1").stdout.strip() for _ in range(5)]
    assert seen == ["running", "running", "running", "success", "success"]
    assert len(fake_sky.calls("jobs", "queue")) == 5  # E3_SKY_QUEUE_TTL=0: no cache


def test_status_checks_share_one_queue_listing(fake_sky, monkeypatch):
    fake_sky.seed(
        {"job_id": 1, "job_name": "e3-ft-aa", "status": "RUNNING"},
        {"job_id": 2, "job_name": "e3-ft-bb", "status": "SUCCEEDED"},
    )
    monkeypatch.setenv("E3_SKY_QUEUE_TTL", "60")
    assert sky_jobs("status", "e3-ft-aa@1").stdout.strip() == "running"
    assert sky_jobs("status", "e3-ft-bb@2").stdout.strip() == "success"
    assert len(fake_sky.calls("jobs", "queue")) == 1


def test_submit_launches_one_managed_job_named_by_the_run(tmp_path, fake_sky, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_STATES", "PENDING")
    sub = sky_jobs("submit", str(write_jobscript(tmp_path / "js.sh")), cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == "e3-ft-0123456789ab@1"
    launch = fake_sky.calls("jobs", "launch")
    assert len(launch) == 1
    assert launch[0][3:] == ["--name", "e3-ft-0123456789ab", "--yes", "--detach-run"]
    task = yaml.safe_load(Path(launch[0][2]).read_text())
    assert task["resources"]["accelerators"] == "tpu-v3-32" and task["num_nodes"] == 1
    assert task["workdir"] == str(tmp_path)


@pytest.mark.parametrize(
    "state,expected",
    [(s, "running") for s in ("PENDING", "SUBMITTED", "STARTING", "RUNNING", "RECOVERING")]
    + [("SUCCEEDED", "success")]
    + [
        (s, "failed")
        for s in (
            "CANCELLING",
            "CANCELLED",
            "FAILED",
            "FAILED_SETUP",
            "FAILED_PRECHECKS",
            "FAILED_NO_RESOURCE",
            "FAILED_CONTROLLER",
        )
    ],
)
def test_every_managed_job_state(fake_sky, state, expected):
    fake_sky.seed({"job_id": 3, "job_name": "e3-ft-aa", "status": state})
    assert sky_jobs("status", "e3-ft-aa@3").stdout.strip() == expected


def test_status_when_skypilot_is_unreachable_or_the_job_unknown(fake_sky, monkeypatch):
    fake_sky.seed({"job_id": 3, "job_name": "e3-ft-aa", "status": "RUNNING"})
    assert sky_jobs("status", "e3-ft-aa@9").stdout.strip() == "failed"
    assert sky_jobs("status", "e3-finetune-12-3fa9c1").stdout.strip() == "failed"  # not ours
    monkeypatch.setenv("FAKE_SKY_NOTICE", "1")  # lines before the JSON listing: still read
    noticed = sky_jobs("status", "e3-ft-aa@9")
    assert noticed.stdout.strip() == "failed" and noticed.stderr == ""
    monkeypatch.setenv("FAKE_SKY_DOWN", "1")
    r = sky_jobs("status", "e3-ft-aa@3")  # never an error: Snakemake would stop everything
    assert r.returncode == 0 and r.stdout.strip() == "running"
    assert "API server unreachable" in r.stderr


def test_submit_refuses_without_a_bucket_or_with_a_bad_project(tmp_path, fake_sky, monkeypatch):
    js = str(write_jobscript(tmp_path / "js.sh"))
    monkeypatch.delenv("E3_SKY_BUCKET")
    r = sky_jobs("submit", js)
    assert r.returncode == 1 and "E3_SKY_BUCKET is not set" in r.stderr
    monkeypatch.setenv("E3_SKY_BUCKET", "none")
    monkeypatch.setenv("E3_SKY_PROJECT", "My_Lab")
    r = sky_jobs("submit", js)
    assert r.returncode == 1 and "E3_SKY_PROJECT='My_Lab': lowercase letters" in r.stderr
    assert fake_sky.calls() == []


def test_a_failed_launch_is_tried_again_after_looking_for_the_job(tmp_path, fake_sky, monkeypatch):
    monkeypatch.setenv("FAKE_SKY_STATES", "PENDING")
    monkeypatch.setenv("FAKE_SKY_LAUNCH_FAILS", "1")
    sub = sky_jobs("submit", str(write_jobscript(tmp_path / "js.sh")))
    assert sub.returncode == 0 and sub.stdout.strip() == "e3-ft-0123456789ab@1", sub.stderr
    assert "quota exceeded" in sub.stderr
    assert [c[:2] for c in fake_sky.calls()] == [["jobs", "queue"], ["jobs", "launch"]] * 2 + [
        ["jobs", "queue"]
    ]
    monkeypatch.setenv("FAKE_SKY_LAUNCH_FAILS", "9")
    other = write_jobscript(tmp_path / "js2.sh")
    other.write_text(other.read_text().replace("0123456789ab", "fedcba987654"))
    assert sky_jobs("submit", str(other)).returncode == 1  # E3_SKY_SUBMIT_TRIES=3 tries


def test_submit_after_a_driver_crash_reattaches_instead_of_launching_twice(tmp_path, fake_sky):
    fake_sky.seed(
        {"job_id": 4, "job_name": "e3-ft-0123456789ab", "status": "FAILED"},  # an old attempt
        {"job_id": 5, "job_name": "e3-ft-0123456789ab", "status": "RECOVERING"},
        {"job_id": 6, "job_name": "e3-ft-fedcba987654", "status": "RUNNING"},
    )
    sub = sky_jobs("submit", str(write_jobscript(tmp_path / "js.sh")))
    assert sub.returncode == 0 and sub.stdout.strip() == "e3-ft-0123456789ab@5"
    assert "reattached to e3-ft-0123456789ab (managed job 5, RECOVERING)" in sub.stderr
    assert fake_sky.calls("jobs", "launch") == []
    # a job of that name that is cancelling or over is not reattached to
    fake_sky.seed({"job_id": 5, "job_name": "e3-ft-0123456789ab", "status": "CANCELLING"})
    again = sky_jobs("submit", str(write_jobscript(tmp_path / "js.sh")))
    assert again.stdout.strip() == "e3-ft-0123456789ab@6"
    assert len(fake_sky.calls("jobs", "launch")) == 1


def test_a_job_without_accelerator_runs_here_once(tmp_path, fake_sky):
    js = write_jobscript(tmp_path / "js.sh", tpu_type="none", gpu=0)
    marker = tmp_path / "ran"
    head, line = js.read_text().rsplit("\n", 2)[:2]
    js.write_text(f"{head}\necho x >> {marker}; sleep 5\n{line}\n")
    first = sky_jobs("submit", str(js)).stdout.strip()
    again = sky_jobs("submit", str(js))  # a driver restarted while it runs
    assert first == again.stdout.strip() == "local:e3-ft-0123456789ab"
    assert "reattached to the local job" in again.stderr
    assert sky_jobs("status", first).stdout.strip() == "running"
    deadline = time.time() + 30
    while (status := sky_jobs("status", first).stdout.strip()) == "running":
        assert time.time() < deadline
        time.sleep(0.3)
    assert status == "failed"  # the jobscript's snakemake line fails outside a workflow
    assert marker.read_text() == "x\n" and fake_sky.calls() == []


def test_cancel_returns_at_once_and_the_job_is_cancelled(tmp_path, fake_sky, monkeypatch):
    fake_sky.seed({"job_id": 2, "job_name": "e3-ft-aa", "status": "RUNNING"})
    monkeypatch.setenv("FAKE_SKY_CANCEL_SECONDS", "3")  # longer than Snakemake waits (2 s)
    t0 = time.time()
    r = subprocess.run([str(PROFILE / "cancel"), "e3-ft-aa@2"], timeout=10)
    assert r.returncode == 0 and time.time() - t0 < 2
    deadline = time.time() + 20
    while fake_sky.jobs()[0]["status"] != "CANCELLED":
        assert time.time() < deadline, fake_sky.calls()
        time.sleep(0.2)
    assert fake_sky.calls("jobs", "cancel") == [["jobs", "cancel", "--yes", "2"]]


def test_cleanup_cancels_only_the_orphans(tmp_path, fake_sky):
    done = tmp_path / "results" / "runs" / "aaaaaaaaaaaa" / "done.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    label = lambda stage, run: {"e3-project": "e3", "e3-stage": stage, "e3-run": run}
    fake_sky.seed(
        # finished but still holding a slice: orphan
        {"job_id": 1, "job_name": "e3-ft-aaaaaaaaaaaa", "status": "RUNNING",
         "labels": label("finetune", "aaaaaaaaaaaa")},
        # not finished, a rerun reattaches: kept (no labels listed before a cluster is up)
        {"job_id": 2, "job_name": "e3-up-bbbbbbbbbbbb", "status": "PENDING", "labels": None},
        # over already, or another project's: not listed
        {"job_id": 3, "job_name": "e3-ft-cccccccccccc", "status": "SUCCEEDED",
         "labels": label("finetune", "cccccccccccc")},
        {"job_id": 4, "job_name": "other-job", "status": "RUNNING", "labels": {}},
        # the project's prefix but not one of its names: listed, never cancelled
        {"job_id": 5, "job_name": "e3-notebook", "status": "RUNNING", "labels": None},
    )  # fmt: skip
    dry = sky_cleanup("--dry-run", "--results", str(tmp_path / "results"))
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("1\te3-ft-aaaaaaaaaaaa\tRUNNING\torphan (finished: ")
    assert (
        lines[1]
        == "2\te3-up-bbbbbbbbbbbb\tPENDING\tkept (a rerun of the workflow reattaches to it)"
    )
    assert lines[2] == "5\te3-notebook\tRUNNING\tleft alone (not named e3-<ft|up|ens>-<id>)"
    assert lines[3] == "would cancel 1 managed job(s): 1" and len(lines) == 4
    assert fake_sky.calls("jobs", "cancel") == []
    real = sky_cleanup("--results", str(tmp_path / "results"))
    assert real.stdout.splitlines()[-1] == "cancelled 1 managed job(s): 1"
    statuses = [j["status"] for j in fake_sky.jobs()]
    assert statuses == ["CANCELLED", "PENDING", "SUCCEEDED", "RUNNING", "RUNNING"]


def test_cleanup_with_sweeps_finds_jobs_unknown_to_the_workflow(fake_sky):
    from e3lib import sweep

    plan = sweep.Catalog(["sweeps/demo.yaml"], "small", "sweeps").configured
    known = sorted(plan.runs)[0]
    label = lambda run: {"e3-project": "e3", "e3-stage": "finetune", "e3-run": run}
    fake_sky.seed(
        {"job_id": 1, "job_name": f"e3-ft-{known}", "status": "RUNNING", "labels": label(known)},
        {"job_id": 2, "job_name": "e3-ft-0000deadbeef", "status": "RUNNING",
         "labels": label("0000deadbeef")},
    )  # fmt: skip
    r = sky_cleanup("--dry-run", "--sweeps", "sweeps/demo.yaml", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"1\te3-ft-{known}\tRUNNING\tkept (a rerun of the workflow reattaches to it)",
        "2\te3-ft-0000deadbeef\tRUNNING\torphan (not in the plan of the given sweeps)",
        "would cancel 1 managed job(s): 2",
    ]


# ----------------------------------------------------------------------------- with Snakemake

TOY_SNAKEFILE = textwrap.dedent("""
    rule all:
        input: "out/summary.txt"

    # One training step per attempt; exits 4 (preempted) until it has two steps.
    rule train:
        output: "out/done.json"
        params: ckpt="ckpt"        # like results/checkpoints/{run}: not an output
        resources: tpu_type="v3-8", runtime=5
        shell:
            "python STAGE --status {output} --log logs/train.log -- sh -c '"
            "mkdir -p {params.ckpt} && echo step >> {params.ckpt}/steps && "
            "test $(wc -l < {params.ckpt}/steps) -ge 2 || exit 4'"

    # No accelerator: runs on this machine.
    rule summary:
        input: "out/done.json"
        output: "out/summary.txt"
        shell: "cp ckpt/steps {output}"
""")


@pytest.mark.slow
def test_a_preempted_job_is_recovered_by_skypilot_not_resubmitted(tmp_path, fake_sky):
    """snakemake --profile skypilot: the managed job exits 4 (preempted) once; SkyPilot's
    controller (the fake's) recovers it on exit code 4 and the rerun resumes from the
    checkpoint dir; Snakemake sees one job, launched once, that succeeds."""
    work = tmp_path / "wf"
    (work / "profiles").mkdir(parents=True)
    shutil.copytree(PROFILE, work / "profiles" / "skypilot")
    os.symlink("profiles/skypilot", work / "skypilot")
    stage = REPO / "workflow" / "scripts" / "stage.py"
    (work / "Snakefile").write_text(TOY_SNAKEFILE.replace("STAGE", str(stage)))
    env = {**os.environ, "HOME": str(tmp_path), "E3_SKY_STATE_DIR": str(work / ".sky-jobs")}
    env.pop("SNAKEMAKE_PROFILE", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "skypilot",
            "--latency-wait",
            "5",
            "--seconds-between-status-checks",
            "1",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert (work / "out" / "summary.txt").read_text() == "step\nstep\n", out[-4000:]
    assert json.loads((work / "out" / "done.json").read_text())["status"] == "ok"
    [launch] = fake_sky.calls("jobs", "launch")
    assert re.fullmatch(r"e3-train-job\d+", launch[4])  # a rule without wildcards: its job id
    [job] = fake_sky.jobs()
    assert job["status"] == "SUCCEEDED" and job["recovery_count"] == 1
    log = (work / "logs" / "train.log").read_text()
    assert "=== exit code 4" in log and "=== exit code 0" in log


def test_a_jobs_entry_from_its_labels_or_its_name():
    import sky_cleanup

    labelled = {"job_name": "x", "labels": {"e3-project": "e3", "e3-stage": "ensemble",
                                            "e3-run": "abc"}}  # fmt: skip
    assert sky_cleanup.entry_of(labelled, "e3") == ("ensemble", "abc")
    assert sky_cleanup.entry_of({"job_name": "lab-a-up-0123"}, "lab-a") == ("upstream", "0123")
    assert sky_cleanup.entry_of({"job_name": "e3-ft-0123"}, "lab-a") is None
    assert sky_cleanup.entry_of({"job_name": "e3-notebook"}, "e3") is None
    assert sky_cleanup.entry_of({"job_name": "e3-ft-"}, "e3") is None
