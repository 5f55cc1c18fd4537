# Fine-tuning and evaluation of one run: one `e3 run` job (it evaluates right after
# training, in the same process, so the trained weights never leave the job). The job
# first writes its resolved config (configs/{run}.json, from the in-memory plan, only if
# changed) and then runs `e3 run` on it. Outputs: results.json + predictions.npz +
# curves.json (the loss history; written by e3 run) and done.json (its status, written by
# stage.py: "ok" or "diverged"). Only
# done.json is declared: a diverged run has no results.json yet is a finished job.
# Checkpoints are in params, not outputs, so a retried (e.g. preempted, exit 4) job resumes.
# A run whose config sets upstream.checkpoint has no upstream input: `e3 run` reads that
# checkpoint itself, and no pretraining job is scheduled (docs/checkpoints.md).
# A job of several GPUs under the slurm profile runs one Slurm task per GPU: srun
# (params.launch, from its resources) starts the command on every task (docs/scale.md).


rule finetune:
    input:
        upstream=lambda wc: upstream_done(wc.run),
    output:
        done=f"{RESULTS}/runs/{{run}}/done.json",
    log:
        f"{LOGS}/finetune/{{run}}.log",
    conda:
        "../../environment.yml"
    threads: config["job_threads"]
    resources:
        tpu_type=stage_resource("finetune", "tpu_type"),
        gpu=stage_resource("finetune", "gpus"),
        mem_mb=stage_resource("finetune", "mem_mb"),
        runtime=stage_resource("finetune", "runtime"),
        nodes=slurm_resource("finetune", "nodes"),
        tasks_per_node=slurm_resource("finetune", "tasks_per_node"),
        mpi=slurm_resource("finetune", "mpi"),
    params:
        launch=launcher,
        config=lambda wc: e3sweep.config_path(RESULTS, wc.run),
        config_text=lambda wc: e3sweep.config_text(run_config(wc.run)),
        out=f"{RESULTS}/runs/{{run}}",
        checkpoints=f"{RESULTS}/checkpoints/{{run}}",
        upstream=lambda wc: upstream_arg(wc.run),
    shell:
        "{params.launch}python workflow/scripts/stage.py --status {output.done} --log {log} "
        "--write {params.config} {params.config_text:q} "
        "--expect {params.out}/results.json {params.out}/predictions.npz {params.out}/curves.json -- "
        "python -m e3lib.cli run --config {params.config} {params.upstream} --out {params.out} "
        "--checkpoints {params.checkpoints} --log-mode plain"
