"""Workflow script: one statistics table of the study (CSV) via kdcore.analysis.summary.write_stat_table.

Inputs: ``runs`` (the runs.csv of each part, kdcore.analysis.outputs.STAT_TABLES). Params: ``table`` (a
name of STAT_TABLES), ``metric``, ``min_effect_pp`` (analysis.min_effect_pp: the a priori design figures of
the comparisons and the moderation test). Output: ``table``.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.summary import write_stat_table

    p = snakemake.params
    table = write_stat_table(p.table, list(snakemake.input.runs), snakemake.output.table, p.metric, p.min_effect_pp)
    log.info("%s: %d rows", p.table, len(table))


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
