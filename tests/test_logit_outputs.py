"""The smoke study's runs keep their test logits; the tables drawn from them (fidelity, paired images,
variance, ensembles) are built by the workflow; its fidelity table equals fidelity measured from the
checkpoints themselves within float16 rounding; the audit table is planned only with audit.test_every_epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _workflow_tools import snakemake

from kdcore import engine
from kdcore.analysis.logit_outputs import write_logit_table
from kdcore.analysis.table import read_table
from kdcore.checkpoint import load_model
from kdcore.config import RUNTIME_DEFAULTS
from kdcore.data import load_dataset
from kdcore.devices import make_placement
from kdcore.fidelity import fidelity_measures
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


def test_the_smoke_studys_fidelity_table_equals_fidelity_from_the_checkpoints(smoke_study):
    """Each row of the workflow's fidelity table (from stored float16 logits) against the same measures on the
    float32 logits of the two checkpoints, computed afresh: equal within float16 rounding."""
    root = smoke_study.root
    table = read_table(root / "results" / "tables" / "fidelity.csv")
    runs = read_table(root / "results" / "tables" / "runs.csv").set_index("run_id")
    assert len(table) and table["control"].any() and (~table["control"]).any()
    data = load_dataset(root / "results" / "data" / "dataset.pt")
    placement = make_placement({**RUNTIME_DEFAULTS, "device": "cpu", "precision": "fp32"})

    def logits(run: Path) -> np.ndarray:
        model, _ = load_model(root / run / "best.pt")
        return engine.predict_logits(model, data.test_images, placement, 100, data.normalisation).numpy()

    labels = data.test_labels.numpy()
    for _, row in table.iterrows():
        student = Path(row["path"]).parent
        teacher = Path(runs.loc[row["run_id"], "teacher_logits"]).parent if not row["control"] else None
        if teacher is None:  # a control: the teacher run its pair's KD runs distil from
            kd = runs[(runs["stage"] == "final") & (runs["teacher"] == row["teacher"])]
            teacher = Path(kd["teacher_logits"].iloc[0]).parent
        full = fidelity_measures(logits(student), logits(teacher), labels, list(data.classes))
        n = labels.size
        assert round(row["student_acc"] * n / 100) == round(full["student_test_acc"] * n), row["run_id"]
        assert round(row["agreement"] * n / 100) == round(full["top1_agreement"] * n), row["run_id"]
        for key in ("kl_t1", "kl_t4", "ece_student", "ece_teacher"):
            assert row[key] == pytest.approx(full[key], rel=2e-3, abs=2e-4), (row["run_id"], key)


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
    plan = snakemake(root, "-n", *configs, timeout=300).stdout
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
