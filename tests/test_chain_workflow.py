"""A distillation chain end to end: config/smoke-chain.yaml (ResNet-101 -> ResNet-50 (logit) -> ResNet-18, next to
ResNet-101 -> ResNet-18) runs in a copy of the workflow, from data to tables and figures (its data and ResNet-18
baselines taken from the shared smoke study); the chain's runs distil from the final run they name, and the
analysis reports the chain teacher by that run's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from _smoke_study import SmokeStudy
from _workflow_tools import copy_workflow, dry_run, snakemake

pytestmark = pytest.mark.slow

# the chain with fixed KD settings and no baseline controls: its grid runs and the chain teacher's control
# fidelity comparisons are planned in tests/test_chain.py, and the smoke study runs both kinds
FIXED = """\
selection: {enabled: false}
methods: {logit: {fixed: {alpha: 0.5, temperature: 4}}}
fidelity: {final: true, baseline_controls: false}
"""
CONFIGS = ("--configfile", "config/smoke.yaml", "config/smoke-chain.yaml", "fixed.yaml")
CHAIN = "resnet101.logit.resnet50"
ASSISTANT = "results/runs/final/resnet101-resnet50/logit/seed0"
# what the tests read: every run and its fidelity (through runs.csv), the tables and the figure below
TARGETS = (
    "results/tables/runs.csv",
    "results/tables/summary.json",
    "results/tables/main_results.tex",
    "results/figures/gain_vs_capacity.pdf",
)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, smoke_study: SmokeStudy) -> Path:
    root = copy_workflow(tmp_path_factory.mktemp("chain") / "wf")
    (root / "fixed.yaml").write_text(FIXED, encoding="utf-8")
    # the smoke study's data and ResNet-18 baselines have this study's settings and code: found, not retrained
    smoke_study.seed(root)
    plan = dry_run(root, *TARGETS, *CONFIGS)
    assert "prepare_data" not in plan.counts and plan.counts["train_baseline"] == 2  # the two ResNet-50 ones
    snakemake(root, *TARGETS, "--cores", "2", *CONFIGS, timeout=1200)
    return root


def test_chain_runs_distil_from_the_assistant_final_run(study: Path) -> None:
    runs = study / "results/runs"
    assert not (runs / "teachers" / CHAIN).exists()
    for seed in (0, 1):
        metrics = read_json(runs / f"final/{CHAIN}-resnet18/logit/seed{seed}/metrics.json")
        teacher = metrics["config"]["teacher"]
        assert teacher["checkpoint"] == f"{ASSISTANT}/best.pt" and teacher["arch"] == "resnet50"
        assert metrics["labels"]["teacher"] == CHAIN and metrics["labels"]["pair"] == f"{CHAIN}-resnet18"
    # fidelity is measured against the assistant's own run: its test logits at best
    table = pd.read_csv(study / "results/tables/runs.csv").set_index("run_id")
    fidelity = table.loc[f"final/{CHAIN}-resnet18/logit/seed1"]
    assistant = read_json(study / ASSISTANT / "metrics.json")
    assert fidelity["teacher_test_acc"] == pytest.approx(100 * assistant["results"]["test_acc_best"], abs=1e-4)
    assert 0 <= fidelity["agreement"] <= 100


def test_analysis_reports_the_chain_teacher(study: Path) -> None:
    tables = study / "results/tables"
    runs = pd.read_csv(tables / "runs.csv")
    assert set(runs["pair"].dropna()) >= {f"{CHAIN}-resnet18", "resnet101-resnet18", "resnet101-resnet50"}
    assistant = runs[(runs["stage"] == "final") & (runs["pair"] == "resnet101-resnet50")]["test_best"]
    premise = {r["pair"]: r for r in read_json(tables / "summary.json")["teacher_premise"]}
    assert premise[f"{CHAIN}-resnet18"]["teacher_mean"] == pytest.approx(assistant.mean())
    assert premise[f"{CHAIN}-resnet18"]["teacher_n"] == 2
    main = (tables / "main_results.tex").read_text(encoding="utf-8")
    assert r"R101$\rightarrow$R50 (logit)$\rightarrow$R18" in main
    assert (study / "results/figures/gain_vs_capacity.pdf").stat().st_size > 0


def test_finished_chain_study_is_up_to_date(study: Path) -> None:
    assert dry_run(study, *TARGETS, *CONFIGS).counts == {}
