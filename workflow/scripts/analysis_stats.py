"""Workflow script: statistics of the whole study (summary.json and the per-cell table cells.csv).

Input: ``runs`` (the whole study's runs.csv). Params: ``metric``, ``min_effect_pp`` (analysis.min_effect_pp,
for the a priori design figures). Outputs: ``summary``, ``cells``.
"""

from _common import setup

log = setup(snakemake)

from kdcore.analysis import stats  # noqa: E402
from kdcore.analysis.table import read_table, write_table  # noqa: E402
from kdcore.atomic import atomic_write_json  # noqa: E402

runs = read_table(snakemake.input.runs)
metric = snakemake.params.metric
cells = stats.cell_summary(runs, metric)
write_table(cells, snakemake.output.cells)
summary = stats.build_summary(runs, metric, {"cells": cells}, snakemake.params.min_effect_pp)
atomic_write_json(snakemake.output.summary, summary)
for note in summary["notes"]:
    log.warning("%s", note)
log.info("statistics of %d runs written", len(runs))
