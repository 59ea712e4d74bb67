"""Workflow script: paper vs reproduction table (CSV and LaTeX).

Inputs: ``ours`` (our runs.csv), ``paper`` (the imported paper's runs.csv). Params: ``metric``.
Outputs: ``csv``, ``tex``.
"""

from _common import setup

log = setup(snakemake)

from kdcore.analysis.compare import write_comparison  # noqa: E402
from kdcore.analysis.table import read_table  # noqa: E402

comp = write_comparison(
    read_table(snakemake.input.ours),
    read_table(snakemake.input.paper),
    snakemake.output.csv,
    snakemake.output.tex,
    snakemake.params.metric,
)
log.info("comparison: %s", comp["status"].value_counts().to_dict())
