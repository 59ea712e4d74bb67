# kd-capacity: the paper's whole study as one DAG. See README.md, docs/config.md and docs/design.md.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "src/kdcore/schemas/config.schema.yaml", set_default=True)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/analysis_common.smk"
include: "workflow/rules/analysis.smk"


# The default target must live in the main Snakefile (Snakemake ignores default targets of includes).
rule all:
    default_target: True
    input:
        study_targets,
