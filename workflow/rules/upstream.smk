# Upstream pretraining, one job per upstream id (shared by every run and sweep that
# fine-tunes from it). The Orbax checkpoints live in the work dir, which is not an
# output: a retried job resumes from them.


rule upstream:
    output:
        done=f"{RESULTS}/upstream/{{up}}/done.json",
    params:
        config=e3sweep.upstream_config_path(RESULTS, "{up}"),
        workdir=f"{RESULTS}/upstream/{{up}}",
    log:
        f"{LOGS}/upstream/{{up}}.log",
    threads: config["job_threads"]
    resources:
        tpu_type=stage_resource("upstream", "tpu_type"),
        gpu=stage_resource("upstream", "gpus"),
        mem_mb=stage_resource("upstream", "mem_mb"),
        runtime=stage_resource("upstream", "runtime"),
    conda:
        "../../environment.yml"
    shell:
        "python workflow/scripts/stage.py --log {log} --expect {output.done} -- "
        "python -m e3lib.cli upstream --config {params.config} --workdir {params.workdir} --done {output.done}"
