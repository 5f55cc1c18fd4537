"""Slurm jobs of several GPUs: one task per GPU on whole nodes (e3lib.sweep.slurm_resources),
the sbatch lines and job steps the Snakemake Slurm plugin produces with profiles/slurm
(against the stand-in Slurm commands of tests/fake_slurm.py), the paper jobs of the real
workflow, and two tasks started the way srun starts them that train like one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import fake_slurm
import pytest
import yaml
from test_parallel import TINY_RUN, device_env, e3_run, records_by_key
from test_workflow import fresh_checkout

from e3lib.sweep import slurm_resources, srun_prefix

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STAGE = [sys.executable, str(REPO / "workflow" / "scripts" / "stage.py")]


# ----------------------------------------------------------------------------- resources


def test_one_task_per_gpu_on_whole_nodes():
    assert slurm_resources(0, 8) == {} and slurm_resources(1, 8) == {}  # one task, as today
    assert slurm_resources(2, 8) == {"nodes": 1, "tasks_per_node": 2, "mpi": "srun"}
    assert slurm_resources(8, 8) == {"nodes": 1, "tasks_per_node": 8, "mpi": "srun"}
    assert slurm_resources(16, 8) == {"nodes": 2, "tasks_per_node": 8, "mpi": "srun"}
    assert slurm_resources(128, 8) == {"nodes": 16, "tasks_per_node": 8, "mpi": "srun"}
    assert slurm_resources(128, 4) == {"nodes": 32, "tasks_per_node": 4, "mpi": "srun"}
    assert slurm_resources(128, 0) == {}  # not a Slurm run: one process per job
    with pytest.raises(ValueError, match="gpus 12 on nodes of slurm_gpus_per_node=8"):
        slurm_resources(12, 8)
    with pytest.raises(ValueError, match="tasks_per_node > 1"):
        slurm_resources(4, 1)


def test_srun_prefix_follows_the_jobs_final_resources():
    res = dict(slurm_resources(16, 8), gpu=16, cpus_per_task=8)
    assert srun_prefix(res) == (
        "srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=8 "
        "--kill-on-bad-exit=1 "
    )
    # a site's launcher (set-resources mpi) and a CPU job of several tasks
    assert srun_prefix({"mpi": "srun --mpi=pmix", "nodes": 1, "tasks_per_node": 2}) == (
        "srun --mpi=pmix --nodes=1 --ntasks-per-node=2 --kill-on-bad-exit=1 "
    )
    assert srun_prefix({"gpu": 1, "cpus_per_task": 8}) == ""


def test_every_rank_reports_the_jobs_outcome_process_zero_records(tmp_path):
    """A diverged run (exit 3) is a finished job: process 0 records it and every process
    exits 0, so srun's exit code (the largest of its tasks') is 0 too."""
    env = {k: v for k, v in os.environ.items() if k not in ("E3_PROCESS_ID",)}
    done, log = tmp_path / "done.json", tmp_path / "l.log"
    args = [*STAGE, "--status", str(done), "--log", str(log), "--", "sh", "-c", "exit 3"]
    r = subprocess.run(args, env=dict(env, SLURM_PROCID="1"), capture_output=True, text=True)
    assert r.returncode == 0 and not done.exists(), r.stderr
    r = subprocess.run(args, env=dict(env, SLURM_PROCID="0"), capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(done.read_text())["status"] == "diverged"
    # preempted: every process fails the job with the same code
    args[-1] = "exit 4"
    r = subprocess.run(args, env=dict(env, SLURM_PROCID="1"), capture_output=True, text=True)
    assert r.returncode == 4


# ----------------------------------------------------------------------------- the plugin

TOY_SNAKEFILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from e3lib import sweep as e3sweep

    GPUS = {{"one": 8, "two": 16, "sixteen": 128}}

    def slurm(key):  # as workflow/rules/common.smk slurm_resource
        return lambda wc: e3sweep.slurm_resources(
            GPUS[wc.n], config["slurm_gpus_per_node"]
        ).get(key)

    rule all:
        input: expand("out/{{n}}.done", n=GPUS)

    rule train:  # the finetune rule's resources and launcher; each task appends its ranks
        output: "out/{{n}}.done"
        resources:
            gpu=lambda wc: GPUS[wc.n], mem_mb=64000, runtime=60,
            nodes=slurm("nodes"), tasks_per_node=slurm("tasks_per_node"), mpi=slurm("mpi"),
        params: launch=lambda wc, resources: e3sweep.srun_prefix(resources)
        shell:
            "{{params.launch}}sh -c 'echo $SLURM_PROCID $SLURM_LOCALID $SLURM_NODEID "
            "$SLURM_NTASKS $SLURMD_NODENAME >> out/{{wildcards.n}}.ranks' && touch {{output}}"
""")


