"""Does the moderation verdict depend on a choice a reader could question? One row per choice and family.

Each row is the moderation test of :func:`kdcore.analysis.moderation.moderation_table` (same test, same
assumptions: independent seeds, normal runs, true gains linear in log2 parameters) with one choice changed
from the primary analysis (the study's metric, every final seed, the paired design where the seeds allow,
the per-student tuned hyper-parameters):

* ``metric``: each other accuracy column (test at the best-val epoch, test after the last epoch, best val).
* ``selection seeds``: the final KD runs whose seed also ran the selection grid of that pair and method are
  left out. When the final seeds overlap the selection seeds (the paper's protocol reuses seed 0), such a
  run is the winning grid run again, chosen because it scored well on that seed (winner's curse).
* ``design``: paired (per-seed differences on shared seeds) against unpaired (cell means, Welch).
* ``hyper-parameters``: matched instead of tuned. Each student got its own winning grid point, so a
  difference in gains may be a difference in tuning. At every grid point that all students of a family ran
  in the selection grid, the selection runs stand in for the final runs: the students are compared at the
  same setting. The selection grid usually has one seed per point; such rows are estimates without a test.

The rows are not a multiple-testing family: they are alternative analyses of the same data, so Holm p-values
are those of the row's own table and the conclusions are read side by side, not combined.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from kdcore.analysis.moderation import FAMILY, moderation_table
from kdcore.analysis.stats import METRICS, MIN_EFFECT_PP, check_metric
from kdcore.analysis.table import hyperparameter_columns

SENSITIVITY_COLUMNS = [
    "teacher",
    "method",
    "choice",
    "variant",
    "metric",
    "seeds",
    "design",
    "hyperparameters",
    "seeds_per_group",
    "gain_change",
    "gain_change_ci_low",
    "gain_change_ci_high",
    "gain_change_ci90_low",
    "gain_change_ci90_high",
    "p",
    "p_tost",
    "bound_ruled_out",
    "verdict",
    "conclusion",
]


def _unique_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (the parts' run tables repeat the final runs)."""
    key = ["path"] if "path" in runs else None
    return runs.drop_duplicates(subset=key).reset_index(drop=True)


def selection_seeds(runs: pd.DataFrame) -> dict[tuple[str, str], set[int]]:
    """Seeds of the selection-grid runs (stage select) per (pair, method)."""
    sel = runs[runs["stage"] == "select"]
    return {(pair, method): set(g["seed"].astype(int)) for (pair, method), g in sel.groupby(["pair", "method"])}


