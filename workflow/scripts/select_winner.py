"""Workflow script: pick the winning hyper-parameters of one (pair, method) from its selection runs.

Inputs: ``runs`` (metrics.json of every grid point and selection seed, in the order of ``candidates``).
Params: ``candidates`` (JSON list of {hp, params, metrics: [paths]} in grid order), ``metric``, ``pair``,
``method``. Output: the winner file (format in docs/design.md, "Workflow").

The winner has the highest mean ``results[metric]`` over the selection seeds; ties go to the earlier
grid point, so the choice is deterministic.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
import json
from pathlib import Path
from statistics import fmean
from typing import Any

from _common import setup

SCHEMA_VERSION = 1


def score_candidates(candidates: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Each candidate with ``score`` (mean of ``metric`` over its runs) and per-run ``values``."""
    from kdcore.errors import KDCoreError

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
        scored.append({**cand, "values": values, "score": fmean(values)})
    return scored


def choose_winner(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate with the highest score; the first one in grid order among equals."""
    if not scored:
        from kdcore.errors import KDCoreError

        raise KDCoreError("selection has no candidates")
    best = scored[0]
    for cand in scored[1:]:
        if cand["score"] > best["score"]:
            best = cand
    return best


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.atomic import atomic_write_json

    metric = snakemake.params.metric
    scored = score_candidates(json.loads(snakemake.params.candidates), metric)
    best = choose_winner(scored)
    teacher, student = snakemake.params.pair
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": "selection",
        "pair": f"{teacher}-{student}",
        "teacher": teacher,
        "student": student,
        "method": snakemake.params.method,
        "metric": metric,
        "winner": {"hp": best["hp"], "params": best["params"], "score": best["score"]},
        "candidates": [
            {"hp": c["hp"], "params": c["params"], "score": c["score"], "values": c["values"], "metrics": c["metrics"]}
            for c in scored
        ],
    }
    atomic_write_json(snakemake.output[0], record)
    log.info("winner of %s %s: %s (%s %.4f)", record["pair"], record["method"], best["hp"], metric, best["score"])


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
