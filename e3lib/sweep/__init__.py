"""Sweep files → validated, expanded run configs, deep ensembles and a readable run index.

A sweep file (``sweeps/*.yaml``, schema ``workflow/schemas/sweep.schema.yaml``) declares

    base        run-config overrides shared by every run (sections of e3lib.config.DEFAULTS)
    axes        axis groups expanded as a product, in order. Each group is one of
                  {name: model.overlap, values: [0, 2, 4]}            one axis
                  {zip: {model.num_selected: [1, 2], finetune.lr: [...]}}   varied together
                  {cases: [{method: e3}, {method: tiling, model.noise_mult: 2}]}  explicit points
                and may carry ``when: {method: e3}`` (a conditional axis: it only expands the
                points that have these values; the others pass through unchanged)
    seeds       n (seeds 0..n-1) or a list of fine-tuning seeds
    ensembles   deep ensembles of independent runs: label, kind (downstream | upstream),
                runs (ensemble sizes, in member runs), ``of`` (which points), replicates
    reproduces  paper table / figure ids this sweep reproduces
    select      hyperparameter selection over some axes (``over``), by a validation metric:
                carried into index.json and applied by e3lib.aggregate.select_grid
    variants    ``small`` and/or ``paper`` overlays: base (merged), axes (replace),
                add_axes (appended), seeds, ensembles, select (replace)

Modules, by stage (each importable on its own; this package re-exports the public names):

    schema      the JSON schema, ``SweepError``, ``table_ids``
    load        reading a file, renamed fields, variant overlays (``VARIANTS``)
    expand      axes → points → resolved runs (``expand_doc``, ``load_sweep``, ``expand_sweeps``)
    ensembles   deep ensembles of runs: members, replicates, ids (``ENSEMBLE_KINDS``)
    plan        ``Sweep``, ``Plan``, index format, file paths, ``write_plan``
    catalog     lookups by id for the workflow (pure: writes nothing)
    guards      limits and checks against hanging or silently wrong input (``max_runs``)
    outputs     ``check_output_dirs``: results / reports / logs usable, refused at parse
    resources   ``job_resources`` per job for Snakemake, ``slurm_resources`` / ``srun_prefix``
                (Slurm tasks); ``check_fits`` of paper jobs
    cost        device-hours per job and sweep before launch; ``check_budget``
    cli         ``e3 expand``
"""

from e3lib.sweep.catalog import Catalog
from e3lib.sweep.cli import cli_expand
from e3lib.sweep.cost import check_budget, sweep_costs
from e3lib.sweep.ensembles import (
    ENSEMBLE_KINDS,
    ENSEMBLE_RUNS_AXIS,
    MIN_REPLICATES,
    ensemble_id,
    replicate_seeds,
)
from e3lib.sweep.expand import (
    SELECT_DEFAULTS,
    UNSELECTABLE_AXES,
    expand_doc,
    expand_sweeps,
    load_sweep,
)
from e3lib.sweep.guards import DEFAULT_MAX_RUNS
from e3lib.sweep.load import VARIANTS, read_reproduces
from e3lib.sweep.outputs import check_output_dirs
from e3lib.sweep.plan import (
    INDEX_FORMAT,
    RESULT_PREFIX,
    Plan,
    Sweep,
    config_path,
    config_text,
    ensemble_config_path,
    index_path,
    index_tsv,
    index_tsv_path,
    report_stamp_path,
    upstream_config_path,
    write_index,
    write_plan,
)
from e3lib.sweep.resources import (
    SIZE_RESOURCES,
    STAGES,
    check_fits,
    fit_problems,
    job_resources,
    slurm_resources,
    srun_prefix,
)
from e3lib.sweep.schema import SCHEMA_PATH, SweepError, check_schema, load_schema, table_ids

__all__ = [
    "Catalog",
    "cli_expand",
    "ENSEMBLE_KINDS",
    "ENSEMBLE_RUNS_AXIS",
    "ensemble_id",
    "MIN_REPLICATES",
    "replicate_seeds",
    "SELECT_DEFAULTS",
    "UNSELECTABLE_AXES",
    "expand_doc",
    "expand_sweeps",
    "load_sweep",
    "VARIANTS",
    "read_reproduces",
    "INDEX_FORMAT",
    "RESULT_PREFIX",
    "Plan",
    "Sweep",
    "config_path",
    "config_text",
    "ensemble_config_path",
    "index_path",
    "index_tsv",
    "index_tsv_path",
    "report_stamp_path",
    "upstream_config_path",
    "write_index",
    "write_plan",
    "SIZE_RESOURCES",
    "STAGES",
    "job_resources",
    "slurm_resources",
    "srun_prefix",
    "check_fits",
    "check_budget",
    "sweep_costs",
    "fit_problems",
    "SCHEMA_PATH",
    "SweepError",
    "check_schema",
    "load_schema",
    "table_ids",
    "DEFAULT_MAX_RUNS",
    "check_output_dirs",
]
