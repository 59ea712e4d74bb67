"""Workflow script: the tidy run table (runs.csv), the fidelity table and the per-epoch history table, via
kdcore.analysis.table.write_run_tables.

Inputs: ``metrics`` (every metrics.json of the study), ``fidelity`` (every fidelity.json).
Outputs: ``runs``, ``fidelity``, ``history`` (CSV).
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.table import write_run_tables

    metrics, fidelity = list(snakemake.input.metrics), list(snakemake.input.fidelity)
    outputs = {name: getattr(snakemake.output, name) for name in ("runs", "fidelity", "history")}
    write_run_tables(metrics, fidelity, outputs)
    log.info("run table: %d metrics files, %d fidelity files", len(metrics), len(fidelity))


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