def without_selection_seeds(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The runs less the final KD runs whose seed ran the selection grid of their pair and method, and a
    description of the seeds left out."""
    seeds = selection_seeds(runs)
    final = (runs["stage"] == "final") & (runs["method"] != "baseline")
    drop = final & pd.Series(
        [
            (p, m) in seeds and int(s) in seeds[p, m]
            for p, m, s in zip(runs["pair"], runs["method"], runs["seed"], strict=True)
        ],
        index=runs.index,
    )
    dropped = sorted({int(s) for s in runs.loc[drop, "seed"]})
    label = f"without seed(s) {' '.join(map(str, dropped))}" if dropped else "final seeds disjoint from selection"
    return runs[~drop], label


def matched_points(runs: pd.DataFrame) -> list[tuple[str, str, dict[str, Any]]]:
    """(teacher, method, grid point) of every selection-grid point that every student of a final family ran."""
    hps = hyperparameter_columns(runs)
    final = runs[(runs["stage"] == "final") & (runs["method"] != "baseline")]
    sel = runs[runs["stage"] == "select"]
    out = []
    for (teacher, method), fam in final.groupby(FAMILY, sort=True):
        students = set(fam["student"])
        grid = sel[(sel["teacher"] == teacher) & (sel["method"] == method)]
        if not hps or grid.empty:
            continue
        for point, g in grid.groupby(hps, dropna=False, sort=True):
            point = point if isinstance(point, tuple) else (point,)
            if set(g["student"]) >= students and len(students) >= 2:
                out.append((teacher, method, dict(zip(hps, point, strict=True))))
    return out


def at_matched_point(runs: pd.DataFrame, teacher: str, method: str, point: dict[str, Any]) -> pd.DataFrame:
    """The baselines and, as final runs, the selection runs of (teacher, method) at grid ``point``."""
    sel = runs[(runs["stage"] == "select") & (runs["teacher"] == teacher) & (runs["method"] == method)]
    for hp, value in point.items():
        sel = sel[sel[hp].isna()] if pd.isna(value) else sel[np.isclose(sel[hp].astype(float), float(value))]
    base = runs[runs["stage"] == "baseline"]
    return pd.concat([base, sel.assign(stage="final", clip_scope="all")], ignore_index=True)


def _verdict(row: dict[str, Any]) -> str:
    if not np.isfinite(row["p"]) and np.isfinite(row["gain_change"]):
        return "estimate only"
    conclusion = str(row["conclusion"])
    return conclusion.split(":")[0].split(" (")[0] if conclusion else ""


def _rows(table: pd.DataFrame, choice: str, variant: str, metric: str, seeds: str, hps: str) -> list[dict]:
    rows = []
    for r in table.to_dict(orient="records"):
        r.update(choice=choice, variant=variant, metric=metric, seeds=seeds, hyperparameters=hps)
        r["verdict"] = _verdict(r)
        rows.append({c: r.get(c, math.nan) for c in SENSITIVITY_COLUMNS})
    return rows


def _point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in point.items() if pd.notna(v))


def _matched_rows(runs: pd.DataFrame, metric: str, min_effect_pp: float) -> list[dict]:
    """Rows of the matched hyper-parameter choice: one per grid point all students ran and, per family, the
    mean of the points' estimates (an estimate only: the points differ in setting, not only in seed)."""
    rows: list[dict] = []
    for teacher, method, point in matched_points(runs):
        table = moderation_table(at_matched_point(runs, teacher, method, point), metric, min_effect_pp)
        table = table[(table["teacher"] == teacher) & (table["method"] == method)]
        label = f"matched at {_point_label(point)}"
        rows += _rows(table, "hyper-parameters", label, metric, "selection-grid seeds", label)
    by_family: dict[tuple, list[float]] = {}
    for r in rows:
        by_family.setdefault((r["teacher"], r["method"]), []).append(r["gain_change"])
    for (teacher, method), changes in by_family.items():
        finite = [c for c in changes if np.isfinite(c)]
        if len(finite) < 2:
            continue
        label = f"matched: mean over {len(finite)} grid points (range {min(finite):+.2f} to {max(finite):+.2f})"
        row = dict.fromkeys(SENSITIVITY_COLUMNS, math.nan)
        row.update(teacher=teacher, method=method, choice="hyper-parameters", variant=label, metric=metric)
        row.update(seeds="selection-grid seeds", design="", hyperparameters="matched, every shared grid point")
        row.update(gain_change=float(np.mean(finite)), verdict="estimate only", conclusion="estimate only: no test")
        rows.append(row)
    return rows


def moderation_sensitivity(
    runs: pd.DataFrame, metric: str = "test_best", min_effect_pp: float = MIN_EFFECT_PP
) -> pd.DataFrame:
    """The moderation estimate of every (teacher, method) under each choice (module docstring), one choice
    changed at a time from the primary analysis; columns :data:`SENSITIVITY_COLUMNS`."""
    check_metric(metric)
    runs = _unique_runs(runs)
    tuned, all_seeds = "tuned per student", "all final seeds"
    primary = moderation_table(runs, metric, min_effect_pp)
    rows = _rows(primary, "primary", "primary analysis", metric, all_seeds, tuned)
    for other in (m for m in METRICS if m != metric):
        table = moderation_table(runs, other, min_effect_pp)
        rows += _rows(table, "metric", other, other, all_seeds, tuned)
    trimmed, label = without_selection_seeds(runs)
    rows += _rows(moderation_table(trimmed, metric, min_effect_pp), "selection seeds", label, metric, label, tuned)
    for design in ("paired", "unpaired"):
        table = moderation_table(runs, metric, min_effect_pp, design=design)
        rows += _rows(table, "design", design, metric, all_seeds, tuned)
    rows += _matched_rows(runs, metric, min_effect_pp)
    df = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    tested = primary.loc[primary["n_capacities"] >= 2, FAMILY]
    df = df.merge(tested, on=FAMILY)  # a family with one student has no moderation to test
    order = {c: i for i, c in enumerate(("primary", "metric", "selection seeds", "design", "hyper-parameters"))}
    df["_order"] = df["choice"].map(order)
    return df.sort_values([*FAMILY, "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
