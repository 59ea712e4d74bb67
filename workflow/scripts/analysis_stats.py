"""Workflow script: statistics of the study (summary.json and the CSV of each statistics table).

Input: ``runs`` (runs.csv). Params: ``metric``. Outputs: ``summary`` and one CSV per table of
``kdcore.analysis.stats.STAT_TABLES``, all in the folder of ``summary``.
"""

from pathlib import Path

from _common import setup

log = setup(snakemake)

from kdcore.analysis.stats import write_statistics  # noqa: E402
from kdcore.analysis.table import read_table  # noqa: E402

runs = read_table(snakemake.input.runs)
written = write_statistics(runs, Path(snakemake.output.summary).parent, snakemake.params.metric)
log.info("statistics of %d runs written: %s", len(runs), ", ".join(str(p) for p in written.values()))
