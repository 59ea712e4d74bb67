"""Workflow script: the tidy run table (runs.csv), the fidelity table and the per-epoch history table, via
kdcore.analysis.table.write_run_tables.

Inputs: ``metrics`` (the metrics.json files), ``logits`` (the test-logits files the fidelity comparisons read).
Params: ``fidelity`` (JSON list of the fidelity comparisons: student run's metrics.json, teacher, teacher logits).
Outputs: ``runs``, ``fidelity``, ``history`` (CSV).
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
import json
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.table import write_run_tables

    metrics, checks = list(snakemake.input.metrics), json.loads(snakemake.params.fidelity)
    outputs = {name: getattr(snakemake.output, name) for name in ("runs", "fidelity", "history")}
    write_run_tables(metrics, [], outputs, checks)
    log.info("run table: %d metrics files, %d fidelity comparisons from stored logits", len(metrics), len(checks))


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
