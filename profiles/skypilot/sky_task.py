"""The SkyPilot task of one Snakemake job (used by sky_jobs.py; no SkyPilot import).

A cluster-generic jobscript is one line, ``cd WORKDIR && PYTHON -m snakemake ARGS && exit 0
|| exit 1``, after a ``# properties = {...}`` header (rule, wildcards, resources, log). The
task runs the same Snakemake job on the cloud machines: ARGS with the paths that exist only
on this machine dropped (``--wait-for-files``, caches, the solver path) and the others made
relative to the synced workdir, where the remote Snakemake finds the Snakefile, the e3lib of
this checkout and (through the bucket mounts) the results.

Names: ``<project>-<stage>-<id>``, e.g. ``e3-ft-0123456789ab`` for ``finetune`` of run
0123456789ab (``up`` upstream, ``ens`` ensemble): the same run always gets the same name,
which is how a resubmission finds a job that is still alive.

Accelerators (settings from the environment, see ``Settings``): ``E3_SKY_ACCELERATOR=tpu``
(default) asks for the job's ``tpu_type`` resource as a TPU VM slice (``tpu-v3-32``);
a GPU model (``H100``) asks for the job's ``gpu`` count, ``H100:8`` per node over
``gpu / E3_SKY_GPUS_PER_NODE`` nodes. A job with neither (``tpu_type: none``, ``gpu: 0``)
runs on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass

import yaml

STAGE_ABBREV = {"finetune": "ft", "upstream": "up", "ensemble": "ens"}
ABBREV_STAGE = {v: k for k, v in STAGE_ABBREV.items()}
LOCAL_TPU_TYPES = ("none", "local", "")
# Options of the jobscript's Snakemake that name paths of this machine only (with their
# values, up to the next option).
LOCAL_ONLY_OPTIONS = ("--wait-for-files", "--runtime-source-cache-path", "--scheduler-solver-path")
REMOTE_WORKDIR = "~/sky_workdir"  # where SkyPilot syncs the workdir
EXIT_PREEMPTED = 4  # e3's preempted exit code (workflow/scripts/stage.py)
# TPU VM software per TPU generation (Cloud TPU's runtime versions).
TPU_RUNTIMES = {
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
TPU_RUNTIME_DEFAULT = "tpu-ubuntu2204-base"  # v2, v3, v4


class TaskError(ValueError):
    """A job that cannot become a SkyPilot task (named resource and value)."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Settings:
    """The profile's settings, from ``E3_SKY_*`` environment variables."""

    project: str = "e3"
    accelerator: str = "tpu"  # "tpu" or a GPU model
    gpus_per_node: int = 8
    spot: bool = True
    recovery: str = "EAGER_NEXT_REGION"
    max_restarts_on_errors: int = 0
    bucket: str = ""  # gs://bucket/prefix, s3://...: mounted for the results and logs
    mount_mode: str = "MOUNT"
    infra: str = ""
    tpu_runtime: str = ""
    setup: str = ""
    coordinator_port: int = 8476

    @classmethod
    def from_env(cls) -> Settings:
        project = _env("E3_SKY_PROJECT", "e3")
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,19}", project):
            raise TaskError(
                f"E3_SKY_PROJECT={project!r}: lowercase letters, digits and '-', starting "
                "with a letter, at most 20 (it begins every job name and label)"
            )
        return cls(
            project=project,
            accelerator=_env("E3_SKY_ACCELERATOR", "tpu"),
            gpus_per_node=int(_env("E3_SKY_GPUS_PER_NODE", "8")),
            spot=_env("E3_SKY_SPOT", "1") == "1",
            recovery=_env("E3_SKY_RECOVERY", "EAGER_NEXT_REGION"),
            max_restarts_on_errors=int(_env("E3_SKY_MAX_RESTARTS", "0")),
            bucket=_env("E3_SKY_BUCKET", "").rstrip("/"),
            mount_mode=_env("E3_SKY_MOUNT_MODE", "MOUNT"),
            infra=_env("E3_SKY_INFRA", ""),
            tpu_runtime=_env("E3_SKY_TPU_RUNTIME", ""),
            setup=_env("E3_SKY_SETUP", ""),
            coordinator_port=int(_env("E3_SKY_COORDINATOR_PORT", "8476")),
        )


