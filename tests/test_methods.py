"""Method declarations and the registry helpers; a toy method added from outside the package end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdcore.methods as methods
from kdcore import engine
from kdcore.checkpoint import save_model_checkpoint
from kdcore.config import resolve_config
from kdcore.data import prepare_dataset
from kdcore.errors import ConfigError
from kdcore.models import build_model

#: The example of docs/extending.md ("Adding a method"): CE plus a weighted MSE between the logits.
TOY_MODULE = '''
"""Toy: cross-entropy plus lam * MSE between student and teacher logits (an example method)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.methods.base import ForwardOutputs, HyperParameter, Method, cross_entropy


class Toy(Method):
    name = "toy"
    label = "Toy-KD"
    tex = r"Toy-KD$^\\dagger$"
    needs_teacher = True
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = (
        HyperParameter("lam", "l", "number", 1.0, minimum=0, label="lambda", tex=r"$\\lambda$"),
        HyperParameter("squared", "sq", "boolean", True, label="squared", tex="squared"),
    )

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        diff = outputs.student_logits.float() - outputs.teacher_logits.float()
        kd = diff.pow(2).mean() if self.params["squared"] else diff.abs().mean()
        return ce + self.params["lam"] * kd, {"ce": ce, "kd": kd, "mse": kd}


METHOD = Toy
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch) -> Path:
    """A directory holding toy.py, on the method search path for this test only."""
    directory = tmp_path / "more_methods"
    directory.mkdir()
    (directory / "toy.py").write_text(TOY_MODULE, encoding="utf-8")
    monkeypatch.setattr(methods, "__path__", list(methods.__path__))  # restored after the test
    methods.add_method_directory(directory)
    yield directory
    sys.modules.pop("kdcore.methods.toy", None)


def test_builtin_labels_and_hyperparameters_come_from_the_methods():
    assert methods.method_label("baseline") == "Baseline (CE)" and methods.method_tex("baseline") == "Baseline"
    assert [methods.method_tex(m) for m in ("logit", "feature", "dkd", "dist")] == [
        "Logit-KD",
        "Feature-KD",
        "DKD",
        "DIST",
    ]
    assert [hp.name for hp in methods.hyperparameters("logit")] == ["alpha", "temperature", "standardize"]
    assert [hp.short for hp in methods.hyperparameters("feature")] == ["a", "b", "normalize"]
    assert methods.hyperparameter("dkd", "warmup").type == "integer"
    assert methods.hyperparameter_columns(["logit", "feature", "dist"]) == [
        "alpha",
        "temperature",
        "standardize",
        "beta",
        "normalize",
        "gamma",
        "ce_weight",
    ]
    with pytest.raises(ConfigError, match="method 'logit' has no hyper-parameter 'beta'"):
        methods.hyperparameter("logit", "beta")


def test_folder_names_keep_the_established_abbreviations_and_parse_back():
    assert methods.hp_folder_name("logit", {"alpha": 0.5, "temperature": 4}) == "a0.5-T4"
    assert methods.hp_folder_name("feature", {"alpha": 0.3, "beta": 0.5}, shown=["alpha"]) == "a0.3"
    name = methods.hp_folder_name("dkd", {"beta": 8.0, "warmup": 20, "standardize": True, "ce_weight": 1e-5})
    assert name == "b8-w20-ztrue-ce1e-05"
    assert methods.parse_hp_folder("dkd", name) == {"beta": 8.0, "warmup": 20, "standardize": True, "ce_weight": 1e-5}
    assert methods.parse_hp_folder("logit", "a0.5-T4") == {"alpha": 0.5, "temperature": 4.0}
    for bad in ("a0.5-x3", "a0.5-a0.7", "a0.5T4", "ztrue-T"):
        with pytest.raises(ConfigError, match="not a hyper-parameter point of method 'logit'"):
            methods.parse_hp_folder("logit", bad)


