"""Workflow script: the run tables of an analysis-only study (``analysis.runs_from: reference``), from the
imported runs' tables: the whole study's (params ``part`` empty) or one part's (kdcore.analysis.parts).

Inputs: ``runs``, ``fidelity``, ``history`` (tables of the imported runs). Outputs: the same three tables.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from _common import setup

log = setup(snakemake)

from kdcore.analysis.parts import part_tables  # noqa: E402
from kdcore.analysis.table import read_table, write_table  # noqa: E402

part = snakemake.params.part
tables = {key: read_table(getattr(snakemake.input, key)) for key in ("runs", "fidelity", "history")}
imported = len(tables["runs"])
if part:
    tables = part_tables(tables["runs"], tables["fidelity"], tables["history"], part)
for key, table in tables.items():
    write_table(table, getattr(snakemake.output, key))
log.info("part %s: %d runs of %d imported runs", part or "(whole study)", len(tables["runs"]), imported)
