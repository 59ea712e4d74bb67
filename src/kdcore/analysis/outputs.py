"""The analysis outputs of a study (statistics tables, figures, LaTeX tables) and the tables each reads.

This is the one list of output names: the workflow builds its rules and targets from it, and
:mod:`kdcore.analysis.figures` / :mod:`kdcore.analysis.latex` take their name lists from it.

A study is split into *parts*, each with a run table of its own (same columns as the whole study's runs.csv,
a subset of its rows), so that an output is built from, and waits for, only the runs it reads:

- ``teachers``: every teacher run (all teacher seeds);
- ``kd``: the student baselines and the final KD runs;
- ``selection``: the selection-grid runs and the final KD runs (which grid point the finals used);
- ``fidelity``: the runs with fidelity measurements, and those measurements (fidelity.csv);
- ``stem``: the ImageNet-stem runs and the runs of their CIFAR-stem arm;
- ``clip``: the clip-ablation runs and the final KD runs of the same pair and method (the corrected arm).

Standard library only: the workflow imports this module when it parses the Snakefile.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTS = ("teachers", "kd", "selection", "fidelity", "stem", "clip")


@dataclass(frozen=True)
class Reads:
    """What one output is drawn from: run tables of parts (with their per-epoch history when ``history``),
    statistics tables (names of :data:`STAT_TABLES`) and the fidelity table of the ``fidelity`` part."""

    runs: tuple[str, ...] = ()
    history: bool = False
    stats: tuple[str, ...] = ()
    fidelity: bool = False

    def parts(self) -> tuple[str, ...]:
        """Every part this output needs, directly or through its statistics tables, in :data:`PARTS` order."""
        needed = set(self.runs) | {p for s in self.stats for p in STAT_TABLES[s]}
        if self.fidelity:
            needed.add("fidelity")
        return tuple(p for p in PARTS if p in needed)


#: Statistics tables (CSV, kdcore.analysis.stats) -> the parts whose runs each is computed from.
STAT_TABLES: dict[str, tuple[str, ...]] = {
    "comparisons": ("kd",),
    "selection": ("selection",),
    "stem_ablation": ("stem",),
    "clip_ablation": ("clip",),
    "moderation": ("kd",),
    "moderation_sensitivity": ("kd", "selection"),
}

#: Figures (kdcore.analysis.figures) -> what each is drawn from.
FIGURES: dict[str, Reads] = {
    "gain_vs_capacity": Reads(runs=("kd",), stats=("moderation",)),
    "convergence": Reads(runs=("teachers", "kd"), history=True),
    "fidelity": Reads(stats=("comparisons",), fidelity=True),
    "stem_ablation": Reads(runs=("stem",), stats=("stem_ablation",)),
    "clip_ablation": Reads(runs=("clip",), history=True, stats=("clip_ablation",)),
}

#: LaTeX tables (kdcore.analysis.latex) -> what each is drawn from (cells are computed from the runs read).
TEX_TABLES: dict[str, Reads] = {
    "main_results": Reads(runs=("teachers", "kd"), stats=("comparisons",)),
    "kd_statistics": Reads(stats=("comparisons",)),
    "teachers": Reads(runs=("teachers",)),
    "fidelity": Reads(fidelity=True),
    "stem_ablation": Reads(stats=("stem_ablation",)),
    "clip_ablation": Reads(stats=("clip_ablation",)),
    "selection": Reads(stats=("selection",)),
    "moderation": Reads(stats=("moderation",)),
    "moderation_sensitivity": Reads(stats=("moderation_sensitivity",)),
}


#: Tables drawn from the runs' stored test logits (kdcore.analysis.logit_tables; the ``audit`` table from the
#: per-epoch audit history) -> the parts each reads. Each is one job writing ``<name>.csv`` and ``<name>.tex``
#: (kdcore.analysis.logit_outputs); a study whose runs keep no logits (an imported study) has none of them.
LOGIT_TABLES: dict[str, Reads] = {
    "paired_images": Reads(runs=("kd",)),
    "variance": Reads(runs=("teachers", "kd")),
    "ensembles": Reads(runs=("teachers", "kd")),
    "audit": Reads(runs=("teachers", "kd"), history=True),
}


def available(outputs: dict[str, Reads], parts: set[str] | frozenset[str]) -> list[str]:
    """Names of ``outputs`` (:data:`FIGURES` or :data:`TEX_TABLES`) whose parts are all in ``parts``: a study
    that leaves a part out (e.g. no stem ablation) has no output drawn from it."""
    return [name for name, reads in outputs.items() if set(reads.parts()) <= set(parts)]


def available_stat_tables(parts: set[str] | frozenset[str]) -> list[str]:
    """Names of the statistics tables whose parts are all in ``parts``."""
    return [name for name, needed in STAT_TABLES.items() if set(needed) <= set(parts)]
