"""Workflow script: one figure of the study (PDF and PNG) from the tables it is drawn from.

Inputs (kdcore.analysis.outputs.FIGURES): ``runs`` and ``history`` (one CSV per part, read as one table),
``fidelity`` and statistics tables by name. Params: ``figure``, ``metric``. Outputs: ``pdf`` and ``png``
(same stem). The inputs are gathered under the names kdcore.analysis.figures.write_figure reads.
"""

import shutil
import tempfile
from pathlib import Path

from _common import setup

log = setup(snakemake)

from kdcore.analysis.figures import write_figure  # noqa: E402
from kdcore.analysis.table import read_tables, write_table  # noqa: E402

with tempfile.TemporaryDirectory(prefix="kd-figure-") as tmp:
    for key in ("runs", "history"):
        if snakemake.input.get(key):
            write_table(read_tables(snakemake.input[key]), Path(tmp) / f"{key}.csv")
    for key, paths in snakemake.input.items():
        if key not in ("runs", "history"):
            shutil.copyfile(paths[0] if isinstance(paths, list) else paths, Path(tmp) / f"{key}.csv")
    written = write_figure(snakemake.params.figure, tmp, snakemake.output.pdf, snakemake.params.metric)
if Path(snakemake.output.png) not in written:
    raise RuntimeError(f"figure written to {written}, the rule declares {snakemake.output.png}")
log.info("figure %s written", snakemake.params.figure)
