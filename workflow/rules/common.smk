# Shared set-up: config validation, the plan (sweep expansion, in memory, before any job
# exists), lookups by id, resources per job. Parsing writes nothing: every file a job
# needs is written by a rule (sweep indexes, plan.smk) or by the job itself (run configs,
# through stage.py). Every training rule shells out to the `e3` command through stage.py.
import glob
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The e3lib next to this workflow (a fresh clone works without installing the package).
sys.path.insert(0, workflow.basedir)
from e3lib import integrity, locks  # noqa: E402
from e3lib import sweep as e3sweep  # noqa: E402

validate(config, "../schemas/config.schema.yaml")

try:  # unusable output directories are refused before any job (writes nothing)
    e3sweep.check_output_dirs(config)
except ValueError as err:
    raise WorkflowError(f"invalid config: {err}") from None

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


def _lookup(what, *args):
    """A Catalog lookup; an invalid sweep or unknown id stops the workflow with its reason."""
    try:
        return what(*args)
    except e3sweep.SweepError as err:
        raise WorkflowError(f"invalid sweep: {err}") from None


# The plan of the configured sweeps, computed in memory (e3lib.sweep.Catalog).
PLANS = _lookup(
    e3sweep.Catalog,
    config["sweeps"],
    config["variant"],
    config["sweep_dir"],
    config.get("max_runs"),
    config["upstream_checkpoints"],
)
CONFIGURED_SWEEPS = list(PLANS.configured.sweeps)
# A paper job whose step does not fit the devices it requests is refused (docs/scale.md).
_lookup(e3sweep.check_fits, PLANS.configured, config["variant"])
# A sweep or job whose estimated device-hours exceed the budget is refused (docs/scale.md).
_lookup(
    e3sweep.check_budget,
    PLANS.configured,
    config["budget_device_hours"],
    config["budget_run_device_hours"],
)


wildcard_constraints:
    run=r"[0-9a-f]{12}",
    up=r"[0-9a-f]{12}",
    ens=r"[0-9a-f]{12}",
    fp=r"[0-9a-f]{16}",
    sweep=r"[A-Za-z0-9_]+",
    table="|".join(TABLE_IDS),


# --------------------------------------------------------------------------- lookups


def run_config(run):
    return _lookup(PLANS.run, run)


def upstream_of(run):
    return _lookup(PLANS.upstream_of, run)


def upstream_done(run):
    """The upstream stage's done file of a run; none when upstream.checkpoint names the
    checkpoint (`e3 run` reads it itself: no pretraining job)."""
    if run_config(run)["upstream"]["checkpoint"]:
        return []
    return f"{RESULTS}/upstream/{upstream_of(run)}/done.json"


def upstream_arg(run):
    """`e3 run`'s --upstream option of a run ('' when it has no upstream stage)."""
    done = upstream_done(run)
    return f"--upstream {os.path.dirname(done)}" if done else ""


def upstream_run_config(up):
    return _lookup(PLANS.upstream_config, up)


def ensemble_spec(ens):
    return _lookup(PLANS.ensemble, ens)


def sweep_of(name):
    return _lookup(PLANS.sweep, name)


def sweeps_for_table(table):
    """Sweeps reproducing `table`: the configured ones, else every file in sweep_dir."""
    return _lookup(PLANS.sweeps_for_table, table)


def entry_done(entry):
    """The done.json of an index entry (its `done` path, re-rooted under RESULTS)."""
    return f"{RESULTS}/{entry['done'].split('/', 1)[1]}"


def plan_stamp(name):
    """The plan stamp of a sweep: a new fingerprint (new entries) rewrites its index."""
    return f"{RESULTS}/sweeps/{name}/plan/{sweep_of(name).fingerprint()}"


def dataset_path(name):
    return f"{RESULTS}/sweeps/{name}/dataset.nc"


def report_stamp():
    """The report's stamp of the configured sweeps' datasets (e3lib.sweep.report_stamp_path):
    missing when the report shows another set, so `all` renders it again, and Snakemake
    schedules every job whose output the new datasets still lack."""
    return e3sweep.report_stamp_path(
        REPORTS, [dataset_path(s) for s in CONFIGURED_SWEEPS]
    )


# --------------------------------------------------------------------------- start-up checks
# Only in the main Snakemake process (job processes on other hosts never touch locks or
# results here), before Snakemake locks the directory and builds the DAG:
#   - locks left by a driver that was killed on this host are removed (e3lib.locks);
#   - every finished entry of the configured sweeps, and each sweep's dataset, is checked
#     against the sizes (`--config verify=deep`: and SHA-256) recorded in its done file
#     (e3lib.integrity); a damaged one is set aside (its done file renamed), so this very
#     run recomputes it; a dataset built from an entry whose done file is gone is rebuilt
#     (the entry with it). A dry run only lists.
if workflow.is_main_process:
    _dry = workflow.output_settings.dryrun
    for _msg in locks.clear_stale(".snakemake", dry_run=_dry):
        print(_msg, file=sys.stderr)
    for _s in CONFIGURED_SWEEPS:
        for _msg in integrity.screen_sweep(
            sorted({entry_done(e) for e in sweep_of(_s).entries}),
            f"{RESULTS}/sweeps/{_s}/dataset.done.json",
            [dataset_path(_s), f"{REPORTS}/index.html"]
            + [
                f"{REPORTS}/{t}.{ext}"
                for t in sweep_of(_s).reproduces
                for ext in ("html", "md", "tex")
            ],
            dry_run=_dry,
            deep=config["verify"] == "deep",
        ):
            print(_msg, file=sys.stderr)


# --------------------------------------------------------------------------- resources


def stage_resource(stage, key):
    """A resource of an upstream/finetune job, from its run config, scaled by attempt."""

    def get(wildcards, attempt):
        if stage == "upstream":
            cfg = upstream_run_config(wildcards.up)
        else:
            cfg = run_config(wildcards.run)
        return e3sweep.job_resources(cfg, stage, attempt)[key]

    return get


def slurm_resource(stage, key):
    """nodes / tasks_per_node / mpi of a job of several GPUs when jobs run as Slurm tasks
    (config slurm_gpus_per_node > 0); None (unset) otherwise."""

    def get(wildcards, attempt):
        gpus = stage_resource(stage, "gpus")(wildcards, attempt)
        return e3sweep.slurm_resources(gpus, config["slurm_gpus_per_node"]).get(key)

    return get


def launcher(wildcards, resources):
    """The job command's prefix: `srun ...` for a job of several Slurm tasks, else ''."""
    return e3sweep.srun_prefix(resources)
