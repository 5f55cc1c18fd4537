# Shared set-up: config validation, sweep expansion (before any job exists), lookups by id,
# resources per job. Every rule shells out to the `e3` command through stage.py.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The e3lib next to this workflow (a fresh clone works without installing the package).
sys.path.insert(0, workflow.basedir)
from e3lib import sweep as e3sweep  # noqa: E402


validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results"]
REPORTS = config["reports"]
LOGS = config["logs"]
# Jobs run `python -m e3lib.cli ...` from the repo root with the Python that runs Snakemake
# (its environment first on PATH), so the e3lib of this checkout is the one used.
envvars:
    "PATH",


_path = os.environ["PATH"]
os.environ.update(PATH=os.pathsep.join([os.path.dirname(sys.executable), _path]))
TABLE_IDS = e3sweep.table_ids()


def _expand(files):
    try:
        plan = e3sweep.expand_sweeps(files, config["variant"])
    except e3sweep.SweepError as err:
        raise WorkflowError(f"invalid sweep: {err}") from None
    e3sweep.write_plan(plan, RESULTS)
    return plan


PLAN = _expand(config["sweeps"])
CONFIGURED_SWEEPS = list(PLAN.sweeps)


wildcard_constraints:
    run=r"[0-9a-f]{12}",
    up=r"[0-9a-f]{12}",
    ens=r"[0-9a-f]{12}",
    sweep=r"[A-Za-z0-9_]+",
    table="|".join(TABLE_IDS),


# --------------------------------------------------------------------------- lookups
# In-memory plan first; configs on disk (written at expansion) for jobs whose sweep was
# not expanded in this process (remote jobs, lazily added table sweeps).


def run_config(run):
    if run in PLAN.runs:
        return PLAN.runs[run]
    with open(e3sweep.config_path(RESULTS, run)) as f:
        return json.load(f)


def upstream_of(run):
    up = PLAN.run_upstream.get(run)
    return up if up is not None else e3sweep.upstream_id(run_config(run))


def upstream_run_config(up):
    if up in PLAN.upstreams:
        return PLAN.runs[PLAN.upstreams[up]]
    with open(e3sweep.upstream_config_path(RESULTS, up)) as f:
        return json.load(f)


def ensemble_spec(ens):
    if ens in PLAN.ensembles:
        return PLAN.ensembles[ens]
    with open(e3sweep.ensemble_config_path(RESULTS, ens)) as f:
        return json.load(f)


def sweep_of(name):
    if name not in PLAN.sweeps:
        raise WorkflowError(
            f"sweep {name!r} is not configured; configured: {sorted(PLAN.sweeps)} "
            f"(add it with --config sweeps='[...]')")
    return PLAN.sweeps[name]


def sweeps_for_table(table):
    """Sweeps reproducing `table`: the configured ones, else every file in sweep_dir."""
    names = [s.name for s in PLAN.sweeps.values() if table in s.reproduces]
    if names:
        return names
    files = [str(p) for p in sorted(Path(config["sweep_dir"]).glob("*.y*ml"))
             if table in e3sweep.read_reproduces(p)]
    if not files:
        raise WorkflowError(f"no sweep reproduces {table}; sweep files are in "
                            f"{config['sweep_dir']}/")
    added = _expand([f for f in files])
    for name, sweep in added.sweeps.items():
        if name not in PLAN.sweeps:
            PLAN.add(sweep)
    return list(added.sweeps)


def entry_done(entry):
    kind = "runs" if entry["kind"] == "run" else "ensembles"
    return f"{RESULTS}/{kind}/{entry['id']}/done.json"


def dataset_path(name):
    return f"{RESULTS}/sweeps/{name}/dataset.nc"


# --------------------------------------------------------------------------- resources


def stage_resource(stage, key):
    """A resource of an upstream/finetune job, from its run config, scaled by attempt."""

    def get(wildcards, attempt):
        cfg = upstream_run_config(wildcards.up) if stage == "upstream" else run_config(wildcards.run)
        return e3sweep.job_resources(cfg, stage, attempt)[key]

    return get
