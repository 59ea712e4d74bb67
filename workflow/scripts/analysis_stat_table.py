"""Workflow script: one statistics table of the study (CSV) from the run tables of the parts it reads.

Inputs: ``runs`` (the runs.csv of each part, kdcore.analysis.outputs.STAT_TABLES). Params: ``table`` (a
name of STAT_TABLES), ``metric``, ``min_effect_pp`` (analysis.min_effect_pp: the a priori design figures of
the comparisons and the moderation test). Output: ``table``.
"""

from _common import setup

log = setup(snakemake)

from kdcore.analysis import stats  # noqa: E402
from kdcore.analysis.moderation import moderation_table  # noqa: E402
from kdcore.analysis.table import read_tables, write_table  # noqa: E402

min_effect_pp = snakemake.params.min_effect_pp

# the same calls as stats.write_statistics makes for the whole study
STAT_FUNCTIONS = {
    "comparisons": lambda runs, metric: stats.kd_comparisons(runs, metric, min_effect_pp=min_effect_pp),
    "moderation": lambda runs, metric: moderation_table(runs, metric, min_effect_pp),
    "selection": lambda runs, metric: stats.selection_table(runs),
    "stem_ablation": stats.stem_ablation,
    "clip_ablation": stats.clip_ablation,
}

runs = read_tables(snakemake.input.runs)
table = STAT_FUNCTIONS[snakemake.params.table](runs, snakemake.params.metric)
write_table(table, snakemake.output.table)
log.info("%s: %d rows from %d runs", snakemake.params.table, len(table), len(runs))
