"""Workflow script: one LaTeX table of the study (booktabs) via kdcore.analysis.latex.write_tex_table.

Inputs (kdcore.analysis.outputs.TEX_TABLES): ``runs`` (one CSV per part, read as one table), ``fidelity``
and statistics tables by name. Params: ``table``, ``metric``. Output: ``tex``.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.latex import write_tex_table

    inputs = dict(snakemake.input.items())  # name -> a file or a list of files (kdcore.analysis.table.read_inputs)
    write_tex_table(snakemake.params.table, inputs, snakemake.output.tex, snakemake.params.metric)
    log.info("LaTeX table %s written", snakemake.params.table)


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
