"""Each figure and LaTeX table of the full study (config.yaml) plans only the jobs it needs (``snakemake -n``),
and a study with an optional part disabled plans neither that part's runs nor its tables and figures."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from _workflow_tools import snakemake

from kdcore.analysis import outputs

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake not installed")

# what the final KD runs need: data, the distillation teachers, their teacher-output caches (logit runs),
# baselines, the selection grid and winners
KD = {
    "prepare_data",
    "train_teacher",
    "teacher_cache",
    "train_baseline",
    "train_select",
    "select_winner",
    "train_final",
}
STEM = {"prepare_data", "train_stem", "train_baseline", "train_teacher"}
CLIP = {"prepare_data", "train_teacher", "train_select", "select_winner", "train_final", "train_clip"}
PART = "analysis_part_table"

EXPECTED_RULES = {
    "results/figures/gain_vs_capacity.pdf": KD | {PART, "analysis_moderation", "analysis_figure"},
    "results/figures/convergence.pdf": KD | {PART, "analysis_figure"},
    # fidelity is measured from the runs' stored test logits by the part table: no job of its own
    "results/figures/fidelity.pdf": KD | {PART, "analysis_comparisons", "analysis_figure"},
    "results/figures/stem_ablation.pdf": STEM | {PART, "analysis_stat_table", "analysis_figure"},
    "results/figures/clip_ablation.pdf": CLIP | {PART, "analysis_stat_table", "analysis_figure"},
    "results/tables/main_results.tex": KD | {PART, "analysis_comparisons", "analysis_latex"},
    "results/tables/kd_statistics.tex": KD | {PART, "analysis_comparisons", "analysis_latex"},
    "results/tables/teachers.tex": {"prepare_data", "train_teacher", PART, "analysis_latex"},
    "results/tables/fidelity.tex": KD | {PART, "analysis_latex"},
    "results/tables/stem_ablation.tex": STEM | {PART, "analysis_stat_table", "analysis_latex"},
    "results/tables/clip_ablation.tex": CLIP | {PART, "analysis_stat_table", "analysis_latex"},
    "results/tables/selection.tex": (KD - {"train_baseline"}) | {PART, "analysis_selection", "analysis_latex"},
    "results/tables/moderation.tex": KD | {PART, "analysis_moderation", "analysis_latex"},
    "results/tables/moderation_sensitivity.tex": KD | {PART, "analysis_moderation_sensitivity", "analysis_latex"},
    # tables drawn from the runs' stored test logits: one job each writes the CSV and the LaTeX table
    "results/tables/paired_images.tex": KD | {PART, "analysis_paired_images"},
    "results/tables/variance.tex": KD | {PART, "analysis_variance"},
    "results/tables/ensembles.tex": KD | {PART, "analysis_ensembles"},
}


def dry_run(work: Path, *targets: str, overlay: dict | None = None) -> subprocess.CompletedProcess:
    """``snakemake -n`` of the repository's Snakefile on config.yaml (plus ``overlay``) in an empty folder."""
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    args = [*targets, "-n", "--snakefile", str(REPO / "Snakefile")]
    if overlay:
        (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
        args += ["--configfile", "config.yaml", "overlay.yaml"]
    return snakemake(work, *args, timeout=300, check=False)


def job_counts(stdout: str) -> Counter:
    """Rule -> planned jobs, from the first "Job stats" table of a dry-run."""
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)})


def planned_outputs(stdout: str) -> set[str]:
    """Every output file of the planned jobs."""
    return {f.strip() for line in re.findall(r"^\s+output: (.*)$", stdout, re.M) for f in line.split(",")}


def test_every_output_is_covered():
    names = {f"results/figures/{n}.pdf" for n in outputs.FIGURES}
    names |= {f"results/tables/{n}.tex" for n in outputs.TEX_TABLES}
    names |= {f"results/tables/{n}.tex" for n in outputs.LOGIT_TABLES if n != "audit"}  # audit: only when asked
    assert names == set(EXPECTED_RULES)


