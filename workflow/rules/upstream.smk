# Upstream pretraining, one job per upstream id (shared by every run and sweep that
# fine-tunes from it). The job writes its config (configs/upstream/{up}.json: a run config
# whose upstream this is) and runs `e3 upstream` on it. The Orbax checkpoints live in the
# work dir, which is not an output: a retried job resumes from them.
# Under the slurm profile a job of several GPUs starts its command on each of its
# Slurm tasks through srun (params.launch; docs/scale.md).


rule upstream:
    output:
        done=f"{RESULTS}/upstream/{{up}}/done.json",
    log:
        f"{LOGS}/upstream/{{up}}.log",
    conda:
        "../../environment.yml"
    threads: config["job_threads"]
    resources:
        tpu_type=stage_resource("upstream", "tpu_type"),
        gpu=stage_resource("upstream", "gpus"),
        mem_mb=stage_resource("upstream", "mem_mb"),
        runtime=stage_resource("upstream", "runtime"),
        nodes=slurm_resource("upstream", "nodes"),
        tasks_per_node=slurm_resource("upstream", "tasks_per_node"),
        mpi=slurm_resource("upstream", "mpi"),
    params:
        launch=launcher,
        config=lambda wc: e3sweep.upstream_config_path(RESULTS, wc.up),
        config_text=lambda wc: e3sweep.config_text(upstream_run_config(wc.up)),
        workdir=f"{RESULTS}/upstream/{{up}}",
    shell:
        "{params.launch}python workflow/scripts/stage.py --log {log} --expect {output.done} "
        "--write {params.config} {params.config_text:q} -- "
        "python -m e3lib.cli upstream --config {params.config} --workdir {params.workdir} --done {output.done}"
