"""Workflow script: paper vs reproduction table (CSV and LaTeX), via kdcore.analysis.compare.write_comparison.

Inputs: ``ours`` (our runs.csv), ``paper`` (the imported paper's runs.csv). Params: ``metric``.
Outputs: ``csv``, ``tex``.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.compare import write_comparison

    i, o = snakemake.input, snakemake.output
    comp = write_comparison(i.ours, i.paper, o.csv, o.tex, snakemake.params.metric)
    log.info("comparison: %s", comp["status"].value_counts().to_dict())


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
