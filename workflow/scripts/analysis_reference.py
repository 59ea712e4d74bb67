"""Workflow script: import the paper's per-run results archive and tabulate its runs, via
kdcore.analysis.imported.write_imported_run_tables.

Input: ``zip`` (the archive). Outputs: ``runs_dir`` (the imported run folders), ``runs``, ``fidelity``,
``history`` (the run tables of the imported runs).
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.imported import write_imported_run_tables

    outputs = {name: getattr(snakemake.output, name) for name in ("runs", "fidelity", "history")}
    n = write_imported_run_tables(snakemake.input.zip, snakemake.output.runs_dir, outputs)
    log.info("imported %d paper runs from %s", n, snakemake.input.zip)


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
