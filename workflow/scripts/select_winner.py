"""Workflow script: pick the winning hyper-parameters of one (pair, method) from its selection runs.

Inputs: ``runs`` (metrics.json of every grid point and selection seed, in the order of ``candidates``).
Params: ``candidates`` (JSON list of {hp, params, metrics: [paths]} in grid order), ``metric``, ``pair``,
``method``. Output: the winner file (format in docs/design.md, "Workflow"). The rule itself is
:func:`kdcore.selection.choose_winner` (highest mean over the selection seeds, ties to the earlier grid point).
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
import json
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.selection import write_selection

    teacher, student = snakemake.params.pair
    record = write_selection(
        json.loads(snakemake.params.candidates),
        snakemake.params.metric,
        teacher,
        student,
        snakemake.params.method,
        snakemake.output[0],
    )
    win = record["winner"]
    log.info(
        "winner of %s %s: %s (%s %.4f)", record["pair"], record["method"], win["hp"], record["metric"], win["score"]
    )


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
