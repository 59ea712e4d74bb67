"""The training engine on tiny synthetic data: pairing, frozen teacher, resume, clipping, errors."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from kdcore import engine
from kdcore.checkpoint import load_model, save_model_checkpoint
from kdcore.config import resolve_config
from kdcore.data import prepare_dataset
from kdcore.errors import CheckpointError, ConfigError, TrainingError
from kdcore.models import build_model

WIDTH = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.pt"
    prepare_dataset(
        {"source": "synthetic", "synthetic": {"n_train": 320, "n_test": 100, "seed": 3}, "val_size": 64}, path
    )
    return path


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "best.pt"
    torch.manual_seed(11)
    model = build_model("resnet34", width=WIDTH)
    # give BatchNorm non-trivial running statistics so that a moving teacher would be visible
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    save_model_checkpoint(path, model, {"arch": "resnet34", "width": WIDTH, "stem": "cifar", "num_classes": 10})
    return path


def run_config(dataset: Path, method: dict | None = None, teacher: Path | None = None, **train) -> dict:
    config = {
        "data": str(dataset),
        "model": {"arch": "resnet18", "width": WIDTH},
        "method": method or {"name": "baseline"},
        "train": {"epochs": 2, "batch_size": 64, "seed": 5, **train},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32"},
        "labels": {"stage": "test"},
    }
    if teacher is not None:
        config["teacher"] = {"arch": "resnet34", "width": WIDTH, "checkpoint": str(teacher)}
    return config


def record_batches(monkeypatch) -> list[torch.Tensor]:
    """Record every augmented training batch that reaches a step function."""
    seen: list[torch.Tensor] = []
    original = engine.augment_batch

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append((out[0] if isinstance(out, tuple) else out).clone())
        return out

    monkeypatch.setattr(engine, "augment_batch", spy)
    return seen


def test_baseline_and_kd_runs_with_one_seed_are_paired(dataset, teacher_ckpt, monkeypatch):
    base = resolve_config(run_config(dataset))
    kd = resolve_config(run_config(dataset, {"name": "feature", "alpha": 0.5}, teacher_ckpt))
    base["model"]["num_classes"] = kd["model"]["num_classes"] = 10  # as the engine fills it from the dataset
    s1 = engine.build_student(base["model"], base["train"]["seed"])
    s2 = engine.build_student(kd["model"], kd["train"]["seed"])
    assert all(torch.equal(a, b) for a, b in zip(s1.state_dict().values(), s2.state_dict().values(), strict=False))
    other = engine.build_student(base["model"], 6)
    assert not torch.equal(s1.conv1.weight, other.conv1.weight)

    seen = record_batches(monkeypatch)
    engine.train_run(run_config(dataset, epochs=1), dataset.parent / "paired-base")
    base_batches = list(seen)
    seen.clear()
    engine.train_run(
        run_config(dataset, {"name": "feature", "alpha": 0.5}, teacher_ckpt, epochs=1), dataset.parent / "paired-kd"
    )
    assert len(base_batches) == len(seen) == 4  # 256 train images, batch 64
    assert all(torch.equal(a, b) for a, b in zip(base_batches, seen, strict=False))


def test_teacher_stays_frozen_in_eval_mode(dataset, teacher_ckpt, monkeypatch):
    captured = {}
    original = engine.load_teacher

    def keep(spec):
        captured["teacher"] = original(spec)
        return captured["teacher"]

    monkeypatch.setattr(engine, "load_teacher", keep)
    before, _ = load_model(teacher_ckpt)
    engine.train_run(run_config(dataset, {"name": "logit"}, teacher_ckpt), dataset.parent / "frozen")
    teacher = captured["teacher"]
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()
    for key, value in before.state_dict().items():
        assert torch.equal(value, after[key]), f"teacher tensor {key} moved during training"


def test_metrics_json_records_history_results_and_environment(dataset, teacher_ckpt):
    out = dataset.parent / "metrics-run"
    engine.train_run(run_config(dataset, {"name": "feature"}, teacher_ckpt, epochs=3), out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and metrics["config"]["method"]["beta"] == 0.5
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    first = metrics["history"][0]
    for key in (
        "loss",
        "loss_ce",
        "loss_kd",
        "loss_mse",
        "loss_cos",
        "train_acc",
        "val_acc",
        "lr",
        "grad_norm_max",
        "proj_grad_norm_max",
        "seconds",
        "images_per_s",
    ):
        assert key in first
    assert first["lr"] == pytest.approx(0.1)
    assert metrics["history"][1]["lr"] == pytest.approx(1e-4 + (0.1 - 1e-4) * 0.75)
    assert first["proj_grad_norm_max"] > 0
    res = metrics["results"]
    assert 0 <= res["test_acc_best"] <= 1 and 0 <= res["test_acc_final"] <= 1
    assert res["best_val_acc"] == max(h["val_acc"] for h in metrics["history"])
    assert metrics["environment"]["torch"] == torch.__version__ and metrics["environment"]["threads"] == 1
    assert metrics["data"]["synthetic"] is True and metrics["teacher"]["arch"] == "resnet34"
    assert {p.name for p in out.iterdir()} == {"metrics.json", "best.pt", "final.pt", "test_logits.npz"}


def test_clip_scope_all_clips_projections_and_student_only_does_not(dataset, teacher_ckpt, monkeypatch):
    records = []
    original = engine.clip_gradients

    def spy(student_params, extra_params, max_norm, scope):
        total, proj = original(student_params, extra_params, max_norm, scope)
        after_student = engine.grad_norm(student_params)
        after_proj = engine.grad_norm(extra_params)
        records.append((scope, total.item(), proj.item(), after_student.item(), after_proj.item()))
        return total, proj

    monkeypatch.setattr(engine, "clip_gradients", spy)
    for scope in ("all", "student_only"):
        engine.train_run(
            run_config(dataset, {"name": "feature"}, teacher_ckpt, epochs=1, clip_norm=0.01, clip_scope=scope),
            dataset.parent / f"clip-{scope}",
        )
    for scope, total, proj, after_s, after_p in records:
        assert total > 0.01 and proj > 0
        if scope == "all":
            assert (after_s**2 + after_p**2) ** 0.5 == pytest.approx(0.01, rel=1e-3)
        else:
            assert after_s == pytest.approx(0.01, rel=1e-3)
            assert after_p == pytest.approx(proj, rel=1e-5)  # projections left unclipped: the v1 bug


def _train_in_child(config: dict, out: str) -> None:
    engine.train_run(config, out)


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(dataset, teacher_ckpt, tmp_path):
    config = run_config(dataset, {"name": "logit"}, teacher_ckpt, epochs=4)
    config["runtime"]["log_every_epoch"] = False
    straight = engine.train_run(config, tmp_path / "straight")

    out = tmp_path / "killed"
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_train_in_child, args=(config, str(out)))
    child.start()
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert (out / "last.pt").exists() and not (out / "metrics.json").exists()
    done = torch.load(out / "last.pt", weights_only=True)["epochs_done"]
    assert 1 <= done < 4
    # Snakemake deletes the declared outputs of a failed job: resuming must not need them
    (out / "best.pt").unlink(missing_ok=True)

    resumed = engine.train_run(config, out)
    for key in ("loss", "train_acc", "val_acc", "grad_norm_max"):
        assert [h[key] for h in resumed["history"]] == [h[key] for h in straight["history"]], key
    for key in ("best_val_acc", "best_epoch", "test_acc_best", "test_acc_final"):
        assert resumed["results"][key] == straight["results"][key]
    a = torch.load(out / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_the_run_naming_epoch_and_step(dataset, tmp_path):
    config = run_config(dataset, lr=1e30, clip_norm=1e30, epochs=3)
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch \d+, step \d+"):
        engine.train_run(config, tmp_path / "nan")
    assert not (tmp_path / "nan" / "metrics.json").exists()


def test_missing_or_wrong_teacher_checkpoint_is_a_hard_error(dataset, teacher_ckpt, tmp_path):
    missing = tmp_path / "nope" / "best.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        engine.train_run(run_config(dataset, {"name": "logit"}, missing), tmp_path / "r1")
    config = run_config(dataset, {"name": "logit"}, teacher_ckpt)
    config["teacher"]["arch"] = "resnet50"
    with pytest.raises(CheckpointError, match=rf"{teacher_ckpt}.*resnet34.*resnet50"):
        engine.train_run(config, tmp_path / "r2")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": {"arch": "resnet19"}}, r"'model.arch': unknown architecture 'resnet19' \(allowed: resnet8, "),
        ({"train": {"lrr": 0.1}}, r"unknown config key 'train.lrr' \(allowed: batch_size"),
        ({"method": {"name": "logit", "alpha": 2}}, r"'method.alpha': 2 is outside \[0, 1\]"),
        ({"method": {"name": "logit", "temperature": 0}}, r"'method.temperature'"),
        ({"method": {"name": "logit"}}, r"config key 'teacher' is required by method 'logit'"),
        ({"train": {"clip_scope": "projections"}}, r"'train.clip_scope'.*allowed: all, student_only"),
        ({"train": {"epochs": 0}}, r"'train.epochs': 0 is outside \[1, inf\]"),
        ({"runtime": {"device": "tpu"}}, r"'runtime.device'"),
        ({"optimiser": {}}, r"unknown config key 'optimiser'"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(dataset, patch, message):
    config = run_config(dataset)
    config.pop("method")
    config.update(patch)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_config(config)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- learning-rate schedules
def test_cosine_schedule_is_the_default_and_unchanged():
    train = resolve_config({"data": "-", "model": {"arch": "resnet18"}, "train": {"epochs": 10}})["train"]
    assert train["schedule"] == "cosine"
    for epoch in range(10):  # the closed form of the cosine schedule, evaluated the same way
        expected = 1e-4 + (0.1 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * epoch / 10))
        assert engine.lr_at_epoch(epoch, train) == expected
    assert engine.lr_at_epoch(0, train) == 0.1 and engine.lr_at_epoch(5, train) == pytest.approx(0.05005)


def test_step_schedule_follows_the_crd_protocol():
    cfg = resolve_config(
        {"data": "-", "model": {"arch": "resnet18"}, "train": {"epochs": 240, "lr": 0.05, "schedule": "step"}}
    )
    train = cfg["train"]
    assert train["lr_milestones"] == [150, 180, 210] and train["lr_gamma"] == 0.1
    curve = [engine.lr_at_epoch(e, train) for e in range(240)]
    assert curve[0] == curve[149] == 0.05
    assert curve[150] == curve[179] == pytest.approx(0.005)
    assert curve[180] == curve[209] == pytest.approx(0.0005)
    assert curve[210] == curve[239] == pytest.approx(0.00005)
    assert len(set(curve)) == 4  # piecewise constant: four levels
    custom = {**train, "lr_milestones": [3, 1], "lr_gamma": 0.5, "lr": 1.0}  # order does not matter
    assert [engine.lr_at_epoch(e, custom) for e in range(5)] == [1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize(
    "train,message",
    [
        ({"schedule": "linear"}, "schedule"),
        ({"lr_gamma": 0}, "lr_gamma"),
        ({"lr_milestones": [0]}, "lr_milestones"),
    ],
)
def test_bad_schedule_keys_name_the_key(train, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config({"data": "-", "model": {"arch": "resnet18"}, "train": train})


def test_step_schedule_run_records_the_lr_of_each_epoch(dataset, tmp_path):
    cfg = run_config(dataset, epochs=3, schedule="step", lr_milestones=[1, 2], lr_gamma=0.5, lr=0.2)
    metrics = engine.train_run(cfg, tmp_path / "step")
    assert [h["lr"] for h in metrics["history"]] == [0.2, 0.1, 0.05]


# ----------------------------------------------------------------------------- classes and normalisation from the data
def test_cifar100_run_takes_classes_and_normalisation_from_the_artefact(tmp_path, monkeypatch):
    from kdcore.augment import NORMALISATION

    path = tmp_path / "c100.pt"
    spec = {"source": "synthetic", "dataset": "cifar100", "synthetic": {"n_train": 300, "n_test": 100}}
    prepare_dataset({**spec, "val_size": 100}, path)
    seen: list[tuple] = []

    def spy_on(name: str) -> None:
        original = getattr(engine, name)

        def spy(*args, **kwargs):
            seen.append((name, kwargs["mean"], kwargs["std"]))
            return original(*args, **kwargs)

        monkeypatch.setattr(engine, name, spy)

    spy_on("normalize_batch")  # evaluation
    spy_on("augment_batch")  # training
    metrics = engine.train_run(run_config(path, epochs=1, batch_size=100), tmp_path / "run")
    assert metrics["config"]["model"]["num_classes"] == 100 and metrics["data"]["dataset"] == "cifar100"
    best, _ = load_model(tmp_path / "run" / "best.pt")
    assert best.fc.out_features == 100
    assert {name for name, *_ in seen} == {"normalize_batch", "augment_batch"}
    assert {tuple(norm) for _, *norm in seen} == {NORMALISATION["cifar100"]}
    # a number that contradicts the artefact is one clear error
    with pytest.raises(engine.DataError, match="100 classes .* but model.num_classes is 10"):
        bad = run_config(path, epochs=1)
        bad["model"]["num_classes"] = 10
        engine.train_run(bad, tmp_path / "bad")
