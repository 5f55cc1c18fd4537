"""A stand-in for the Slurm commands the Snakemake Slurm plugin and a job's ``srun`` call,
on one machine: ``install(bindir, state)`` puts ``sbatch``, ``srun``, ``sacct``, ``squeue``,
``scancel``, ``sinfo``, ``scontrol``, ``sacctmgr`` and ``sshare`` on a PATH directory.

- ``sbatch`` records its argv and job script (``--wrap`` or stdin) in ``state/calls.jsonl``,
  prints a job id and runs the script in the background as a batch step would: in the
  submit directory (``-D``), output to ``--output`` (``%j`` = job id), with the job's
  ``SLURM_*`` variables; nodes are named ``localhost`` (one node) or ``node[001-NNN]``.
- ``srun`` (inside a job: ``SLURM_JOB_ID`` set; its nodes are the ones ``sbatch`` gave
  the job, else ``SLURM_JOB_NODELIST``) records its argv and starts its tasks as
  local processes, block-distributed over the step's nodes, each with the variables Slurm
  gives a task (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
  ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_TASKS_PER_NODE``, ...) and no
  ``CUDA_VISIBLE_DEVICES`` (no GPUs here). Its exit code is the largest of its tasks';
  with ``--kill-on-bad-exit=1`` the first failing task kills the others.
- ``sacct`` / ``squeue`` report a job RUNNING until its script ends, then COMPLETED or
  FAILED; ``scancel`` records the call and stops the job.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (
    "sbatch",
    "srun",
    "sacct",
    "squeue",
    "scancel",
    "sinfo",
    "scontrol",
    "sacctmgr",
    "sshare",
)
# options of sbatch / srun that take a value in the next argument when written without "="
VALUE_OPTS = {
    "--job-name", "-J", "--output", "-o", "--comment", "-A", "--account", "-p",
    "--partition", "-t", "--time", "--mem", "--mem-per-cpu", "-D", "--chdir", "-C",
    "--constraint", "--clusters", "-N", "--nodes", "-n", "--ntasks", "-c",
    "--cpus-per-task", "--ntasks-per-node", "--gpus", "-G", "--gpus-per-node", "--qos",
    "--name", "--format", "--starttime", "--endtime", "--states",
}  # fmt: skip


def install(bindir: Path, state: Path) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        exe = bindir / name
        exe.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {name} "$@"\n')
        exe.chmod(0o755)


def calls(state: Path, command: str | None = None) -> list[dict]:
    path = state / "calls.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if command is None or r["command"] == command]


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Options (long names as given, value '' for flags) and the arguments after them."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if "=" in a:
            k, v = a.split("=", 1)
        elif a in VALUE_OPTS:
            k, v = a, argv[i + 1]
            i += 1
        elif re.fullmatch(r"-[nNcJ]\d+", a):  # -n1
            k, v = a[:2], a[2:]
        else:
            k, v = a, ""
        opts[k] = v
        i += 1
    return opts, argv[i:]


def get(opts: dict[str, str], *names: str, default: str | None = None) -> str | None:
    return next((opts[n] for n in names if n in opts), default)


def expand_hosts(hostlist: str) -> list[str]:
    """'node[001-003],x' -> ['node001', 'node002', 'node003', 'x']"""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,]+)", hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{n:0{len(lo)}d}")
    return hosts


def compress_hosts(hosts: list[str]) -> str:
    if len(hosts) == 1:
        return hosts[0]
    width = len(hosts[0]) - len("node")
    return f"node[{hosts[0][4:]}-{hosts[-1][4:]}]" if width else ",".join(hosts)


def node_names(n: int) -> list[str]:
    return ["localhost"] if n == 1 else [f"node{i:03d}" for i in range(1, n + 1)]


def tasks_per_node_var(per_node: int, nodes: int) -> str:
    return str(per_node) if nodes == 1 else f"{per_node}(x{nodes})"


def record(state: Path, row: dict) -> None:
    with open(state / "calls.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def sbatch(state: Path, argv: list[str]) -> int:
    opts, rest = parse(argv)
    script = opts.get("--wrap")
    if script is None:
        script = sys.stdin.read() if rest == ["/dev/stdin"] else Path(rest[0]).read_text()
    with open(state / "next_id", "a+") as counter:  # the plugin submits from two threads
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        job = int(counter.read() or 1001)
        counter.truncate(0)
        counter.write(str(job + 1))
    record(state, {"command": "sbatch", "argv": argv, "script": script, "job": job})
    nodes = int(get(opts, "--nodes", "-N", default="1"))
    per_node = get(opts, "--ntasks-per-node")
    ntasks = int(per_node) * nodes if per_node else int(get(opts, "--ntasks", "-n", default="1"))
    hosts = node_names(nodes)
    env = dict(
        os.environ,
        SLURM_JOB_ID=str(job),
        SLURM_JOBID=str(job),
        SLURM_JOB_NAME=get(opts, "--job-name", "-J", default="sbatch"),
        SLURM_JOB_NUM_NODES=str(nodes),
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NODELIST=compress_hosts(hosts),
        SLURM_NODELIST=compress_hosts(hosts),
        SLURM_NTASKS=str(ntasks),
        SLURM_NPROCS=str(ntasks),
        SLURM_SUBMIT_DIR=os.getcwd(),
        SLURM_SUBMIT_HOST="localhost",
        SLURMD_NODENAME=hosts[0],
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
    )
    if per_node:
        env["SLURM_NTASKS_PER_NODE"] = per_node
    if get(opts, "--cpus-per-task", "-c"):
        env["SLURM_CPUS_PER_TASK"] = get(opts, "--cpus-per-task", "-c")
    if get(opts, "--gpus", "-G"):
        env["SLURM_GPUS"] = get(opts, "--gpus", "-G")
    workdir = get(opts, "-D", "--chdir", default=os.getcwd())
    log = get(opts, "--output", "-o", default=f"slurm-{job}.out").replace("%j", str(job))
    (state / f"{job}.script").write_text(script)
    (state / f"{job}.nodes").write_text(env["SLURM_JOB_NODELIST"])
    with open(log, "w") as out:  # the batch step: runs the script, records its exit code
        proc = subprocess.Popen(
            [sys.executable, __file__, "_batch", str(job)],
            cwd=workdir,
            env=dict(env, FAKE_SLURM_DIR=str(state)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state / f"{job}.pid").write_text(str(proc.pid))
    (state / f"{job}.name").write_text(env["SLURM_JOB_NAME"])
    print(job)
    return 0


def batch(state: Path, job: str) -> int:
    rc = subprocess.call(["sh", "-c", (state / f"{job}.script").read_text()])
    (state / f"{job}.rc").write_text(str(rc))
    return rc


def job_state(state: Path, job: str) -> str:
    rc = state / f"{job}.rc"
    if rc.exists():
        return "COMPLETED" if rc.read_text().strip() == "0" else "FAILED"
    if (state / f"{job}.cancelled").exists():
        return "CANCELLED"
    return "RUNNING"


def status(state: Path, argv: list[str]) -> int:
    opts, _ = parse(argv)
    name = get(opts, "--name")
    if name is None:  # the plugin guessing the account: no earlier jobs
        return 0
    for f in sorted(state.glob("*.name")):
        if f.read_text() == name:
            print(f"{f.stem}|{job_state(state, f.stem)}")
    return 0


def scancel(state: Path, argv: list[str]) -> int:
    record(state, {"command": "scancel", "argv": argv})
    for job in (a for a in argv if a.isdigit()):
        (state / f"{job}.cancelled").touch()
        pid = state / f"{job}.pid"
        if pid.exists():
            try:
                os.killpg(int(pid.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
    return 0


def srun(state: Path, argv: list[str]) -> int:
    if "SLURM_JOB_ID" not in os.environ:
        print("srun: fake srun runs only inside a job (SLURM_JOB_ID)", file=sys.stderr)
        return 1
    opts, command = parse(argv)
    # the allocation's nodes, as slurmctld knows them (a job step's environment may lack them)
    known = state / f"{os.environ['SLURM_JOB_ID']}.nodes"
    job_nodes = known.read_text() if known.exists() else os.environ.get("SLURM_JOB_NODELIST")
    job_hosts = expand_hosts(job_nodes or "localhost")
    nodes = int(get(opts, "--nodes", "-N", default=str(len(job_hosts))))
    per_node = get(opts, "--ntasks-per-node")
    ntasks = (
        int(per_node) * nodes if per_node else int(get(opts, "--ntasks", "-n", default=str(nodes)))
    )
    per_node_n = -(-ntasks // nodes)
    hosts = job_hosts[:nodes]
    if len(hosts) < nodes:
        print(f"srun: {nodes} nodes asked, the job has {len(job_hosts)}", file=sys.stderr)
        return 1
    counter = state / f"{os.environ['SLURM_JOB_ID']}.steps"
    step = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(step + 1))
    record(state, {"command": "srun", "argv": argv, "job": os.environ["SLURM_JOB_ID"]})
    common = {
        "SLURM_STEP_ID": str(step),
        "SLURM_STEPID": str(step),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NPROCS": str(ntasks),
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_STEP_NODELIST": compress_hosts(hosts),
        "SLURM_NODELIST": compress_hosts(hosts),
        "SLURM_JOB_NODELIST": compress_hosts(job_hosts),
        "SLURM_TASKS_PER_NODE": tasks_per_node_var(per_node_n, nodes),
        "SLURM_STEP_TASKS_PER_NODE": tasks_per_node_var(per_node_n, nodes),
        "SLURM_DISTRIBUTION": "block",
        "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1",
        "SLURM_SRUN_COMM_HOST": "127.0.0.1",
    }
    for opt, var in (
        ("--cpus-per-task", "SLURM_CPUS_PER_TASK"),
        ("--ntasks-per-node", "SLURM_NTASKS_PER_NODE"),
        ("--gpus-per-node", "SLURM_GPUS_PER_NODE"),
    ):
        if opt in opts:
            common[var] = opts[opt]
    procs = []
    for rank in range(ntasks):
        node = rank // per_node_n
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env.update(
            common,
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank % per_node_n),
            SLURM_NODEID=str(node),
            SLURMD_NODENAME=hosts[node],
            SLURM_TOPOLOGY_ADDR=hosts[node],
        )
        procs.append(subprocess.Popen(command, env=env, start_new_session=True))
    kill_on_bad_exit = opts.get("--kill-on-bad-exit", "0" if "-K" not in opts else "1") in ("", "1")
    codes: dict[int, int] = {}
    while len(codes) < len(procs):
        for i, p in enumerate(procs):
            if i not in codes and p.poll() is not None:
                codes[i] = p.returncode
                if codes[i] != 0 and kill_on_bad_exit:
                    for q in procs:  # a task is its process group
                        if q.poll() is None:
                            os.killpg(q.pid, signal.SIGKILL)
        time.sleep(0.02)
    return max(c if c >= 0 else 128 - c for c in codes.values())


def main(argv: list[str]) -> int:
    name, args = argv[0], argv[1:]
    state = Path(os.environ["FAKE_SLURM_DIR"])
    if name == "sbatch":
        return sbatch(state, args)
    if name == "srun":
        return srun(state, args)
    if name in ("sacct", "squeue"):
        return status(state, args)
    if name == "scancel":
        return scancel(state, args)
    if name == "sinfo":
        print("PARTITION\ngpu*")
        return 0
    if name == "scontrol":
        if args[:2] == ["show", "config"]:
            print("MaxArraySize = 1001\nMinJobAge = 300")
            return 0
        return 1
    if name == "_batch":
        return batch(state, args[0])
    return 0  # sacctmgr, sshare: no accounts to check


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
