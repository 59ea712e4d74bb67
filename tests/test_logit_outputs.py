"""The smoke study's runs keep their test logits; the tables drawn from them (paired images, variance,
ensembles) are built by the workflow; fidelity from the stored logits equals the study's fidelity.json files
within float16 rounding; the audit table is planned only with audit.test_every_epoch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdcore.analysis.logit_fidelity import fidelity_from_stored, fidelity_table_from_logits
from kdcore.analysis.logit_outputs import write_logit_table
from kdcore.analysis.table import read_table
from kdcore.predictions import read_test_logits
from kdcore.runfolder import TEST_LOGITS_FILE


def test_every_smoke_run_keeps_its_test_logits_and_the_run_table_names_them(smoke_study):
    root = smoke_study.root
    folders = [p.parent for p in sorted((root / "results" / "runs").rglob("metrics.json"))]
    assert folders and all((f / TEST_LOGITS_FILE).is_file() for f in folders)
    runs = read_table(root / "results" / "tables" / "runs.csv")
    assert (runs["logits"] != "").all()
    kd = runs[runs["stage"] == "final"]
    assert (kd["teacher_logits"] != "").all()
    fingerprints = {read_test_logits(root / p).labels_fingerprint for p in runs["logits"]}
    assert len(fingerprints) == 1


def test_fidelity_from_stored_logits_equals_the_smoke_studys_fidelity_files(smoke_study):
    root = smoke_study.root
    files = sorted((root / "results" / "runs").rglob("fidelity*.json"))
    assert files
    worst = 0.0
    for path in files:
        record = json.loads(path.read_text())
        student = read_test_logits(path.parent / TEST_LOGITS_FILE)
        teacher = read_test_logits(root / Path(record["teacher"]["checkpoint"]).parent / TEST_LOGITS_FILE)
        ours = fidelity_from_stored(student, teacher, list(record["per_class_acc_student"]))
        n = student.labels.size
        for key in ("student_test_acc", "teacher_test_acc", "top1_agreement"):
            assert round(ours[key] * n) == round(record[key] * n), (path, key)
        for key in ("kl_t1", "kl_t4", "ece_student", "ece_teacher"):
            assert ours[key] == pytest.approx(record[key], rel=2e-3, abs=2e-4), (path, key)
            worst = max(worst, abs(ours[key] - record[key]))
        assert ours["per_class_acc_student"] == pytest.approx(record["per_class_acc_student"], abs=1e-6)
    assert worst < 2e-3


def test_the_fidelity_table_from_stored_logits_equals_the_one_from_fidelity_files(smoke_study):
    tables = smoke_study.root / "results" / "tables"
    today = read_table(tables / "fidelity.csv").set_index(["run_id", "teacher"]).sort_index()
    runs = read_table(tables / "runs.csv")
    runs["logits"] = [str(smoke_study.root / p) for p in runs["logits"]]
    runs["teacher_logits"] = [str(smoke_study.root / p) if p else "" for p in runs["teacher_logits"]]
    ours = fidelity_table_from_logits(runs).set_index(["run_id", "teacher"]).sort_index()
    assert list(ours.index) == list(today.index) and (ours["control"] == today["control"]).all()
    for column in ("student_acc", "teacher_acc", "agreement"):
        assert np.allclose(ours[column], today[column], rtol=0, atol=1e-5), column
    for column in ("kl_t1", "kl_t4", "ece_student", "ece_teacher"):
        assert np.allclose(ours[column], today[column], rtol=2e-3, atol=2e-4), column


def test_the_workflow_builds_the_tables_drawn_from_stored_logits(smoke_study):
    tables = smoke_study.root / "results" / "tables"
    paired = read_table(tables / "paired_images.csv")
    runs = read_table(tables / "runs.csv")
    finals = runs[runs["stage"] == "final"]
    per_seed, pooled = paired[paired["seed"] != "pooled"], paired[paired["seed"] == "pooled"]
    assert len(per_seed) == len(finals) and len(pooled) == finals.groupby(["pair", "method"]).ngroups
    n = per_seed[["both_right", "fixed", "broken", "both_wrong"]].sum(axis=1)
    assert np.allclose(per_seed["kd_acc"] - per_seed["baseline_acc"], 100 * per_seed["net_fixed"] / n)
    variance = pd.read_csv(tables / "variance.csv")
    assert set(variance["stage"]) <= {"teacher", "baseline", "final"} and (variance["runs"] >= 2).all()
    ensembles = pd.read_csv(tables / "ensembles.csv")
    assert {"seed_ensemble", "teacher_student"} <= set(ensembles["kind"])
    for name in ("paired_images", "variance", "ensembles"):
        assert "\\begin{table}" in (tables / f"{name}.tex").read_text()
    assert not (tables / "audit.csv").exists()  # the smoke study does not audit


@pytest.mark.slow
def test_the_audit_table_is_planned_only_with_the_audit_flag(smoke_study, tmp_path):
    root = smoke_study.copy(tmp_path / "wf")
    (root / "config" / "audit-on.yaml").write_text("audit: {test_every_epoch: true}\n", encoding="utf-8")
    configs = ["--configfile", *smoke_study_configs(), "config/audit-on.yaml"]
    plan = subprocess.run(
        ["snakemake", "-n", *configs], cwd=root, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "analysis_audit" in plan and "train_" not in plan  # the flag alone retrains nothing


def smoke_study_configs() -> list[str]:
    from _smoke_study import CONFIGS

    return [c for c in CONFIGS if c != "--configfile"]


def test_an_audit_table_of_runs_without_audit_history_says_so(smoke_study, tmp_path):
    tables = smoke_study.root / "results" / "tables"
    out = write_logit_table(
        "audit", [tables / "runs.csv"], [tables / "history.csv"], tmp_path / "audit.csv", tmp_path / "audit.tex"
    )
    assert out.empty and "audit.test\\_every\\_epoch" in (tmp_path / "audit.tex").read_text()
