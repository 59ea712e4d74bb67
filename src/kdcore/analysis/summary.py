"""The study's statistics outputs: every statistics table by name, and summary.json.

The tables are computed by :mod:`kdcore.analysis.stats` (KD comparisons, selection, ablations),
:mod:`kdcore.analysis.moderation` and :mod:`kdcore.analysis.sensitivity`; this module, above all three,
names them (:data:`STAT_TABLES`), writes them and gathers them into summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kdcore.analysis.moderation import moderation_summary, moderation_table
from kdcore.analysis.outputs import STAT_TABLES as OUTPUT_STAT_TABLES
from kdcore.analysis.sensitivity import moderation_sensitivity
from kdcore.analysis.stats import (
    ALPHA,
    BOOT_COVERAGE_NOTE,
    BOOT_METHOD,
    BOOT_SEED,
    CONFIDENCE,
    HOLM_FAMILY,
    METRIC_LABELS,
    MIN_EFFECT_PP,
    N_BOOT,
    NOTE_FEW,
    POWER,
    SD_UPPER_CONFIDENCE,
    cell_summary,
    check_metric,
    clip_ablation,
    family_size,
    kd_comparisons,
    premise_warnings,
    records,
    selection_table,
    significance_legend,
    stem_ablation,
    teacher_premise,
)
from kdcore.analysis.table import read_table, read_tables, write_table
from kdcore.atomic import atomic_write_json
from kdcore.errors import ConfigError


def mixed_compute_notes(runs: pd.DataFrame) -> list[str]:
    """A note for each KD comparison (a pair and method's final runs against its student's baselines) whose
    runs were computed on more than one kind of device or precision (the run table's ``compute``, e.g.
    ``cuda/bfloat16`` and ``cpu/float32``): a difference between its arms may then come from the hardware
    and the arithmetic, not from the method. Runs that record no compute kind (imported runs) are left out."""
    if "compute" not in runs.columns:
        return []
    final, baselines = runs[runs["stage"] == "final"], runs[runs["stage"] == "baseline"]
    notes = []
    for (pair, method), cell in final.groupby(["pair", "method"], sort=True):
        arms = pd.concat([cell, baselines[baselines["student"] == cell["student"].iloc[0]]])
        kinds = arms["compute"].fillna("").astype(str)
        counts = kinds[kinds != ""].value_counts().sort_index()
        if len(counts) > 1:
            mix = ", ".join(f"{kind} {n} runs" for kind, n in counts.items())
            notes.append(f"{pair} {method} and its baselines mix devices or precisions ({mix}): compare with care")
    return notes


def build_summary(
    runs: pd.DataFrame,
    metric: str = "test_best",
    tables: dict[str, pd.DataFrame] | None = None,
    min_effect_pp: float = MIN_EFFECT_PP,
) -> dict[str, Any]:
    """All statistics of the study as one JSON-ready dict (the content of summary.json); ``tables`` are
    already computed statistics tables (names of :data:`STAT_TABLES`) to reuse."""
    check_metric(metric)
    t = tables or {}
    comp = t["comparisons"] if "comparisons" in t else kd_comparisons(runs, metric, min_effect_pp=min_effect_pp)
    premise = teacher_premise(runs, metric)
    notes = premise_warnings(premise) + mixed_compute_notes(runs)
    if not comp.empty and comp["p_welch"].isna().any():
        notes.append(f"some KD cells have fewer than 2 seeds: their tests are null ({NOTE_FEW})")
    m = family_size(comp["p_welch"]) if not comp.empty else 0
    moderation = t["moderation"] if "moderation" in t else moderation_table(runs, metric, min_effect_pp)
    return {
        "schema_version": 2,
        "metric": metric,
        "units": "accuracy in percent; differences in percentage points (pp)",
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "interval": {"primary": "Welch t-interval", "descriptive": "BCa bootstrap (bca_low, bca_high)"},
        "bootstrap": {
            "method": BOOT_METHOD,
            "role": "descriptive, not a check: " + BOOT_COVERAGE_NOTE,
            "n_resamples": N_BOOT,
            "seed": BOOT_SEED,
        },
        "multiple_comparisons": {
            "method": "holm",
            "family": HOLM_FAMILY,
            "m": m,
            "m_paired": family_size(comp["p_paired"]) if not comp.empty else 0,
            "marks": significance_legend(m),
        },
        "power": {
            "kind": "a priori (no post-hoc power)",
            "target": POWER,
            "min_effect_pp": min_effect_pp,
            "test": "two-sided two-sample t-test, equal seeds per arm, SD = observed SD of the student's baseline",
            "column": "seeds_for_min_effect",
            "paired": "paired t-test, SD of the per-seed differences: pairs_for_min_effect",
            "sd_upper": f"*_upper: at the SD's one-sided {SD_UPPER_CONFIDENCE:.0%} upper confidence limit",
        },
        "teacher_premise": records(premise),
        "n_runs": len(runs),
        "runs_per_stage": {k: int(v) for k, v in runs["stage"].value_counts().sort_index().items()},
        "sources": sorted(set(runs["source"])),
        "metric_label": METRIC_LABELS[metric],
        "cells": records(t["cells"] if "cells" in t else cell_summary(runs, metric)),
        "comparisons": records(comp),
        "moderation": moderation_summary(moderation, metric),
        "selection": records(t["selection"] if "selection" in t else selection_table(runs)),
        "stem_ablation": records(t["stem_ablation"] if "stem_ablation" in t else stem_ablation(runs, metric)),
        "clip_ablation": records(t["clip_ablation"] if "clip_ablation" in t else clip_ablation(runs, metric)),
        "notes": notes,
    }


#: Every statistics table: the cell summary and those of kdcore.analysis.outputs.STAT_TABLES (each computed
#: from the runs of the parts listed there).
STAT_TABLES = ("cells", *OUTPUT_STAT_TABLES)


def stat_table(
    name: str, runs: pd.DataFrame, metric: str = "test_best", min_effect_pp: float = MIN_EFFECT_PP
) -> pd.DataFrame:
    """Statistics table ``name`` (one of :data:`STAT_TABLES`) of a run table."""
    check_metric(metric)
    builders = {
        "cells": lambda: cell_summary(runs, metric),
        "comparisons": lambda: kd_comparisons(runs, metric, min_effect_pp=min_effect_pp),
        "selection": lambda: selection_table(runs),
        "stem_ablation": lambda: stem_ablation(runs, metric),
        "clip_ablation": lambda: clip_ablation(runs, metric),
        "moderation": lambda: moderation_table(runs, metric, min_effect_pp),
        "moderation_sensitivity": lambda: moderation_sensitivity(runs, metric, min_effect_pp),
    }
    if name not in builders:
        raise ConfigError(f"statistics table {name!r} is not one of {', '.join(STAT_TABLES)}")
    return builders[name]()


def write_stat_table(
    name: str,
    runs_paths: list[str | Path],
    out_path: str | Path,
    metric: str = "test_best",
    min_effect_pp: float = MIN_EFFECT_PP,
) -> pd.DataFrame:
    """Statistics table ``name`` of the runs in ``runs_paths`` (read as one run table), written to ``out_path``."""
    table = stat_table(name, read_tables(runs_paths), metric, min_effect_pp)
    write_table(table, out_path)
    return table


def write_summary(
    runs_path: str | Path, cells_path: str | Path, summary_path: str | Path, metric: str, min_effect_pp: float
) -> dict[str, Any]:
    """The cell table and summary.json of the run table ``runs_path``, written to the paths given."""
    runs = read_table(runs_path)
    cells = cell_summary(runs, metric)
    write_table(cells, cells_path)
    summary = build_summary(runs, metric, {"cells": cells}, min_effect_pp)
    atomic_write_json(summary_path, summary)
    return summary


def write_statistics(
    runs: pd.DataFrame, out_dir: str | Path, metric: str = "test_best", min_effect_pp: float = MIN_EFFECT_PP
) -> dict[str, Path]:
    """Write summary.json and the CSV of every statistics table (:data:`STAT_TABLES`) into ``out_dir``;
    return their paths (a whole study at once, outside the workflow)."""
    check_metric(metric)
    out_dir = Path(out_dir)
    tables = {name: stat_table(name, runs, metric, min_effect_pp) for name in STAT_TABLES}
    paths = {name: write_table(df, out_dir / f"{name}.csv") for name, df in tables.items()}
    summary = build_summary(runs, metric, tables, min_effect_pp)
    paths["summary"] = atomic_write_json(out_dir / "summary.json", summary)
    return paths
