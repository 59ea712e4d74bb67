"""workflow/rules/analysis.smk end to end on a hand-made study: every target, then the HTML report."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _analysis_study import make_study

REPO = Path(__file__).resolve().parents[1]

SNAKEFILE = """
import sys
sys.path.insert(0, {src!r})
METRICS = {metrics!r}
FIDELITY = {fidelity!r}
def all_run_metrics(wildcards=None): return METRICS
def all_fidelity_files(wildcards=None): return FIDELITY
def code_digest(*modules, scripts=()): return "test"
report: {workflow_rst!r}
include: {rules_common!r}
include: {rules!r}
rule all:
    input: analysis_targets
    default_target: True
"""


def write_analysis_snakefile(work: Path, metrics: list[Path], fidelity: list[Path]) -> None:
    """A Snakefile in ``work`` that runs the real analysis rules on the given run files."""
    (work / "Snakefile").write_text(
        SNAKEFILE.format(
            src=str(REPO / "src"),
            metrics=[str(p) for p in metrics],
            fidelity=[str(p) for p in fidelity],
            workflow_rst=str(REPO / "workflow/report/workflow.rst"),
            rules=str(REPO / "workflow/rules/analysis.smk"),
            rules_common=str(REPO / "workflow/rules/analysis_common.smk"),
        )
    )


@pytest.mark.slow
def test_analysis_rules_and_report(tmp_path):
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake not installed")
    m, f = make_study(tmp_path / "runs", seeds=(0, 1))
    write_analysis_snakefile(tmp_path, m, f)
    run = [sys.executable, "-m", "snakemake", "--cores", "2", "--quiet"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("gain_vs_capacity", "convergence", "fidelity", "stem_ablation", "clip_ablation"):
        assert (tmp_path / f"results/figures/{name}.pdf").is_file()
    assert (tmp_path / "results/tables/main_results.tex").is_file()
    assert (tmp_path / "results/benchmarks/analysis/stats.tsv").is_file()
    proc = subprocess.run([*run, "--report", "report.html"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "gain_vs_capacity.png" in html and "main_results.tex" in html
