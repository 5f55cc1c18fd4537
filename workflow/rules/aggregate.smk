# All entries of a sweep → one xarray Dataset (netCDF). Inputs: the sweep's index and the
# done.json of every entry (runs and deep ensembles; each entry's `done` path in the
# index), whose status ("ok", "diverged", "member_failed") `e3 aggregate` records. Missing
# or failed entries are counted in the dataset, never dropped silently. Every entry's files
# are checked against the checksums in its done.json first (a damaged one is set aside and
# the job fails: rerunning the same command recomputes it); dataset.done.json records the
# dataset's own checksum. curves.nc holds the training curves of the sweep's runs and
# their upstreams (each one's curves.json; e3lib.aggregate.curves).


localrules:
    aggregate,


rule aggregate:
    input:
        index=f"{RESULTS}/sweeps/{{sweep}}/index.json",
        done=lambda wc: sorted({entry_done(e) for e in sweep_of(wc.sweep).entries}),
    output:
        dataset=report(
            f"{RESULTS}/sweeps/{{sweep}}/dataset.nc",
            caption="../report/dataset.rst",
            category="Datasets",
            labels={"sweep": "{sweep}"},
        ),
        done=f"{RESULTS}/sweeps/{{sweep}}/dataset.done.json",
        curves=f"{RESULTS}/sweeps/{{sweep}}/curves.nc",
    log:
        f"{LOGS}/aggregate/{{sweep}}.log",
    conda:
        "../../environment.yml"
    params:
        results=lambda wc, input: str(Path(input.index).parents[2]),
    shell:
        "python -m e3lib.cli aggregate --index {input.index} --results-root {params.results} "
        "--out {output.dataset} --curves {output.curves} > {log} 2>&1"
