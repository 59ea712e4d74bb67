"""workflow/rules/analysis.smk end to end on a hand-made study: every target, then the HTML report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _analysis_study import default_acc, make_study

REPO = Path(__file__).resolve().parents[1]

SNAKEFILE = """
import sys
sys.path.insert(0, {src!r})
METRICS = {metrics!r}
FIDELITY = {fidelity!r}
RUNS = {runs!r}
def stage(name): return [p for p in METRICS if p.startswith(f"{{RUNS}}/{{name}}/")]
def all_run_metrics(wildcards=None): return METRICS
def all_fidelity_files(wildcards=None): return FIDELITY
def teacher_metrics(): return stage("teachers")
def baseline_metrics(): return stage("baselines")
def select_metrics(): return stage("select")
def final_metrics(): return stage("final")
def clip_metrics(): return stage("clip")
def clip_runs(): return [tuple(p.split("/")[-4].split("-")) + (p.split("/")[-3], 0) for p in stage("clip")]
def run_dir(stage, teacher, student, method, seed): return f"{{RUNS}}/{{stage}}/{{teacher}}-{{student}}/{{method}}/seed{{seed}}"
def stem_metrics():
    stem = stage("stem")
    arms = [f"{{RUNS}}/baselines/{{p.split('/')[-3].split('-')[0]}}/{{p.split('/')[-2]}}/metrics.json" for p in stem]
    return stem + arms
def code_digest(*modules, scripts=()): return "test"
config["analysis"] = {analysis!r}
report: {workflow_rst!r}
include: {rules_common!r}
include: {rules!r}
rule all:
    input: analysis_targets
    default_target: True
"""


#: Folders of the runs of each optional part of a study (workflow/rules/common.smk, run_dir).
OPTIONAL_FOLDERS = {"selection": "select", "stem": "stem", "clip": "clip"}

#: The ``analysis`` config of the hand-made studies: a smallest effect of interest other than the default.
ANALYSIS_CONFIG = {"min_effect_pp": 0.5}


def write_analysis_snakefile(
    work: Path, metrics: list[Path], fidelity: list[Path], disabled: tuple[str, ...] = ()
) -> None:
    """A Snakefile in ``work`` that runs the real analysis rules on the run files of ``make_study`` (under
    ``work/runs``), with the study's parts given by their folders as in workflow/rules/common.smk.
    ``disabled``: optional parts (selection, fidelity, stem, clip) left out of the study, as a config does."""
    skip = tuple(f"{work / 'runs'}/{OPTIONAL_FOLDERS[p]}/" for p in disabled if p in OPTIONAL_FOLDERS)
    metrics = [p for p in metrics if not str(p).startswith(skip)] if skip else metrics
    fidelity = [] if "fidelity" in disabled else fidelity
    (work / "Snakefile").write_text(
        SNAKEFILE.format(
            src=str(REPO / "src"),
            metrics=[str(p) for p in metrics],
            fidelity=[str(p) for p in fidelity],
            runs=str(work / "runs"),
            analysis=ANALYSIS_CONFIG,
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
    # the moderation test: one row per teacher x method, analysis.min_effect_pp from the config, its LaTeX table
    moderation = pd.read_csv(tmp_path / "results/tables/moderation.csv")
    assert len(moderation) == 4 and set(moderation["method"]) == {"logit", "feature"}
    assert (moderation["min_effect_pp"] == ANALYSIS_CONFIG["min_effect_pp"]).all()
    r50 = moderation[moderation["teacher"] == "resnet50"]
    assert (r50["n_capacities"] == 2).all() and r50["p"].notna().all() and r50["conclusion"].str.len().gt(0).all()
    tex = (tmp_path / "results/tables/moderation.tex").read_text()
    assert r"\label{tab:moderation}" in tex and all(c in tex for c in r50["conclusion"])
    summary = json.loads((tmp_path / "results/tables/summary.json").read_text())
    assert summary["power"]["min_effect_pp"] == ANALYSIS_CONFIG["min_effect_pp"]
    assert len(summary["moderation"]["families"]) == 4
    assert (tmp_path / "results/figures/gain_vs_capacity.png").stat().st_size > 10_000
    proc = subprocess.run([*run, "--report", "report.html"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "gain_vs_capacity.png" in html and "main_results.tex" in html
    assert "moderation.csv" in html and "moderation.tex" in html and "summary.json" in html
    assert "Does student capacity moderate the KD gain?" in html  # the figure's caption


@pytest.mark.slow
def test_teacher_premise_warning_reaches_the_report(tmp_path):
    """A teacher worse than its student's baseline: summary.json warns, and the warning shows in the report."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake not installed")

    def weak_r34_teacher(stage, arch, teacher, method, seed):
        return (
            0.50 + 0.01 * seed
            if stage == "teacher" and arch == "resnet34"
            else default_acc(stage, arch, teacher, method, seed)
        )

    m, f = make_study(tmp_path / "runs", seeds=(0, 1), acc=weak_r34_teacher)
    write_analysis_snakefile(tmp_path, m, f, disabled=("selection", "fidelity", "stem", "clip"))
    run = [sys.executable, "-m", "snakemake", "--cores", "2", "--quiet"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = json.loads((tmp_path / "results/tables/summary.json").read_text())["notes"]
    warning = [n for n in notes if n.startswith("teacher resnet34 ")]
    assert len(warning) == 1 and "does not beat the baseline of its student resnet18" in warning[0]
    proc = subprocess.run([*run, "--report", "report.html"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert warning[0] in (tmp_path / "report.html").read_text(errors="replace")


@pytest.mark.slow
def test_analysis_of_a_study_without_optional_parts(tmp_path):
    """No selection, fidelity or ablations: the analysis succeeds with only the outputs those parts do not feed."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake not installed")
    m, f = make_study(tmp_path / "runs", seeds=(0, 1))
    write_analysis_snakefile(tmp_path, m, f, disabled=("selection", "fidelity", "stem", "clip"))
    run = [sys.executable, "-m", "snakemake", "--cores", "2", "--quiet"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.stem for p in (tmp_path / "results/figures").glob("*.pdf")) == ["convergence", "gain_vs_capacity"]
    assert (tmp_path / "results/tables/moderation.csv").is_file()
    tex = sorted(p.stem for p in (tmp_path / "results/tables").glob("*.tex"))
    assert tex == ["kd_statistics", "main_results", "moderation", "teachers"]
    assert sorted(p.name for p in (tmp_path / "results/tables/parts").iterdir()) == ["kd", "teachers"]
    summary = json.loads((tmp_path / "results/tables/summary.json").read_text())
    assert summary["selection"] == [] and summary["stem_ablation"] == [] and summary["clip_ablation"] == []
    assert set(summary["runs_per_stage"]) == {"teacher", "baseline", "final"}
    assert len(summary["comparisons"]) == 6
