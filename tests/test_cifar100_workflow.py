"""The workflow on 100-class data: the synthetic CIFAR-100 smoke study (config/smoke-cifar100.yaml) runs end to
end, and every network, fidelity record and table takes its 100 classes and CIFAR-100 normalisation from the
dataset artefact; its step schedule reaches the runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from _workflow_tools import copy_workflow, dry_run, snakemake

from kdcore.augment import NORMALISATION
from kdcore.fidelity import fidelity_from_stored
from kdcore.predictions import read_test_logits
from kdcore.runfolder import TEST_LOGITS_FILE

pytestmark = pytest.mark.slow

SMOKE = "config/smoke-cifar100.yaml"
FIGURES = ("gain_vs_capacity", "convergence", "fidelity")
# what the tests read: every run and fidelity record (through runs.csv and the figures), the figures
TARGETS = ("results/tables/runs.csv", *(f"results/figures/{name}.pdf" for name in FIGURES))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_workflow(tmp_path_factory.mktemp("c100") / "wf")
    plan = dry_run(root, "--configfile", SMOKE)
    assert plan.counts["train_final"] == 2 and not [rule for rule in plan.counts if rule.startswith("fidelity")]
    snakemake(root, *TARGETS, "--cores", "2", "--configfile", SMOKE, timeout=1200)
    return root


def test_dataset_artefact_records_100_classes_and_cifar100_normalisation(study: Path) -> None:
    raw = torch.load(study / "results/data/dataset.pt", weights_only=True, mmap=True)
    assert raw["num_classes"] == 100 == len(raw["classes"]) and raw["dataset"] == "cifar100"
    mean, std = NORMALISATION["cifar100"]
    assert raw["normalisation"] == {"mean": list(mean), "std": list(std)}


def test_networks_have_100_outputs_and_runs_follow_the_step_schedule(study: Path) -> None:
    runs = study / "results/runs"
    teacher = read_json(runs / "teachers/resnet34/seed0/metrics.json")
    assert teacher["config"]["model"]["num_classes"] == 100 and teacher["data"]["dataset"] == "cifar100"
    assert teacher["config"]["train"]["schedule"] == "step"
    assert [h["lr"] for h in teacher["history"]] == pytest.approx([0.1, 0.01])  # x0.1 at the milestone, epoch 1
    ckpt = torch.load(runs / "teachers/resnet34/seed0/best.pt", weights_only=True)
    assert ckpt["num_classes"] == 100 and ckpt["state_dict"]["fc.weight"].shape[0] == 100
    final = read_json(runs / "final/resnet34-resnet18/logit/seed0/metrics.json")
    assert final["config"]["model"]["num_classes"] == final["config"]["teacher"]["num_classes"] == 100
    student = read_test_logits(runs / "final/resnet34-resnet18/logit/seed0" / TEST_LOGITS_FILE)
    teacher = read_test_logits(runs / "teachers/resnet34/seed0" / TEST_LOGITS_FILE)
    assert (
        student.logits_best.shape[1] == 100
        and len(fidelity_from_stored(student, teacher)["per_class_acc_student"]) == 100
    )
    fidelity = pd.read_csv(study / "results/tables/parts/fidelity/fidelity.csv")
    assert len(fidelity) == 2 and fidelity["agreement"].between(0, 100).all()


def test_run_table_holds_every_run(study: Path) -> None:
    with (study / "results/tables/runs.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    stages = sorted(r["stage"] for r in rows)
    assert stages.count("final") == 2 and stages.count("teacher") == 1 and stages.count("baseline") == 1
    for name in FIGURES:
        assert (study / f"results/figures/{name}.pdf").is_file()