@pytest.mark.parametrize("target", sorted(EXPECTED_RULES))
def test_target_plans_only_its_rules(tmp_path, target):
    proc = dry_run(tmp_path, target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert set(counts) == EXPECTED_RULES[target]
    name = Path(target).stem
    catalog = outputs.FIGURES if target.endswith(".pdf") else outputs.TEX_TABLES
    reads = catalog[name] if name in catalog else outputs.LOGIT_TABLES[name]
    assert counts[PART] == len(reads.parts())


def test_gain_vs_capacity_job_counts(tmp_path):
    """Only the distillation teachers (seed teachers.distill_seed of each of the 3 teachers), one part table
    (kd), the moderation table drawn from it and the figure: no stem, clip or fidelity jobs."""
    proc = dry_run(tmp_path, "results/figures/gain_vs_capacity.pdf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["train_teacher"] == 3 and counts[PART] == 1
    assert counts["train_final"] == 40 and counts["train_baseline"] == 10
    planned = planned_outputs(proc.stdout)
    assert "results/tables/parts/kd/runs.csv" in planned and "results/tables/moderation.csv" in planned
    assert counts["analysis_moderation"] == 1 and counts["analysis_figure"] == 1


def test_stem_figure_plans_only_stem_runs_and_their_cifar_arms(tmp_path):
    proc = dry_run(tmp_path, "results/figures/stem_ablation.pdf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    # R18 and R34 on 3 seeds each (their baselines), R50 on seed 0 (its teacher run, 200 epochs)
    expected = {"prepare_data": 1, "train_stem": 7, "train_baseline": 6, "train_teacher": 1, PART: 1}
    assert counts == Counter({**expected, "analysis_stat_table": 1, "analysis_figure": 1})


STUDY_OUTPUTS = {
    "selection": (
        {"selection": {"enabled": False}},
        {"train_select", "select_winner"},
        ["selection", "moderation_sensitivity"],
        [],
    ),
    "stem": ({"ablations": {"stem": {"enabled": False}}}, {"train_stem"}, ["stem_ablation"], ["stem_ablation"]),
    "clip": ({"ablations": {"clip": {"enabled": False}}}, {"train_clip"}, ["clip_ablation"], ["clip_ablation"]),
    "fidelity": ({"fidelity": {"final": False, "baseline_controls": False}}, set(), ["fidelity"], ["fidelity"]),
}
FIXED = {"logit": {"alpha": 0.5, "temperature": 4}, "feature": {"alpha": 0.5, "beta": 0.5}}


@pytest.mark.parametrize("switch", sorted(STUDY_OUTPUTS))
def test_disabled_part_has_no_runs_tables_or_figures(tmp_path, switch):
    overlay, rules, tex, figs = STUDY_OUTPUTS[switch]
    if switch == "selection":
        overlay = {**overlay, "methods": {m: {"fixed": p} for m, p in FIXED.items()}}
    proc = dry_run(tmp_path, overlay=overlay)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts, planned = job_counts(proc.stdout), planned_outputs(proc.stdout)
    assert not rules & set(counts), counts
    assert f"results/tables/parts/{switch}/runs.csv" not in planned
    for name in outputs.TEX_TABLES:
        assert (f"results/tables/{name}.tex" in planned) == (name not in tex), name
    for name in outputs.FIGURES:
        assert (f"results/figures/{name}.pdf" in planned) == (name not in figs), name
    assert "results/tables/summary.json" in planned and "results/tables/runs.csv" in planned


def test_asking_for_a_disabled_output_names_the_part(tmp_path):
    proc = dry_run(tmp_path, "results/figures/stem_ablation.pdf", overlay={"ablations": {"stem": {"enabled": False}}})
    assert proc.returncode != 0
    assert "figure 'stem_ablation' is drawn from the stem part of the study" in proc.stdout + proc.stderr
