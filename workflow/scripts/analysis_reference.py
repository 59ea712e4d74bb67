"""Workflow script: import the paper's per-run results zip and build its run tables.

Input: ``zip`` (paper-v2-runs.zip). Outputs: ``runs_dir`` (imported metrics/fidelity JSON files),
``runs``, ``fidelity``, ``history`` (CSV tables of the paper's runs, in one folder).
"""

from pathlib import Path

from _common import setup

log = setup(snakemake)

from kdcore.analysis.table import write_run_tables  # noqa: E402
from kdcore.reference import import_reference  # noqa: E402

runs_dir = Path(snakemake.output.runs_dir)
n = import_reference(snakemake.input.zip, runs_dir)
write_run_tables(
    sorted(runs_dir.rglob("metrics.json")), sorted(runs_dir.rglob("fidelity.json")), Path(snakemake.output.runs).parent
)
log.info("imported %d paper runs from %s", n, snakemake.input.zip)
