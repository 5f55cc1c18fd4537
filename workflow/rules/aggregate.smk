# All entries of a sweep → one xarray Dataset (netCDF). Missing or failed entries are
# counted in the dataset by `e3 aggregate`, never dropped silently.


localrules:
    aggregate,


rule aggregate:
    input:
        index=f"{RESULTS}/sweeps/{{sweep}}/index.json",
        status=f"{RESULTS}/sweeps/{{sweep}}/status.json",
    output:
        dataset=report(
            f"{RESULTS}/sweeps/{{sweep}}/dataset.nc",
            caption="../report/dataset.rst",
            category="Datasets",
            labels={"sweep": "{sweep}"},
        ),
    params:
        results=lambda wc, input: str(Path(input.index).parents[2]),
    log:
        f"{LOGS}/aggregate/{{sweep}}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m e3lib.cli aggregate --index {input.index} --results-root {params.results} "
        "--out {output.dataset} > {log} 2>&1"
