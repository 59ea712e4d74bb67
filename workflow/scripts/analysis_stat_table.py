"""Workflow script: one statistics table of the study (CSV) from the run tables of the parts it reads.

Inputs: ``runs`` (the runs.csv of each part, kdcore.analysis.outputs.STAT_TABLES). Params: ``table`` (a
name of STAT_TABLES), ``metric``. Output: ``table``.
"""

from _common import setup

log = setup(snakemake)

from kdcore.analysis import stats  # noqa: E402
from kdcore.analysis.table import read_tables, write_table  # noqa: E402

# the same calls as stats.write_statistics makes for the whole study
STAT_FUNCTIONS = {
    "comparisons": stats.kd_comparisons,
    "selection": lambda runs, metric: stats.selection_table(runs),
    "stem_ablation": stats.stem_ablation,
    "clip_ablation": stats.clip_ablation,
}

runs = read_tables(snakemake.input.runs)
table = STAT_FUNCTIONS[snakemake.params.table](runs, snakemake.params.metric)
write_table(table, snakemake.output.table)
log.info("%s: %d rows from %d runs", snakemake.params.table, len(table), len(runs))
