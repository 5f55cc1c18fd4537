# Deep ensembles of independent runs (downstream: one upstream, several fine-tune seeds;
# upstream: one upstream per member). They combine the members' saved predictions.


rule ensemble:
    input:
        members=lambda wc: [
            f"{RESULTS}/runs/{m}/done.json" for m in ensemble_spec(wc.ens)["members"]
        ],
    output:
        done=f"{RESULTS}/ensembles/{{ens}}/done.json",
    log:
        f"{LOGS}/ensemble/{{ens}}.log",
    conda:
        "../../environment.yml"
    params:
        runs=lambda wc: [
            f"{RESULTS}/runs/{m}" for m in ensemble_spec(wc.ens)["members"]
        ],
        kind=lambda wc: ensemble_spec(wc.ens)["kind"],
        out=f"{RESULTS}/ensembles/{{ens}}",
    shell:
        "python workflow/scripts/stage.py --status {output.done} --log {log} --require-ok {input.members} "
        "--expect {params.out}/results.json {params.out}/predictions.npz -- "
        "python -m e3lib.cli ensemble --runs {params.runs} --kind {params.kind} --out {params.out}"
