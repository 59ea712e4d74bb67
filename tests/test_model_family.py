"""An architecture family that is one module outside src/, and nothing else: a tiny convolutional family written
to a temporary folder and made visible with KDCORE_MODEL_PATH (or kdcore.models.add_model_directory) builds,
keeps the feature contract, trains as a baseline and as a feature-KD student of a ResNet teacher, passes the
study config, and is planned by the workflow under its own name, with its module in the runs' code digest."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from _workflow_tools import REPO, copy_workflow, dry_run

from kdcore import engine, models
from kdcore.analysis.latex import arch_sort_key, short, split_pair
from kdcore.config import load_config_file, merge_config, validate_study_config
from kdcore.data import prepare_dataset
from kdcore.provenance import run_code_digest

TINY_FAMILY = '''
"""tinycnn: two convolution stages and a linear classifier, the smallest network that keeps the contract."""

import torch
from torch import nn

from kdcore.models.base import Family, FeatureContract, StageSpec


class TinyCNN(nn.Module):
    def __init__(self, arch: str, num_classes: int) -> None:
        super().__init__()
        channels = {"tinycnn": 8, "tinycnn2x": 16}[arch]
        self.arch, self.width, self.stem, self.num_classes = arch, None, "cifar", num_classes
        self.stage1 = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.stage2 = nn.Sequential(
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU()
        )
        self.fc = nn.Linear(2 * channels, num_classes)
        self.feature_contract = FeatureContract((StageSpec(channels, 1), StageSpec(2 * channels, 2)))
        self.feature_channels = self.feature_contract.channels

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        logits = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(f2, 1), 1))
        return (logits, [f1, f2]) if return_features else logits


FAMILY = Family(
    name="tinycnn",
    architectures=("tinycnn", "tinycnn2x"),
    build=lambda arch, width, stem, num_classes: TinyCNN(arch, num_classes),
)
'''


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("models")
    (folder / "tinycnn.py").write_text(TINY_FAMILY, encoding="utf-8")
    models.add_model_directory(folder)
    yield folder
    # the other tests of this worker see the registry as shipped (tests/test_model_zoo.py lists it)
    models.__path__.remove(str(folder.resolve()))
    models._family_of_arch.cache_clear()
    sys.modules.pop("kdcore.models.tinycnn", None)


def test_the_family_builds_and_keeps_the_feature_contract(family_dir: Path) -> None:
    assert {"tinycnn", "tinycnn2x"} <= set(models.available_architectures())
    assert models.architecture_module("tinycnn") == "kdcore.models.tinycnn"
    for arch, channels in (("tinycnn", 8), ("tinycnn2x", 16)):
        model = models.build_model(arch, num_classes=100)
        logits, features = model(torch.zeros(2, 3, 32, 32), return_features=True)
        assert logits.shape == (2, 100)
        assert [tuple(f.shape[1:]) for f in features] == model.feature_contract.shapes(32)
        assert model.feature_channels == [channels, 2 * channels]
    with pytest.raises(Exception, match="width"):
        models.build_model("tinycnn", width=16)  # a family without widths refuses one


def test_the_family_trains_as_a_baseline_and_as_a_feature_kd_student(family_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.pt"
    prepare_dataset(
        {"source": "synthetic", "synthetic": {"n_train": 160, "n_test": 40, "seed": 2}, "val_size": 32}, data
    )
    runtime = {"device": "cpu", "threads": 1, "precision": "fp32"}
    common = {"data": str(data), "train": {"epochs": 1, "batch_size": 64}, "runtime": runtime}
    teacher = {**common, "model": {"arch": "resnet18", "width": 4}}
    engine.train_run(teacher, tmp_path / "teacher")
    baseline = engine.train_run({**common, "model": {"arch": "tinycnn"}}, tmp_path / "baseline")
    assert baseline["model"]["arch"] == "tinycnn" and baseline["results"]["epochs"] == 1
    student = {
        **common,
        "model": {"arch": "tinycnn"},
        "teacher": {"arch": "resnet18", "width": 4, "checkpoint": str(tmp_path / "teacher" / "best.pt")},
        "method": {"name": "feature", "alpha": 0.5, "beta": 0.5},
    }
    kd = engine.train_run(student, tmp_path / "kd")
    assert kd["teacher"]["arch"] == "resnet18" and kd["history"][0]["loss_kd"] > 0


def test_the_family_module_is_part_of_its_runs_code_digest(family_dir: Path) -> None:
    before = run_code_digest("baseline", archs=["tinycnn"])
    assert before != run_code_digest("baseline", archs=["resnet18"])
    source = (family_dir / "tinycnn.py").read_text(encoding="utf-8")
    try:
        (family_dir / "tinycnn.py").write_text(source + "\nTINY_REVISION = 2\n", encoding="utf-8")
        assert run_code_digest("baseline", archs=["tinycnn"]) != before
    finally:
        (family_dir / "tinycnn.py").write_text(source, encoding="utf-8")


def test_the_study_config_and_the_analysis_labels_take_the_new_names(family_dir: Path) -> None:
    base = merge_config(load_config_file(REPO / "config.yaml"), {"ablations": {"clip": {"enabled": False}}})
    study = validate_study_config(merge_config(base, {"pairs": [{"teacher": "resnet34", "student": "tinycnn2x"}]}))
    assert study["pairs"] == [{"teacher": "resnet34", "student": "tinycnn2x"}]
    assert split_pair("resnet34-tinycnn2x") == ("resnet34", "tinycnn2x") and short("tinycnn2x") == "tinycnn2x"
    assert arch_sort_key("resnet18") < arch_sort_key("tinycnn2x")  # other families after the ResNets
    with pytest.raises(Exception, match="unknown architecture 'tinycnn3x'"):
        validate_study_config(merge_config(base, {"pairs": [{"teacher": "resnet34", "student": "tinycnn3x"}]}))


def test_the_path_variable_reaches_a_new_process(family_dir: Path) -> None:
    env = {**os.environ, models.MODEL_PATH_VARIABLE: str(family_dir)}
    code = "from kdcore.models import architecture_module; print(architecture_module('tinycnn2x'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "kdcore.models.tinycnn"


@pytest.mark.slow
def test_the_workflow_plans_the_new_networks(family_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(models.MODEL_PATH_VARIABLE, str(family_dir))
    work = copy_workflow(tmp_path / "wf")
    # resnet34 -> resnet18 stays: the smoke study's clip ablation repeats that pair
    overlay = {"pairs": [{"teacher": "resnet34", "student": s} for s in ("resnet18", "tinycnn", "tinycnn2x")]}
    (work / "config" / "tiny.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    plan = dry_run(work, "--configfile", "config/smoke.yaml", "config/tiny.yaml")
    assert {w["student"] for w in plan.of("train_baseline")} == {"resnet18", "tinycnn", "tinycnn2x"}
    assert {(w["teacher"], w["student"]) for w in plan.of("train_final")} == {
        ("resnet34", "resnet18"),
        ("resnet34", "tinycnn"),
        ("resnet34", "tinycnn2x"),
    }
    assert "results/runs/final/resnet34-tinycnn2x/feature/seed1/metrics.json" in plan.text