@pytest.fixture
def fake_slurm_bin(tmp_path, monkeypatch):
    state = tmp_path / "slurm-state"
    fake_slurm.install(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    for var in [v for v in os.environ if v.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        monkeypatch.delenv(var)
    return state


def test_plugin_submits_whole_nodes_and_srun_starts_every_task(tmp_path, fake_slurm_bin):
    """snakemake --profile slurm (the repository's profile) with jobs of 8, 16 and 128 GPUs:
    the sbatch line of each, the job script, and the srun step inside it, which starts
    one task per GPU; every rank runs once and the job succeeds once."""
    work = tmp_path / "wf"
    (work / "profiles").mkdir(parents=True)
    shutil.copytree(REPO / "profiles" / "slurm", work / "profiles" / "slurm")
    os.symlink("profiles/slurm", work / "slurm")
    (work / "Snakefile").write_text(TOY_SNAKEFILE.format(repo=str(REPO)))
    r = subprocess.run(
        [
            *SNAKEMAKE,
            "--profile",
            "slurm",
            "--latency-wait",
            "5",
            "--slurm-init-seconds-before-status-checks",
            "1",
        ],
        cwd=work,
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    subs = {
        c["argv"][c["argv"].index("--comment") + 1]: c
        for c in fake_slurm.calls(fake_slurm_bin, "sbatch")
    }
    assert sorted(subs) == [f"rule_train_wildcards_{n}" for n in ("one", "sixteen", "two")]
    steps = {c["job"]: c["argv"] for c in fake_slurm.calls(fake_slurm_bin, "srun")}
    print()
    for name, nodes, gpus in (("one", 1, 8), ("two", 2, 16), ("sixteen", 16, 128)):
        sub = subs[f"rule_train_wildcards_{name}"]
        argv = sub["argv"]
        print(f"sbatch {' '.join(argv[:-1])} --wrap=<job script>")
        print(f"  job script: {sub['script']}")
        print(f"  job step: srun {' '.join(steps[str(sub['job'])][:6])} ...")
        assert f"--nodes={nodes}" in argv and "--ntasks-per-node=8" in argv
        assert f"--gpus={gpus}" in argv and "--cpus-per-task=8" in argv
        assert "--mem" in argv and argv[argv.index("--mem") + 1] == "64000"  # per node
        assert not any(a.startswith(("--ntasks=", "--ntasks-per-gpu")) for a in argv)
        # the job script runs the jobstep executor, which runs the rule's command itself
        assert "--executor slurm-jobstep" in sub["script"] and "train:n=" + name in sub["script"]
        assert "srun" not in sub["script"]  # no `srun -n1` around the command
        assert steps[str(sub["job"])][:5] == [
            f"--nodes={nodes}",
            "--ntasks-per-node=8",
            "--gpus-per-node=8",
            "--cpus-per-task=8",
            "--kill-on-bad-exit=1",
        ]
        ranks = sorted(
            tuple(line.split())
            for line in (work / "out" / f"{name}.ranks").read_text().splitlines()
        )
        hosts = ["localhost"] if nodes == 1 else [f"node{i:03d}" for i in range(1, nodes + 1)]
        assert ranks == sorted(
            (str(p), str(p % 8), str(p // 8), str(gpus), hosts[p // 8]) for p in range(gpus)
        )
    assert len(steps) == 3  # one srun step per job


def test_a_failing_task_fails_the_job_and_stops_the_others(tmp_path, fake_slurm_bin):
    """--kill-on-bad-exit=1: one task exits 1 while the other would wait a minute; srun
    stops the other at once and fails (fake srun, as the job step runs it)."""
    prefix = srun_prefix({"mpi": "srun", "nodes": 1, "tasks_per_node": 2}).split()
    cmd = 'if [ "$SLURM_PROCID" = 1 ]; then exit 1; fi; sleep 60'
    r = subprocess.run(
        [*prefix, "sh", "-c", cmd],
        env=dict(os.environ, SLURM_JOB_ID="7"),
        capture_output=True,
        text=True,
        timeout=30,  # far less than the waiting task's minute
    )
    assert r.returncode != 0, r.stderr


# ----------------------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_paper_jobs_run_one_task_per_gpu_through_srun(tmp_path):
    """The real workflow, dry run with the slurm profile and the paper variant: fine-tunes
    of S/32 (2 GPUs), B/16 (16) and H/14 (128) and their pretrainings (8, 16, 64) get
    whole nodes of 8 GPUs, one task each, and their command starts with the srun line."""
    checkout = fresh_checkout(tmp_path / "clone")
    doc = {
        "title": "sizes",
        "reproduces": ["demo"],
        "base": {
            "method": "vmoe",
            "model": {"num_experts": 32, "num_selected": 2},
            "data": {"image_size": 384, "crop_to_patch": True},
            "finetune": {"batch_size": 512},
        },
        "axes": [{"name": "model.size", "values": ["S/32", "B/16", "H/14"]}],
        "seeds": 1,
    }
    (checkout / "sizes.yaml").write_text(yaml.safe_dump(doc))
    r = subprocess.run(
        [
            *SNAKEMAKE,
            "--profile",
            "slurm",
            "-n",
            "-p",
            "--config",
            "variant=paper",
            "sweeps=[sizes.yaml]",
        ],
        cwd=checkout,
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    jobs = [block for block in out.split("\nrule ") if block.startswith(("finetune:", "upstream:"))]
    seen = []
    for block in jobs:
        res = dict(
            kv.split("=", 1)
            for kv in block.split("resources: ", 1)[1].split("\n", 1)[0].split(", ")
        )
        gpus = int(res["gpu"])
        nodes, per_node = max(1, gpus // 8), min(gpus, 8)
        seen.append((block.split(":", 1)[0], gpus))
        assert (res["nodes"], res["tasks_per_node"], res["mpi"]) == (
            str(nodes),
            str(per_node),
            "srun",
        ), block
        assert (
            f"srun --nodes={nodes} --ntasks-per-node={per_node} --gpus-per-node={per_node} "
            "--cpus-per-task=8 --kill-on-bad-exit=1 python workflow/scripts/stage.py"
        ) in block, block
    assert sorted(seen) == sorted(
        [("finetune", 2), ("finetune", 16), ("finetune", 128)]
        + [("upstream", 8), ("upstream", 16), ("upstream", 64)]
    )


# ----------------------------------------------------------------------------- two tasks

JAX_PORTS = 61440  # JAX's Slurm coordinator port: SLURM_JOB_ID % 4096 + 61440


def port_free(port: int) -> bool:
    families = [(socket.AF_INET, "127.0.0.1")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))  # the coordinator binds [::]:port
    for family, host in families:
        try:
            with socket.socket(family) as s:
                s.bind((host, port))
        except OSError as err:
            if family == socket.AF_INET6 and err.errno == 99:  # no IPv6 here
                continue
            return False
    return True


def slurm_job_id() -> int:
    """A job id whose JAX coordinator port is free (searched from this process's id)."""
    start = os.getpid() % 4096
    for k in range(4096):
        offset = (start + k) % 4096
        if port_free(JAX_PORTS + offset):
            return 4096 * 100 + offset
    raise RuntimeError("no free port in 61440-65535")


def test_two_slurm_tasks_train_like_one_process_with_one_writer(tmp_path, fake_slurm_bin):
    """The finetune rule's command under `srun --nodes=1 --ntasks-per-node=2` (the tasks get
    SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NODELIST=localhost, ... and nothing else):
    jax.distributed finds both ranks and the coordinator itself, process 0 alone writes
    results and done.json, and the records equal one process's."""
    cfg1 = tmp_path / "single.json"
    cfg1.write_text(json.dumps(TINY_RUN))
    ref = e3_run(cfg1, tmp_path / "ref", tmp_path / "ck_ref", 1)  # meanwhile: the two tasks

    text = json.dumps(dict(TINY_RUN, mesh={"data": -1, "expert": 2}))
    cfg, out, ck = tmp_path / "cfg" / "run.json", tmp_path / "run", tmp_path / "ck"
    done, log = out / "done.json", tmp_path / "logs" / "run.log"
    launch = srun_prefix(slurm_resources(2, 8) | {"cpus_per_task": 1}).split()
    env = device_env(1, tmp_path / "jax_cache")
    for var in ("E3_COORDINATOR", "E3_NUM_PROCESSES", "E3_PROCESS_ID", "JAX_COORDINATOR_PORT"):
        env.pop(var, None)
    job = slurm_job_id()
    env.update(SLURM_JOB_ID=str(job), SLURM_JOB_NODELIST="localhost")
    command = [
        *launch,
        *STAGE,
        "--status",
        str(done),
        "--log",
        str(log),
        "--write",
        str(cfg),
        text,
        "--expect",
        *(str(out / f) for f in ("results.json", "predictions.npz", "curves.json")),
        "--",
        sys.executable,
        "-m",
        "e3lib.cli",
        "run",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--checkpoints",
        str(ck),
        "--log-mode",
        "plain",
    ]
    r = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]
    logs = "".join(p.read_text()[-2000:] for p in sorted(log.parent.iterdir()))
    assert r.returncode == 0, r.stderr[-2000:] + logs
    assert fake_slurm.calls(fake_slurm_bin, "srun")[0]["argv"][:2] == [
        "--nodes=1",
        "--ntasks-per-node=2",
    ]
    assert sorted(p.name for p in log.parent.iterdir()) == ["run.log", "run.log.p1"]
    assert json.loads(done.read_text())["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.json",
        "done.json",
        "predictions.npz",
        "progress.json",
        "results.json",
        "tb",
    ]
    res = json.loads((out / "results.json").read_text())
    want = json.loads((tmp_path / "ref" / "results.json").read_text())
    devices = res["provenance"]["devices"]
    assert (devices["num_processes"], devices["num_devices"], devices["writer"]) == (2, 2, 0)
    assert devices["mesh"] == {"data": 1, "expert": 2}
    got, exp = records_by_key(res), records_by_key(want)
    assert got.keys() == exp.keys()
    for k, v in exp.items():
        if v is not None:
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
