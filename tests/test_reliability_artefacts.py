"""A corrupted or missing upstream artefact of finished runs is one error before anything is scheduled.

kdcore.runfolder.verify_study_artefacts checks what finished runs were made from (their checkpoints, the
teacher checkpoints they were distilled from, the dataset they were trained on); the workflow calls it when
the Snakefile is parsed (workflow/rules/common.smk, verify_finished_artefacts).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _workflow_tools import copy_workflow, snakemake

from kdcore import engine
from kdcore.data import prepare_dataset
from kdcore.errors import DataError
from kdcore.runfolder import verify_study_artefacts

WIDTH = 4
DATASET = Path("results/data/dataset.pt")
TEACHER = Path("results/runs/teachers/resnet18/seed0")
STUDENT = Path("results/runs/final/resnet18-resnet18/logit/seed0")


def run_config(teacher: Path | None) -> dict:
    config = {
        "data": str(DATASET),
        "model": {"arch": "resnet18", "width": WIDTH},
        "method": {"name": "logit"} if teacher else {"name": "baseline"},
        "train": {"epochs": 1, "batch_size": 64, "seed": 0},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32"},
    }
    if teacher is not None:
        config["teacher"] = {"arch": "resnet18", "width": WIDTH, "checkpoint": str(teacher / "best.pt")}
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A folder with results/data/dataset.pt, a finished teacher and a finished student distilled from it,
    made by the real engine with the workflow's relative paths."""
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        spec = {"source": "synthetic", "synthetic": {"n_train": 192, "n_test": 64, "seed": 3}, "val_size": 64}
        prepare_dataset(spec, DATASET)
        engine.train_run(run_config(None), TEACHER)
        engine.train_run(run_config(TEACHER), STUDENT)
    return root


@pytest.fixture
def copy(study, tmp_path, monkeypatch) -> Path:
    root = Path(shutil.copytree(study, tmp_path / "study"))
    monkeypatch.chdir(root)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_intact_study_passes(copy):
    verify_study_artefacts("results/runs", DATASET)


def test_a_truncated_teacher_checkpoint_is_one_error_naming_it(copy):
    best = TEACHER / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        verify_study_artefacts("results/runs", DATASET)
    message = str(info.value)
    assert message.startswith(f"{best} changed after its run finished")
    assert "1 finished run(s) were distilled from it; nothing was deleted" in message


def test_a_dataset_with_one_label_edited_is_one_error_naming_it(copy):
    obj = torch.load(DATASET, weights_only=True)
    obj["train_labels"][0] = (obj["train_labels"][0] + 1) % 10
    torch.save(obj, DATASET)
    with pytest.raises(DataError, match=r"dataset.pt: fingerprint mismatch.*2 finished run\(s\) were trained on it"):
        verify_study_artefacts("results/runs", DATASET)


def test_a_deleted_checkpoint_of_a_finished_run_is_one_error(copy):
    (TEACHER / "best.pt").unlink()
    with pytest.raises(DataError, match=rf"{TEACHER / 'best.pt'} is missing, but its run finished"):
        verify_study_artefacts("results/runs", DATASET)


def test_a_teacher_retrained_on_purpose_is_not_corruption(copy):
    engine.train_run({**run_config(None), "train": {**run_config(None)["train"], "seed": 1}}, TEACHER, force=True)
    verify_study_artefacts("results/runs", DATASET)  # the student is outdated (Snakemake reruns it), not broken


@pytest.mark.slow
def test_the_workflow_refuses_to_schedule_on_a_corrupted_teacher_and_deletes_nothing(copy):
    smoke = "config/smoke.yaml"
    copy_workflow(copy)
    best = TEACHER / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    before = snapshot(copy / "results")
    proc = snakemake(copy, "-n", "--cores", "1", "--configfile", smoke, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert f"{best} changed after its run finished" in output and "Traceback" not in output
    assert snapshot(copy / "results") == before
