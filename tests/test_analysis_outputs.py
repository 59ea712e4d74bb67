"""Figures, LaTeX tables (compiled with pdflatex when installed) and the paper-vs-reproduction table."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest
from _analysis_study import make_study

from kdcore.analysis import compare, figures, latex, table
from kdcore.analysis.outputs import FIGURES as FIGURE_READS
from kdcore.analysis.summary import write_statistics


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    m, f = make_study(root / "runs")
    paths = table.write_run_tables(m, f, {name: root / "tables" / f"{name}.csv" for name in table.RUN_TABLES})
    runs = table.read_table(paths["runs"])
    write_statistics(runs, root / "tables")
    return root, runs


def test_summary_json(study):
    import json

    root, _ = study
    summary = json.loads((root / "tables" / "summary.json").read_text())
    assert summary["metric"] == "test_best" and len(summary["comparisons"]) == 6
    assert summary["multiple_comparisons"]["m"] == 6
    assert {"cells", "selection", "stem_ablation", "clip_ablation"} <= set(summary)


@pytest.mark.parametrize("name", figures.FIGURES)
def test_figures_written(study, name):
    root, _ = study
    reads = FIGURE_READS[name]
    names = ["runs"] * bool(reads.runs) + ["history"] * reads.history + ["fidelity"] * reads.fidelity + [*reads.stats]
    inputs = {key: [root / "tables" / f"{key}.csv"] for key in names}
    written = figures.write_figure(name, inputs, root / "figures" / f"{name}.pdf")
    assert [p.suffix for p in written] == [".pdf", ".png"]
    assert written[0].read_bytes()[:4] == b"%PDF" and written[1].read_bytes()[:4] == b"\x89PNG"


def test_latex_tables_and_compile(study, tmp_path):
    root, runs = study
    written = latex.write_all(root / "tables", tmp_path, "test accuracy")
    assert {p.stem for p in written} == set(latex.TABLE_NAMES)
    main = (tmp_path / "main_results.tex").read_text()
    assert r"\toprule" in main and r"\label{tab:main}" in main and r"\caption{" in main
    assert r"\textbf{" in main and r"$\pm$" in main
    assert r"\textbf{" in (tmp_path / "selection.tex").read_text()
    comp = compare.compare_to_reference(runs, runs)
    (tmp_path / "comparison.tex").write_text(latex.tex_comparison(comp))
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed")
    names = [p.name for p in written] + ["comparison.tex"]
    (tmp_path / "doc.tex").write_text(latex.document(names))
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


@pytest.mark.slow
def test_comparison_against_itself_and_reduced_scale(study):
    _, runs = study
    full = runs.assign(synthetic=False, width=64)
    comp = compare.compare_to_reference(full, full)
    assert (comp["status"] == "compared").all()
    assert comp["within"].eq(True).all() and comp["difference"].abs().max() < 1e-9
    reduced = compare.compare_to_reference(runs, full)
    assert (reduced["status"] == "not comparable").all()
    assert reduced["reason"].str.contains("synthetic data").all()
    fewer = compare.compare_to_reference(full.assign(epochs=1), full)
    assert fewer["reason"].str.contains("epochs").all()


def test_comparison_interval_matches_welch(study):
    from scipy import stats as st

    _, runs = study
    paper = runs.assign(synthetic=False, width=64)
    ours = paper.copy()
    sel = ours["stage"] == "baseline"
    ours.loc[sel, "test_best"] = ours.loc[sel, "test_best"] + 1.0
    row = compare.compare_to_reference(ours, paper).query("quantity == 'baseline R18 accuracy'").iloc[0]
    x = ours[sel & (ours["student"] == "resnet18")]["test_best"]
    y = paper[sel & (paper["student"] == "resnet18")]["test_best"]
    ci = st.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert row["difference"] == pytest.approx(1.0)
    assert (row["interval_low"], row["interval_high"]) == pytest.approx((ci.low, ci.high))
    assert row["within"] == bool(ci.low <= 0 <= ci.high)
    one = (
        compare.compare_to_reference(ours[ours["seed"] == 0], paper)
        .query("quantity == 'baseline R18 accuracy'")
        .iloc[0]
    )
    assert one["ours_n"] == 1 and pd.notna(one["interval_low"])  # prediction interval from the paper's spread


def test_comparison_says_when_a_real_data_study_does_not_use_the_papers_split():
    """Real data (not synthetic) on another split (folder source, subset, other seed) is flagged per row."""
    cols = {"synthetic": [False], "width": [64], "epochs": [100], "n_train": [45000]}
    paper = pd.DataFrame({**cols, "split": ["paper"]})
    same = pd.DataFrame({**cols, "split": ["paper"]})
    other = pd.DataFrame({**cols, "split": ["other"]})
    assert compare.reduced_scale_reasons(same, paper) == []
    assert compare.reduced_scale_reasons(other, paper) == ["not the paper's train/val split"]
