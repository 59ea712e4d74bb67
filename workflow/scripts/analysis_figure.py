"""Workflow script: one figure of the study (PDF and PNG) from the analysis tables.

Inputs: the CSV tables (in one folder, named by ``runs``). Params: ``figure`` (a name of
``kdcore.analysis.figures.FIGURES``), ``metric``. Outputs: ``pdf`` and ``png`` (same stem).
"""

from pathlib import Path

from _common import setup

log = setup(snakemake)

from kdcore.analysis.figures import write_figure  # noqa: E402

written = write_figure(
    snakemake.params.figure,
    Path(snakemake.input.runs).parent,
    snakemake.output.pdf,
    snakemake.params.metric,
)
if Path(snakemake.output.png) not in written:
    raise RuntimeError(f"figure written to {written}, the rule declares {snakemake.output.png}")
log.info("figure %s written", snakemake.params.figure)
