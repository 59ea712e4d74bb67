"""The run tables of one part of a study, selected from the run tables of the whole study.

A study that trains its runs builds each part's tables from that part's metrics.json files (the workflow
knows which files belong to which part). A study of already-finished runs, e.g. the paper's imported runs,
has only the whole study's tables; :func:`part_tables` selects each part's rows from them by the same
definitions (:data:`kdcore.analysis.outputs.PARTS`):

- ``teachers``: the teacher runs; ``kd``: the baselines and the final KD runs;
- ``selection``: the selection-grid runs and the final KD runs;
- ``fidelity``: the runs that have fidelity measurements, and those measurements;
- ``stem``: the stem-ablation runs and their CIFAR-stem arm (:func:`kdcore.analysis.table.stem_arms`);
- ``clip``: the clip-ablation runs and the final KD runs of the same pair and method.

Only the ``fidelity`` part keeps fidelity rows, as in a trained study, where the other parts read no
fidelity file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from kdcore.analysis.outputs import PARTS
from kdcore.analysis.table import RUN_TABLES, read_table, stem_arms, write_table
from kdcore.errors import DataError

_STAGES_OF_PART = {"teachers": ("teacher",), "kd": ("baseline", "final"), "selection": ("select", "final")}


def _clip_rows(runs: pd.DataFrame) -> pd.Series:
    """Clip-ablation runs and the final KD runs of each (teacher, student, method) the ablation has."""
    clip = runs[runs["stage"] == "clip"]
    arms = set(zip(clip["teacher"], clip["student"], clip["method"], strict=True))
    key = pd.Series(list(zip(runs["teacher"], runs["student"], runs["method"], strict=True)), index=runs.index)
    return (runs["stage"] == "clip") | ((runs["stage"] == "final") & key.isin(arms))


def _stem_rows(runs: pd.DataFrame) -> pd.Series:
    ids = {run_id for cif, img in stem_arms(runs).values() for run_id in (*cif["run_id"], *img["run_id"])}
    return runs["run_id"].isin(ids)


def part_rows(runs: pd.DataFrame, fidelity: pd.DataFrame, part: str) -> pd.Series:
    """Boolean mask of the rows of ``runs`` (a whole study's runs.csv) that belong to ``part``."""
    if part not in PARTS:
        raise DataError(f"unknown part of a study {part!r}; expected one of {', '.join(PARTS)}")
    if part in _STAGES_OF_PART:
        return runs["stage"].isin(_STAGES_OF_PART[part])
    if part == "fidelity":
        return runs["run_id"].isin(fidelity["run_id"])
    return _stem_rows(runs) if part == "stem" else _clip_rows(runs)


def part_tables(
    runs: pd.DataFrame, fidelity: pd.DataFrame, history: pd.DataFrame, part: str
) -> dict[str, pd.DataFrame]:
    """``runs``, ``fidelity`` and ``history`` tables of one part, selected from the whole study's tables
    (same columns, rows in the same order)."""
    rows = runs[part_rows(runs, fidelity, part)].reset_index(drop=True)
    fid = fidelity if part == "fidelity" else fidelity.iloc[0:0]
    return {
        "runs": rows,
        "fidelity": fid.reset_index(drop=True),
        "history": history[history["run_id"].isin(rows["run_id"])].reset_index(drop=True),
    }


def write_part_tables(
    inputs: Mapping[str, str | Path], outputs: Mapping[str, str | Path], part: str | None
) -> dict[str, pd.DataFrame]:
    """The run, fidelity and history tables at ``inputs`` (each a path), restricted to ``part`` (all rows when
    ``part`` is empty), written to ``outputs`` (the same names)."""
    tables = {name: read_table(inputs[name]) for name in RUN_TABLES}
    if part:
        tables = part_tables(tables["runs"], tables["fidelity"], tables["history"], part)
    for name, table in tables.items():
        write_table(table, outputs[name])
    return tables
