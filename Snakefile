# E3 ablation workflow: sweep files → validated plan (in memory) → upstream / fine-tune +
# evaluate / ensemble jobs → sweep index + one dataset per sweep → HTML report.
# Parsing (and `snakemake -n`) writes nothing. See docs/workflow.md.
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
        report=f"{REPORTS}/index.html",
        shown=report_stamp(),
        plans=[plan_stamp(s) for s in CONFIGURED_SWEEPS],


include: "workflow/rules/plan.smk"
include: "workflow/rules/upstream.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,


# The locks this process holds, with its pid, so that a rerun after this process is killed
# can tell they are stale (e3lib.locks; docs/robustness.md).
onstart:
    held = getattr(workflow.persistence, "_lockfile", None)
    locks.record_driver(
        ".snakemake",
        held.values() if held else glob.glob(".snakemake/locks/*.lock"),
    )


onsuccess:
    locks.release_driver(".snakemake")
    index = os.path.abspath(f"{REPORTS}/index.html")
    if os.path.exists(index):
        print(f"Report: {index}")


onerror:
    locks.release_driver(".snakemake")
