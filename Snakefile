# E3 ablation workflow: sweep files → validated runs → upstream / fine-tune+evaluate /
# ensemble jobs → one dataset per sweep → HTML report. See docs/workflow.md.
#
#   snakemake --cores 2                                   # the demo (sweeps/demo.yaml)
#   snakemake --cores 2 reports/table3.html               # one paper table (small variant)
#   snakemake --profile tpu --config variant=paper sweeps='[sweeps/table3_overlap.yaml]'
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


rule all:
    default_target: True
    input:
        f"{REPORTS}/index.html",


include: "workflow/rules/upstream.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    evaluate,


onsuccess:
    index = os.path.abspath(f"{REPORTS}/index.html")
    if os.path.exists(index):
        print(f"Report: {index}")
