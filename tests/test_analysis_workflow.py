"""workflow/rules/analysis.smk end to end on a hand-made study: every target, then the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from _analysis_study import ANALYSIS_CONFIG, default_acc, make_study, run_analysis, write_analysis_snakefile


@pytest.mark.slow
def test_analysis_rules_and_report(analysis_study: Path) -> None:
    work = analysis_study
    for name in ("gain_vs_capacity", "convergence", "fidelity", "stem_ablation", "clip_ablation"):
        assert (work / f"results/figures/{name}.pdf").is_file()
    assert (work / "results/tables/main_results.tex").is_file()
    assert (work / "results/benchmarks/analysis/stats.tsv").is_file()
    # the moderation test: one row per teacher x method, analysis.min_effect_pp from the config, its LaTeX table
    moderation = pd.read_csv(work / "results/tables/moderation.csv")
    assert len(moderation) == 4 and set(moderation["method"]) == {"logit", "feature"}
    assert (moderation["min_effect_pp"] == ANALYSIS_CONFIG["min_effect_pp"]).all()
    r50 = moderation[moderation["teacher"] == "resnet50"]
    assert (r50["n_capacities"] == 2).all() and r50["p"].notna().all() and r50["conclusion"].str.len().gt(0).all()
    tex = (work / "results/tables/moderation.tex").read_text()
    assert r"\label{tab:moderation}" in tex and all(c in tex for c in r50["conclusion"])
    summary = json.loads((work / "results/tables/summary.json").read_text())
    assert summary["power"]["min_effect_pp"] == ANALYSIS_CONFIG["min_effect_pp"]
    assert len(summary["moderation"]["families"]) == 4
    assert (work / "results/figures/gain_vs_capacity.png").stat().st_size > 10_000
    html = (work / "results/report.html").read_text(errors="replace")
    assert "gain_vs_capacity.png" in html and "main_results.tex" in html
    assert "moderation.csv" in html and "moderation.tex" in html and "summary.json" in html
    assert "Does student capacity moderate the KD gain?" in html  # the figure's caption


def weak_r34_teacher(stage: str, arch: str, teacher: str | None, method: str, seed: int) -> float:
    """Accuracies of ``default_acc``, but teacher ResNet-34 is worse than its student's baseline."""
    if stage == "teacher" and arch == "resnet34":
        return 0.50 + 0.01 * seed
    return default_acc(stage, arch, teacher, method, seed)


@pytest.fixture(scope="module")
def minimal_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study without selection, fidelity or ablations whose ResNet-34 teacher is weaker than its student's
    baseline, analysed and reported."""
    work = tmp_path_factory.mktemp("minimal-study")
    m, f = make_study(work / "runs", seeds=(0, 1), acc=weak_r34_teacher)
    write_analysis_snakefile(work, m, f, disabled=("selection", "fidelity", "stem", "clip"))
    run_analysis(work)
    run_analysis(work, "--report", "report.html")
    return work


@pytest.mark.slow
def test_teacher_premise_warning_reaches_the_report(minimal_study: Path) -> None:
    """A teacher worse than its student's baseline: summary.json warns, and the warning shows in the report."""
    notes = json.loads((minimal_study / "results/tables/summary.json").read_text())["notes"]
    warning = [n for n in notes if n.startswith("teacher resnet34 ")]
    assert len(warning) == 1 and "does not beat the baseline of its student resnet18" in warning[0]
    assert warning[0] in (minimal_study / "report.html").read_text(errors="replace")


@pytest.mark.slow
def test_analysis_of_a_study_without_optional_parts(minimal_study: Path) -> None:
    """No selection, fidelity or ablations: the analysis succeeds with only the outputs those parts do not feed."""
    work = minimal_study
    assert sorted(p.stem for p in (work / "results/figures").glob("*.pdf")) == ["convergence", "gain_vs_capacity"]
    assert (work / "results/tables/moderation.csv").is_file()
    tex = sorted(p.stem for p in (work / "results/tables").glob("*.tex"))
    # the stored-logit tables are planned for any trained study; these hand-made runs keep no logits (empty rows)
    assert tex == ["ensembles", "kd_statistics", "main_results", "moderation", "paired_images", "teachers", "variance"]
    assert sorted(p.name for p in (work / "results/tables/parts").iterdir()) == ["kd", "teachers"]
    summary = json.loads((work / "results/tables/summary.json").read_text())
    assert summary["selection"] == [] and summary["stem_ablation"] == [] and summary["clip_ablation"] == []
    assert set(summary["runs_per_stage"]) == {"teacher", "baseline", "final"}
    assert len(summary["comparisons"]) == 6
