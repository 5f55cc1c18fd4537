# The files of the plan that jobs read, written by jobs (never while Snakemake parses):
# a sweep's index.json + index.tsv (read by `aggregate`). The index is rewritten, and the
# sweep's dataset and report with it, when
#   - its sweep file is newer than it (an edited sweep: seeds, axes, ensembles), or
#   - the plan's fingerprint changed (e.g. new e3lib defaults) and the target is the
#     default one (`all` takes every configured sweep's stamp plan/{fp}: a missing stamp
#     of a new fingerprint makes its rule run, and the index follows).
# An unchanged sweep leaves both, and everything downstream of them, as they are.


localrules:
    sweep_plan,
    sweep_index,


rule sweep_plan:
    output:
        stamp=f"{RESULTS}/sweeps/{{sweep}}/plan/{{fp}}",
    log:
        f"{LOGS}/plan/{{sweep}}.{{fp}}.log",
    run:
        e3sweep.plan.write_text_logged(output.stamp, f"{wildcards.fp}\n", log[0])


rule sweep_index:
    input:
        sweep=lambda wc: sweep_of(wc.sweep).file,
        stamp=lambda wc: plan_stamp(wc.sweep),
    output:
        index=f"{RESULTS}/sweeps/{{sweep}}/index.json",
        tsv=f"{RESULTS}/sweeps/{{sweep}}/index.tsv",
    log:
        f"{LOGS}/plan/{{sweep}}.index.log",
    run:
        e3sweep.plan.write_index_logged(
            sweep_of(wildcards.sweep), output.index, output.tsv, input.stamp, log[0]
        )