def test_grid_points_name_and_check_every_point():
    points = methods.grid_points("dist", {"beta": [1, 2], "gamma": [2], "temperature": [1, 4]})
    assert [name for name, _ in points] == ["b1-T1", "b1-T4", "b2-T1", "b2-T4"]
    assert points[1][1] == {"beta": 1, "gamma": 2, "temperature": 4}
    with pytest.raises(ConfigError, match=r"'method.temperature': 0 is outside \(0, inf\]"):
        methods.grid_points("logit", {"alpha": [0.5], "temperature": [4, 0]})


def test_a_method_name_must_match_its_module(tmp_path, monkeypatch):
    (tmp_path / "mislabelled.py").write_text(TOY_MODULE, encoding="utf-8")
    monkeypatch.setattr(methods, "__path__", list(methods.__path__))
    methods.add_method_directory(tmp_path)
    try:
        with pytest.raises(ConfigError, match="kdcore.methods.mislabelled defines METHOD with name 'toy'"):
            methods.get_method("mislabelled")
    finally:
        sys.modules.pop("kdcore.methods.mislabelled", None)
    with pytest.raises(ConfigError, match="method directory .* does not exist"):
        methods.add_method_directory(tmp_path / "absent")


def test_toy_method_is_found_validated_and_described(toy_method):
    assert "toy" in methods.available_methods()
    toy = methods.get_method("toy")
    assert toy.defaults == {"lam": 1.0, "squared": True}
    assert methods.method_label("toy") == "Toy-KD" and methods.method_tex("toy") == r"Toy-KD$^\dagger$"
    assert methods.hyperparameter_columns(["logit", "toy"]) == ["alpha", "temperature", "standardize", "lam", "squared"]
    assert methods.hp_folder_name("toy", {"lam": 0.1, "squared": False}) == "l0.1-sqfalse"
    assert methods.parse_hp_folder("toy", "l0.1-sqfalse") == {"lam": 0.1, "squared": False}
    with pytest.raises(ConfigError, match=r"config key 'method.lam': -1 is outside \[0, inf\]"):
        toy.validate_params({"lam": -1})
    teacher = {"arch": "resnet18", "checkpoint": "t.pt"}
    cfg = resolve_config({"data": "d.pt", "model": {"arch": "resnet18"}, "teacher": teacher, "method": {"name": "toy"}})
    assert cfg["method"] == {"name": "toy", "lam": 1.0, "squared": True}
    with pytest.raises(ConfigError, match="config key 'teacher' is required by method 'toy'"):
        resolve_config({"data": "d.pt", "model": {"arch": "resnet18"}, "method": {"name": "toy", "lam": 2}})


def test_toy_method_trains_one_epoch_through_the_engine(toy_method, tmp_path):
    data = tmp_path / "dataset.pt"
    prepare_dataset(
        {"source": "synthetic", "synthetic": {"n_train": 96, "n_test": 32, "seed": 1}, "val_size": 32}, data
    )
    teacher_ckpt = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    save_model_checkpoint(
        teacher_ckpt,
        build_model("resnet18", width=4),
        {"arch": "resnet18", "width": 4, "stem": "cifar", "num_classes": 10},
    )
    config = {
        "data": str(data),
        "model": {"arch": "resnet18", "width": 4},
        "teacher": {"arch": "resnet18", "width": 4, "checkpoint": str(teacher_ckpt)},
        "method": {"name": "toy", "lam": 0.5},
        "train": {"epochs": 1, "batch_size": 32, "seed": 0},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32"},
    }
    out = tmp_path / "run"
    engine.train_run(config, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["method"] == {"name": "toy", "lam": 0.5, "squared": True}
    (entry,) = metrics["history"]
    assert entry["loss_mse"] > 0 and entry["loss"] == pytest.approx(entry["loss_ce"] + 0.5 * entry["loss_mse"])


def test_method_path_variable_reaches_a_new_process(toy_method):
    env = {**os.environ, methods.METHOD_PATH_VARIABLE: str(toy_method)}
    code = "from kdcore.methods import method_tex, available_methods; print(method_tex('toy'), available_methods())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("Toy-KD$^\\dagger$ ") and "'toy'" in out