@dataclass(frozen=True)
class Job:
    """What the jobscript says about its Snakemake job."""

    props: dict
    line: str  # the `cd ... && python -m snakemake ...` command

    @classmethod
    def read(cls, path: str) -> Job:
        with open(path) as f:
            text = f.read()
        m = re.search(r"^# properties = (\{.*\})$", text, re.M)
        if not m:
            raise TaskError(f"{path}: no '# properties = ...' line: not a Snakemake jobscript")
        line = next((ln for ln in text.splitlines() if " -m snakemake " in ln), None)
        if line is None:
            raise TaskError(f"{path}: no 'python -m snakemake' command")
        return cls(json.loads(m.group(1)), line)

    @property
    def stage(self) -> str:
        return self.props["rule"]

    @property
    def ident(self) -> str:
        """The run / upstream / ensemble id (the job's wildcard values; else its job id)."""
        values = [str(v) for v in (self.props.get("wildcards") or {}).values()]
        return "-".join(values) if values else f"job{self.props.get('jobid', 0)}"

    def name(self, project: str) -> str:
        stage = STAGE_ABBREV.get(self.stage, self.stage)
        return re.sub(r"[^a-z0-9-]+", "-", f"{project}-{stage}-{self.ident}".lower())

    @property
    def resources(self) -> dict:
        return self.props.get("resources") or {}


def accelerators(resources: dict, settings: Settings) -> tuple[str | None, int]:
    """(SkyPilot accelerators, num_nodes) of a job; (None, 1) for a job of this machine."""
    if settings.accelerator.lower() == "tpu":
        tpu = str(resources.get("tpu_type", "none")).strip()
        return (None, 1) if tpu.lower() in LOCAL_TPU_TYPES else (f"tpu-{tpu}", 1)
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus <= 0:
        return None, 1
    per_node = settings.gpus_per_node
    if gpus <= per_node:
        return f"{settings.accelerator}:{gpus}", 1
    if gpus % per_node:
        raise TaskError(
            f"resource gpu={gpus}: not a multiple of E3_SKY_GPUS_PER_NODE={per_node} "
            "(a multi-node job uses whole nodes)"
        )
    return f"{settings.accelerator}:{per_node}", gpus // per_node


def remote_args(line: str, workdir: str) -> list[str]:
    """The jobscript's Snakemake arguments for the synced workdir on the cloud machines."""
    tokens = shlex.split(line)
    start = tokens.index("snakemake") + 1
    end = tokens.index("&&", start) if "&&" in tokens[start:] else len(tokens)
    prefix = workdir.rstrip("/") + "/"
    args, skip = [], False
    for tok in tokens[start:end]:
        if tok.startswith("--"):
            skip = tok in LOCAL_ONLY_OPTIONS
        if skip:
            continue
        if tok == workdir.rstrip("/"):
            tok = "."
        elif tok.startswith(prefix):
            tok = tok[len(prefix) :]
        args.append(tok)
    return args


