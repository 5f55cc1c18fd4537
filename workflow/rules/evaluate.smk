# Evaluation happens inside each `e3 run` job (finetune.smk). This stage checks that every
# entry of a sweep (runs and deep ensembles) has finished and records their statuses in
# one file: a sweep whose runs diverged still aggregates, with the failures counted.


rule evaluate:
    input:
        index=f"{RESULTS}/sweeps/{{sweep}}/index.json",
        done=lambda wc: sorted({entry_done(e) for e in sweep_of(wc.sweep).entries}),
    output:
        status=f"{RESULTS}/sweeps/{{sweep}}/status.json",
    params:
        results=lambda wc, input: str(Path(input.index).parents[2]),
    log:
        f"{LOGS}/evaluate/{{sweep}}.log",
    conda:
        "../../environment.yml"
    shell:
        "python workflow/scripts/sweep_status.py --index {input.index} "
        "--results-root {params.results} --out {output.status} > {log} 2>&1"
