# kd-capacity: the paper's whole study as one DAG. See README.md, docs/config.md and docs/design.md.
from snakemake.utils import min_version, validate

min_version("9.0")


# Helpers only; the study config is read, checked and expanded below.
include: "workflow/rules/common.smk"


import kdcore.config as kdcore_config  # importable once common.smk has put the workflow's src/ first


# Snakemake reports a YAML syntax error without file or line: check the workflow's own config first.
configfile: kdcore_checked(kdcore_config.checked_yaml_file, "config.yaml")


# `--config key={...}` gives nested values as strings: type them before the schema sees them.
kdcore_config.coerce_override_strings(config)
# An overlay removes a method of config.yaml with `methods: {<name>: null}`.
kdcore_config.drop_removed_methods(config)
# The study's schema and cross-key rules: kdcore.config.validate_study_config, as `kdcore plan` and
# `kdcore status` check it.
check_study_schema()
validate(config, "src/kdcore/schemas/config.schema.yaml", set_default=True)
# Everything the DAG will train is checked now, before any job: every run config (by the engine's own
# resolve_config), what finished runs used, the data spec, and whether an existing dataset.pt fits the config.
check_before_jobs()


report: "workflow/report/workflow.rst"


include: "workflow/rules/data.smk"
include: "workflow/rules/gpu_jobs.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/analysis_common.smk"
include: "workflow/rules/analysis.smk"


# The default target must live in the main Snakefile (Snakemake ignores default targets of includes).
rule all:
    default_target: True
    input:
        study_targets,
