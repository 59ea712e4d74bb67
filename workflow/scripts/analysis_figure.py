"""Workflow script: one figure of the study (PDF and PNG) via kdcore.analysis.figures.write_figure.

Inputs (kdcore.analysis.outputs.FIGURES): ``runs`` and ``history`` (one CSV per part, read as one table),
``fidelity`` and statistics tables by name. Params: ``figure``, ``metric``. Outputs: ``pdf`` and ``png``
(the PNG beside the PDF, same stem, as kdcore.analysis.figures.save_figure writes it).
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.figures import write_figure

    inputs = dict(snakemake.input.items())  # name -> a file or a list of files (kdcore.analysis.table.read_inputs)
    write_figure(snakemake.params.figure, inputs, snakemake.output.pdf, snakemake.params.metric)
    log.info("figure %s written", snakemake.params.figure)


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
