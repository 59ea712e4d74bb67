"""The whole results stage in one call (for the CLI, tests and users without Snakemake).

The workflow runs the same stages as separate jobs (workflow/rules/analysis.smk); each stage lives in its
own module so a plotting edit re-runs only figure jobs. Imports are local so this module's digest does not
pull the stages into the workflow's per-rule code digests.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def run_all(
    metrics_paths: Iterable[str | Path],
    fidelity_paths: Iterable[str | Path],
    out_root: str | Path,
    metric: str = "test_best",
) -> dict[str, list[Path]]:
    """Tables (``out_root/tables``: CSV, summary.json, .tex) and figures (``out_root/figures``) of a study."""
    from kdcore.analysis import figures, latex, stats, table

    out_root = Path(out_root)
    tables_dir, figures_dir = out_root / "tables", out_root / "figures"
    written = table.write_run_tables(metrics_paths, fidelity_paths, tables_dir)
    runs = table.read_table(written["runs"])
    stat_paths = stats.write_statistics(runs, tables_dir, metric)
    tex = latex.write_all(tables_dir, tables_dir, stats.METRIC_LABELS[metric])
    figs = [
        p
        for name in figures.FIGURES
        for p in figures.write_figure(name, tables_dir, figures_dir / f"{name}.pdf", metric)
    ]
    return {"tables": list(written.values()) + list(stat_paths.values()) + tex, "figures": figs}


def run_reference(zip_path: str | Path, out_root: str | Path, metric: str = "test_best") -> dict[str, list[Path]]:
    """Import the paper's results zip into ``out_root/runs`` and run the whole analysis on it."""
    from kdcore.reference import import_reference

    out_root = Path(out_root)
    import_reference(zip_path, out_root / "runs")
    metrics = sorted((out_root / "runs").rglob("metrics.json"))
    fidelity = sorted((out_root / "runs").rglob("fidelity.json"))
    return run_all(metrics, fidelity, out_root, metric)
