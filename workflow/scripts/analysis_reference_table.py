"""Workflow script: the run tables of an analysis-only study (``analysis.runs_from: reference``), from the
imported runs' tables: the whole study's (params ``part`` empty) or one part's, via
kdcore.analysis.parts.write_part_tables.

Inputs: ``runs``, ``fidelity``, ``history`` (tables of the imported runs). Outputs: the same three tables.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.parts import write_part_tables

    names = ("runs", "fidelity", "history")
    inputs = {name: getattr(snakemake.input, name) for name in names}
    outputs = {name: getattr(snakemake.output, name) for name in names}
    tables = write_part_tables(inputs, outputs, snakemake.params.part)
    log.info("part %s: %d runs", snakemake.params.part or "(whole study)", len(tables["runs"]))


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
