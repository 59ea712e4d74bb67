"""Workflow script: statistics of the whole study (summary.json and the per-cell table cells.csv), via
kdcore.analysis.summary.write_summary.

Input: ``runs`` (the whole study's runs.csv). Params: ``metric``, ``min_effect_pp`` (analysis.min_effect_pp,
for the a priori design figures). Outputs: ``summary``, ``cells``.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.summary import write_summary

    p, out = snakemake.params, snakemake.output
    summary = write_summary(snakemake.input.runs, out.cells, out.summary, p.metric, p.min_effect_pp)
    for note in summary["notes"]:
        log.warning("%s", note)
    log.info("statistics of %d runs written", summary["n_runs"])


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
