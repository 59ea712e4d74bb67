"""config/paper-runs.yaml: the analysis-only study of the paper's imported runs, on a synthetic zip in the
paper's layout (every member of kdcore.reference.expected_members, made-up accuracies): the parts of the
imported study, a plan with no training job, and (slow) every figure, table and the report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import yaml
from _workflow_tools import snakemake

from kdcore.analysis import outputs
from kdcore.analysis.parts import part_tables
from kdcore.analysis.table import build_fidelity_table, build_history_table, build_run_table
from kdcore.errors import DataError
from kdcore.reference import classify_member, expected_members, import_reference

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
#: Made-up test accuracies (fractions) of each kind of run; seed noise is added.
ACCURACY = {"teacher": 0.955, "baseline": 0.945, "select": 0.946, "final": 0.947, "clip": 0.940}


def _result(member: str, rng: np.random.Generator) -> dict:
    """A results.json in the paper's format for zip member ``member`` (fields from its path)."""
    stage, f = classify_member(member)
    method = f.get("method", "none")
    acc = ACCURACY.get(stage, 0.945 if f.get("stem") == "cifar" else 0.88) + rng.normal(0, 0.001)
    out = {
        "model": f["student"],
        "teacher": f.get("teacher"),
        "kd_type": method,
        "alpha": float(f.get("alpha", 0.5)),
        "temperature": float(f.get("temp", 4)),
        "feat_beta": 0.5,
        "stem": f.get("stem", "cifar"),
        "seed": int(f["seed"]),
        "epochs": EPOCHS,
        "best_val_acc": acc + 0.002,
        "best_val_epoch": EPOCHS,
        "test_acc_best": acc,
        "test_acc_final": acc - 0.001,
        "history": [
            {"epoch": e + 1, "val_acc": acc * (e + 1) / EPOCHS, "loss_total": 1.0 / (e + 1), "train_acc": 0.5}
            for e in range(EPOCHS)
        ],
    }
    if method == "feature":
        out["no_proj_clip"] = stage == "clip"
    return out


def _fidelity(result: dict, rng: np.random.Generator) -> dict:
    return {
        "student_arch": result["model"],
        "teacher_arch": result["teacher"],
        "student_test_acc": result["test_acc_best"],
        "teacher_test_acc": ACCURACY["teacher"],
        "top1_agreement": 0.96 + rng.normal(0, 0.002),
        "kl_t1": 0.15,
        "kl_t4": 0.02,
    }


def paper_zip(path: Path, seed: int = 0) -> Path:
    """A zip with every member of the paper's v2 layout (126 runs, 40 fidelity files), synthetic numbers."""
    rng = np.random.default_rng(seed)
    members = expected_members()
    results = {m: _result(m, rng) for m in members if m.endswith("/results.json")}
    with zipfile.ZipFile(path, "w") as zf:
        for member in members:
            if member.endswith("/results.json"):
                data = results[member]
            else:
                data = _fidelity(results[str(PurePosixPath(member).parent / "results.json")], rng)
            zf.writestr(member, json.dumps(data))
    return path


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory) -> Path:
    return paper_zip(tmp_path_factory.mktemp("paper") / "paper-v2-runs.zip")


