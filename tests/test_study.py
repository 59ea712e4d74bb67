"""kdcore.study: a study's runs, fidelity evaluations and selections, built once from its config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdcore.config import load_study_config, merge_config, validate_study_config
from kdcore.errors import ConfigError
from kdcore.models import available_architectures
from kdcore.study import (
    FOLDER_PATTERNS,
    STAGES,
    build_study,
    folder_root,
    network_regex,
    run_config,
    run_folder,
    teacher_regex,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper_study():
    return build_study(load_study_config([REPO / "config.yaml"]))


def test_the_paper_study_has_the_papers_runs(paper_study):
    counts = {stage: len(paper_study.of_stage(stage)) for stage in STAGES}
    assert counts == {"teacher": 9, "baseline": 10, "select": 48, "final": 40, "stem": 7, "clip": 5}
    assert len(paper_study.fidelity) == 60 and len(paper_study.selections) == 8
    assert len({run.folder for run in paper_study.runs}) == len(paper_study.runs)


def test_a_run_knows_its_folder_inputs_and_parameters(paper_study):
    run = paper_study.run("select", teacher="resnet50", student="resnet18", method="logit", hp="a0.7-T4", seed=0)
    assert run.folder == "select/resnet50-resnet18/logit/a0.7-T4/seed0"
    assert run.teacher_run == "teachers/resnet50/seed0" and run.winner is None
    assert run.params == {"alpha": 0.7, "temperature": 4}
    final = paper_study.run("final", teacher="resnet50", student="resnet18", method="logit", seed=3)
    assert final.winner == "selection/resnet50-resnet18/logit.json" and final.params is None
    assert run_folder(final.stage, **final.wildcards) == final.folder
    with pytest.raises(ConfigError, match="the study has no run final/resnet50-resnet18/logit/seed99"):
        paper_study.run("final", teacher="resnet50", student="resnet18", method="logit", seed=99)


def test_each_stem_run_is_followed_by_its_cifar_arm(paper_study):
    runs = list(paper_study.runs)
    for index, run in enumerate(runs):
        if run.stage == "stem":
            assert run.stem == "imagenet" and run.cifar_arm in {r.folder for r in runs[: index + 2]}
    stem = paper_study.of_stage("stem")[0]
    assert folder_root(stem.stage) == "stem" and stem.folder.startswith(f"stem/{stem.network}-imagenet/")


def test_fidelity_checks_name_the_student_run_and_the_teacher_run_it_distils_from():
    study = build_study(load_study_config([REPO / "config.yaml", REPO / "config/smoke.yaml"]))
    folders = {run.folder: run for run in study.runs}
    assert {check.stage for check in study.fidelity} == {"final", "baseline"}
    for check in study.fidelity:
        student, teacher = folders[check.student_run], folders[check.teacher_run]
        assert (student.stage, student.network, student.seed) == (check.stage, check.student, check.seed)
        assert teacher.stage == "teacher" and check.teacher.startswith(teacher.network)
        if check.stage == "final":
            assert student.teacher_run == check.teacher_run and student.method == check.method


def test_patterns_cover_every_stage():
    assert set(FOLDER_PATTERNS) == set(STAGES)


def test_cross_key_rules_are_checked_by_kdcore():
    base = load_study_config([REPO / "config.yaml"])
    without_fixed = merge_config(base, {"selection": {"enabled": False}})
    without_fixed["methods"]["logit"].pop("fixed", None)
    with pytest.raises(ConfigError, match="config key 'methods.logit.fixed' is required when selection.enabled"):
        validate_study_config(without_fixed)
    reference = merge_config(base, {"analysis": {"runs_from": "reference", "reference_zip": None}})
    with pytest.raises(ConfigError, match="config key 'analysis.reference_zip' is required"):
        validate_study_config(reference)


def test_network_names_come_from_the_registry():
    network, teacher = re.compile(network_regex()), re.compile(teacher_regex())
    for arch in available_architectures():
        assert network.fullmatch(arch) and network.fullmatch(f"{arch}-w16")
    assert teacher.fullmatch("resnet101.logit.resnet50-w16") and not network.fullmatch("resnet18-resnet34")
    assert not network.fullmatch("vgg11")


def test_run_configs_carry_the_runs_inputs(paper_study):
    config = load_study_config([REPO / "config.yaml"])
    run = paper_study.run("clip", teacher="resnet50", student="resnet18", method="feature", seed=1)
    cfg = run_config(run, config, "results/runs", "results/data/dataset.pt")
    assert cfg["teacher"]["checkpoint"] == "results/runs/teachers/resnet50/seed0/best.pt"
    assert cfg["train"]["clip_scope"] == config["ablations"]["clip"]["clip_scope"] and cfg["method"] == {
        "name": "feature"
    }
    assert cfg["labels"] == {
        "stage": "clip",
        "run_id": "clip/resnet50-resnet18/feature/seed1",
        "pair": "resnet50-resnet18",
        "teacher": "resnet50",
        "student": "resnet18",
        "method": "feature",
    }
