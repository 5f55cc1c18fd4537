# HTML report: every table and figure of the configured sweeps (reports/index.html, with
# the status of each sweep's jobs: e3lib.report.status), or one paper table
# (reports/{table}.html) from only the sweeps that reproduce it.
# Snakemake leaves an output alone while its inputs are missing (it takes them for
# deleted intermediates), so the report also writes a stamp named by the datasets it
# shows (reports/.rendered/{hash}; the others are removed). `all` asks for the stamp of
# the configured sweeps: running another set of sweeps into the same results finds it
# missing, renders the report again and schedules what those sweeps still need.


localrules:
    report,
    report_table,


rule report:
    input:
        datasets=[dataset_path(s) for s in CONFIGURED_SWEEPS],
        # read beside each dataset: the training-curves page of each sweep
        curves=[f"{RESULTS}/sweeps/{s}/curves.nc" for s in CONFIGURED_SWEEPS],
    output:
        index=report(
            f"{REPORTS}/index.html",
            caption="../report/index.rst",
            category="Report",
            labels={"page": "index"},
        ),
        figures=report(
            directory(f"{REPORTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
        shown=report_stamp(),
    log:
        f"{LOGS}/report/index.log",
    conda:
        "../../environment.yml"
    params:
        reports=lambda wc, output: os.path.dirname(output[0]) or ".",
        stamps=lambda wc, output: os.path.dirname(output.shown),
        logs=LOGS,  # the index links the logs of failed jobs
    shell:
        "python -m e3lib.cli report --datasets {input.datasets} --out {params.reports} --logs {params.logs} > {log} 2>&1 "
        "&& mkdir -p {output.figures} && rm -f {params.stamps}/* "
        "&& printf '%s\\n' {input.datasets} > {output.shown}"


rule report_table:
    input:
        datasets=lambda wc: [dataset_path(s) for s in sweeps_for_table(wc.table)],
    output:
        html=report(
            f"{REPORTS}/{{table}}.html",
            caption="../report/table.rst",
            category="Paper tables",
            labels={"table": "{table}"},
        ),
        md=f"{REPORTS}/{{table}}.md",
        tex=f"{REPORTS}/{{table}}.tex",
    log:
        f"{LOGS}/report/{{table}}.log",
    conda:
        "../../environment.yml"
    params:
        reports=lambda wc, output: os.path.dirname(output[0]) or ".",
    shell:
        "python -m e3lib.cli report --datasets {input.datasets} --out {params.reports} --only {wildcards.table} "
        "> {log} 2>&1"
