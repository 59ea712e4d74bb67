"""The paper's own runs as a study's runs: import its per-run results archive (kdcore.reference) and tabulate
the imported runs (kdcore.analysis.table), for an analysis-only study (``analysis.runs_from: reference``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kdcore.analysis.table import write_run_tables
from kdcore.reference import import_reference


def write_imported_run_tables(zip_path: str | Path, runs_dir: str | Path, outputs: Mapping[str, str | Path]) -> int:
    """Import the paper's per-run results archive into ``runs_dir`` (kdcore.reference.import_reference), write
    the run tables of the imported runs to ``outputs`` (kdcore.analysis.table.write_run_tables) and return the
    number of imported runs."""
    runs_dir = Path(runs_dir)
    n = import_reference(zip_path, runs_dir)
    write_run_tables(sorted(runs_dir.rglob("metrics.json")), sorted(runs_dir.rglob("fidelity.json")), outputs)
    return n