def mounts(job: Job, settings: Settings) -> dict:
    """The bucket folders mounted over the job's output and log roots (``results``, ``logs``
    or whatever the workflow's config names), each at ``<bucket>/<root>``. Without a
    bucket, outputs written on the cloud machines would never reach Snakemake: refused,
    unless ``E3_SKY_BUCKET=none`` says the machines share a filesystem at the workdir."""
    if not settings.bucket:
        raise TaskError(
            "E3_SKY_BUCKET is not set: the bucket (gs://BUCKET/PREFIX) that holds the "
            "results and logs of the cloud jobs (docs/launch.md); E3_SKY_BUCKET=none if "
            f"the machines share a filesystem at {REMOTE_WORKDIR}"
        )
    if settings.bucket == "none":
        return {}
    roots = set()
    for path in [*job.props.get("output", []), *job.props.get("log", [])]:
        first = path.split("/", 1)[0] if not os.path.isabs(path) else None
        if first is None:
            raise TaskError(f"output {path}: absolute paths cannot be mounted from the bucket")
        roots.add(first)
    return {
        f"{REMOTE_WORKDIR}/{r}": {"source": f"{settings.bucket}/{r}", "mode": settings.mount_mode}
        for r in sorted(roots)
    }


def setup_command(accel: str, settings: Settings) -> str:
    if settings.setup:
        return settings.setup
    jax = "jax[tpu]" if accel.startswith("tpu-") else "jax[cuda12]"
    return f"pip install -q -e '.[workflow]' '{jax}'"


def run_script(args: list[str], settings: Settings) -> str:
    """The task's `run`: SkyPilot's node variables → e3's jax.distributed start-up
    (e3lib/parallel/distributed.py), then the Snakemake job; the job's exit code is the
    stage command's (4 = preempted: recovered by SkyPilot), else Snakemake's."""
    snakemake = shlex.join(["python", "-m", "snakemake", *args])
    return "\n".join(
        [
            'export E3_EXIT_CODE_FILE="$(mktemp)"',
            'if [ "${SKYPILOT_NUM_NODES:-1}" -gt 1 ]; then',
            '  export E3_NUM_PROCESSES="$SKYPILOT_NUM_NODES" E3_PROCESS_ID="$SKYPILOT_NODE_RANK"',
            '  E3_COORDINATOR="$(printf %s "$SKYPILOT_NODE_IPS" | head -n 1)"',
            f'  export E3_COORDINATOR="$E3_COORDINATOR:{settings.coordinator_port}"',
            "fi",
            snakemake,
            "rc=$?",
            'stage_rc="$(cat "$E3_EXIT_CODE_FILE" 2>/dev/null)"',
            'if [ "$rc" -ne 0 ] && [ -n "$stage_rc" ] && [ "$stage_rc" -ne 0 ]; then',
            '  rc="$stage_rc"',
            "fi",
            'rm -f "$E3_EXIT_CODE_FILE"',
            'exit "$rc"',
            "",
        ]
    )


def task(job: Job, workdir: str, settings: Settings) -> dict:
    """The SkyPilot task (the YAML document) of a job; TaskError for a job of this machine."""
    accel, nodes = accelerators(job.resources, settings)
    if accel is None:
        raise TaskError(f"{job.stage} {job.ident}: no accelerator: runs on this machine")
    resources: dict = {
        "accelerators": accel,
        "use_spot": settings.spot,
        "job_recovery": {
            "strategy": settings.recovery,
            "max_restarts_on_errors": settings.max_restarts_on_errors,
            "recover_on_exit_codes": [EXIT_PREEMPTED],
        },
        "labels": {
            "e3-project": settings.project,
            "e3-stage": job.stage,
            "e3-run": job.ident,
        },
    }
    if accel.startswith("tpu-"):
        generation = accel[len("tpu-") :].split("-")[0]
        runtime = settings.tpu_runtime or TPU_RUNTIMES.get(generation, TPU_RUNTIME_DEFAULT)
        resources["accelerator_args"] = {"runtime_version": runtime}
    if settings.infra:
        resources["infra"] = settings.infra
    doc = {
        "name": job.name(settings.project),
        "workdir": workdir,
        "num_nodes": nodes,
        "resources": resources,
        "setup": setup_command(accel, settings),
        "run": run_script(remote_args(job.line, workdir), settings),
    }
    if m := mounts(job, settings):
        doc["file_mounts"] = m
    return doc


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as literal blocks, readable in the task file."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def to_yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False)
