"""Workflow script: one LaTeX table of the study (booktabs) from the tables it is drawn from.

Inputs (kdcore.analysis.outputs.TEX_TABLES): ``runs`` (one CSV per part, read as one table), ``fidelity``
and statistics tables by name. Params: ``table``, ``metric``. Output: ``tex``.
"""

from _common import setup

log = setup(snakemake)

from kdcore.analysis import latex, stats  # noqa: E402
from kdcore.analysis.table import read_table, read_tables  # noqa: E402
from kdcore.atomic import atomic_write_text  # noqa: E402

inputs, metric = snakemake.input, snakemake.params.metric
label = stats.METRIC_LABELS[metric]


def runs():
    return read_tables(inputs.runs)


def table(name):
    return read_table(inputs[name][0])


# the same calls as latex.write_tables makes, cells computed from the runs read (stats.cell_summary)
TEX_FUNCTIONS = {
    "main_results": lambda: latex.tex_main_results(
        table("comparisons"), stats.cell_summary(runs(), metric), runs(), label
    ),
    "kd_statistics": lambda: latex.tex_kd_statistics(table("comparisons")),
    "teachers": lambda: latex.tex_teachers(stats.cell_summary(runs(), metric), runs()),
    "fidelity": lambda: latex.tex_fidelity(table("fidelity")),
    "stem_ablation": lambda: latex.tex_stem_ablation(table("stem_ablation"), label),
    "clip_ablation": lambda: latex.tex_clip_ablation(table("clip_ablation"), label),
    "selection": lambda: latex.tex_selection(table("selection")),
    "moderation": lambda: latex.tex_moderation(table("moderation"), label),
}

atomic_write_text(snakemake.output.tex, TEX_FUNCTIONS[snakemake.params.table]())
log.info("LaTeX table %s written", snakemake.params.table)