def test_parts_of_the_imported_study(zip_path, tmp_path):
    assert import_reference(zip_path, tmp_path / "runs") == 126
    metrics, fidelity = sorted((tmp_path / "runs").rglob("metrics.json")), sorted((tmp_path / "runs").rglob("*.json"))
    fidelity = [p for p in fidelity if p.name == "fidelity.json"]
    runs = build_run_table(metrics, fidelity)
    fid, history = build_fidelity_table(fidelity, runs), build_history_table(metrics)
    parts = {p: part_tables(runs, fid, history, p) for p in outputs.PARTS}
    stages = {p: dict(t["runs"]["stage"].value_counts()) for p, t in parts.items()}
    assert stages["teachers"] == {"teacher": 9}
    assert stages["kd"] == {"baseline": 10, "final": 40}
    assert stages["selection"] == {"select": 48, "final": 40}
    assert stages["fidelity"] == {"final": 40}
    assert stages["stem"] == {"stem": 14}  # the paper trains both stems of each architecture
    # the clip ablation (R50->R18 feature) and the corrected arm: the final runs of that pair and method
    clip = parts["clip"]["runs"]
    assert stages["clip"] == {"clip": 5, "final": 5} and set(clip["pair"]) == {"resnet50-resnet18"}
    assert set(clip["method"]) == {"feature"}
    assert len(parts["fidelity"]["fidelity"]) == 40 and parts["kd"]["fidelity"].empty
    assert len(parts["kd"]["history"]) == 50 * EPOCHS
    assert set(parts["kd"]["history"]["run_id"]) == set(parts["kd"]["runs"]["run_id"])
    with pytest.raises(DataError, match="unknown part"):
        part_tables(runs, fid, history, "grid")


def _snakemake(work: Path, zip_file: Path | None, *args: str) -> subprocess.CompletedProcess:
    """snakemake on the repository's Snakefile with config/paper-runs.yaml in ``work``, the zip set to
    ``zip_file`` (by an overlay: the rest of paper-runs.yaml is used as it is)."""
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    shutil.copy(REPO / "config/paper-runs.yaml", work / "paper-runs.yaml")
    overlay = {"analysis": {"reference_zip": str(zip_file) if zip_file else None}}
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    args = ("--snakefile", str(REPO / "Snakefile"), *args, "--configfile", "paper-runs.yaml", "overlay.yaml")
    return snakemake(work, *args, timeout=600, check=False)


def _planned_rules(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


#: Every output of the analysis-only study: whole-study tables, statistics tables, figures, LaTeX tables.
EXPECTED = (
    [f"results/paper/tables/{n}" for n in ("runs.csv", "summary.json")]
    + [f"results/paper/tables/{n}.csv" for n in outputs.STAT_TABLES]
    + [f"results/paper/figures/{n}.{ext}" for n in outputs.FIGURES for ext in ("pdf", "png")]
    + [f"results/paper/tables/{n}.tex" for n in outputs.TEX_TABLES]
)

needs_snakemake = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake not installed")


@needs_snakemake
def test_plan_has_no_training_job(zip_path, tmp_path):
    proc = _snakemake(tmp_path, zip_path, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = _planned_rules(proc.stdout)
    assert not [r for r in planned if r.startswith(("train_", "fidelity_", "prepare_data", "select_winner"))]
    assert planned["analysis_reference"] == 1 and planned["analysis_reference_part_table"] == len(outputs.PARTS)
    assert "analysis_comparison" not in planned  # the paper against itself is no comparison
    outputs_planned = {
        f.strip() for line in re.findall(r"^\s+output: (.*)$", proc.stdout, re.M) for f in line.split(",")
    }
    assert set(EXPECTED) <= outputs_planned
    assert not [f for f in outputs_planned if f.startswith("results/runs/")]


@needs_snakemake
def test_reference_study_without_zip_is_one_error_naming_the_key(tmp_path):
    proc = _snakemake(tmp_path, None, "-n")
    assert proc.returncode != 0
    assert (
        "config key 'analysis.reference_zip' is required when analysis.runs_from is 'reference'"
        in proc.stdout + proc.stderr
    )


@pytest.mark.slow
@needs_snakemake
def test_every_output_and_the_report(zip_path, tmp_path):
    proc = _snakemake(tmp_path, zip_path, "--cores", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    missing = [f for f in EXPECTED if not (tmp_path / f).is_file()]
    assert not missing
    assert not (tmp_path / "results/runs").exists() and not (tmp_path / "results/tables").exists()
    summary = json.loads((tmp_path / "results/paper/tables/summary.json").read_text())
    assert summary["moderation"]["families"]
    proc = _snakemake(tmp_path, zip_path, "--report", "results/paper/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tmp_path / "results/paper/report.html").read_text(errors="replace")
    assert "gain_vs_capacity.png" in html and "moderation.tex" in html and "summary.json" in html
