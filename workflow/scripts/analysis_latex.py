"""Workflow script: every LaTeX table of the study (booktabs) from the analysis tables.

Inputs: the CSV tables (in the folder of ``runs``). Params: ``metric``. Outputs: one .tex per name of
``kdcore.analysis.latex.TABLE_NAMES``, all in one folder.
"""

from pathlib import Path

from _common import setup

log = setup(snakemake)

from kdcore.analysis.latex import write_all  # noqa: E402
from kdcore.analysis.stats import METRIC_LABELS  # noqa: E402

out_dir = Path(snakemake.output[0]).parent
written = write_all(Path(snakemake.input.runs).parent, out_dir, METRIC_LABELS[snakemake.params.metric])
missing = {str(p) for p in snakemake.output} - {str(p) for p in written}
if missing:
    raise RuntimeError(f"LaTeX tables not written: {sorted(missing)}")
log.info("LaTeX tables written: %s", ", ".join(str(p) for p in written))
