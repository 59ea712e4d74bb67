"""Workflow script: the tidy run table (runs.csv), the fidelity table and the per-epoch history table.

Inputs: ``metrics`` (every metrics.json of the study), ``fidelity`` (every fidelity.json).
Outputs: ``runs``, ``fidelity``, ``history`` (CSV, in one folder).
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from pathlib import Path

from _common import setup

log = setup(snakemake)

from kdcore.analysis.table import write_run_tables  # noqa: E402

out_dir = Path(snakemake.output.runs).parent
written = write_run_tables(list(snakemake.input.metrics), list(snakemake.input.fidelity), out_dir)
for key, path in written.items():
    expected = Path(getattr(snakemake.output, key))
    if path != expected:
        raise RuntimeError(f"output {key}: wrote {path}, the rule declares {expected}")
log.info("run table: %d metrics files, %d fidelity files", len(snakemake.input.metrics), len(snakemake.input.fidelity))
