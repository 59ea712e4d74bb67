"""Hyper-parameter selection: the one rule that names the winner of a (pair, method) selection grid.

A candidate is a grid point with the values of the selection metric over its selection seeds; its score is
their mean, and the winner is the candidate with the highest score, the first one in grid order among equals
(``max`` returns the first maximal item). The workflow's ``select_winner`` job and the analysis'
``selection_table`` both decide through :func:`choose_winner`, so the table marks the point the study trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from kdcore.errors import KDCoreError

SCHEMA_VERSION = 1


def candidate_score(values: Sequence[float]) -> float:
    """Mean of a candidate's metric values (NaN values left out); NaN when none is finite."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return fmean(finite) if finite else math.nan


def choose_winner(scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the highest ``score``; the first one in grid order among equals; NaN scores lose."""
    if not scored:
        raise KDCoreError("selection has no candidates")
    return max(scored, key=lambda c: -math.inf if math.isnan(c["score"]) else c["score"])


def score_candidates(candidates: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Each candidate ({hp, params, metrics: [metrics.json paths]}) with its per-run ``values`` of
    ``results[metric]`` and their mean ``score``; KDCoreError naming the file when the metric is absent."""
    scored = []
    for cand in candidates:
        values = []
        for path in cand["metrics"]:
            results = json.loads(Path(path).read_text(encoding="utf-8")).get("results", {})
            if metric not in results:
                raise KDCoreError(f"{path}: results has no {metric!r}")
            values.append(float(results[metric]))
        if not values:
            raise KDCoreError(f"selection candidate {cand['hp']} has no runs")
        scored.append({**cand, "values": values, "score": candidate_score(values)})
    return scored


def selection_record(
    candidates: list[dict[str, Any]], metric: str, teacher: str, student: str, method: str
) -> dict[str, Any]:
    """The winner file's content (format in docs/design.md, "Workflow") for one (pair, method) grid."""
    scored = score_candidates(candidates, metric)
    best = choose_winner(scored)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "selection",
        "pair": f"{teacher}-{student}",
        "teacher": teacher,
        "student": student,
        "method": method,
        "metric": metric,
        "winner": {"hp": best["hp"], "params": best["params"], "score": best["score"]},
        "candidates": [
            {"hp": c["hp"], "params": c["params"], "score": c["score"], "values": c["values"], "metrics": c["metrics"]}
            for c in scored
        ],
    }


def write_selection(
    candidates: list[dict[str, Any]], metric: str, teacher: str, student: str, method: str, out_path: str | Path
) -> dict[str, Any]:
    """Score the candidates, write the winner file to ``out_path`` atomically and return its content."""
    from kdcore.atomic import atomic_write_json

    record = selection_record(candidates, metric, teacher, student, method)
    atomic_write_json(out_path, record)
    return record
