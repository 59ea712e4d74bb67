"""Workflow script: one table drawn from the runs' stored test logits or audit history (CSV and LaTeX) via
kdcore.analysis.logit_outputs.write_logit_table.

Inputs: ``runs`` (the runs.csv of each part it reads, kdcore.analysis.outputs.LOGIT_TABLES), ``history`` (their
history.csv, for the audit table). Params: ``table`` (a name of LOGIT_TABLES), ``metric``. Outputs: ``csv``,
``tex``.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.analysis.logit_outputs import write_logit_table

    p = snakemake.params
    history = list(getattr(snakemake.input, "history", []) or [])
    out = snakemake.output
    table = write_logit_table(p.table, list(snakemake.input.runs), history, out.csv, out.tex, p.metric)
    log.info("%s: %d rows", p.table, len(table))


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
