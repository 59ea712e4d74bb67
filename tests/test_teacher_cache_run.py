"""A short training run reaches the same metrics with the teacher cache as with the live teacher (fp32, CPU).

Needs the engine to take the cache: ``make_step_fn(..., teacher_cache=...)`` and a step function that gets
each batch's training-set indices and view indices from ``train_one_epoch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdcore.checkpoint import save_model_checkpoint
from kdcore.config import resolve_config
from kdcore.data import load_dataset, prepare_dataset
from kdcore.engine import RunState, accuracy, build_student, make_placement, make_step_fn, train_one_epoch
from kdcore.methods import get_method
from kdcore.teacher_cache import build_teacher_cache, expected_header, load_teacher_cache

SPEC = {"arch": "resnet18", "width": 4, "stem": "cifar", "num_classes": 10}
COMPARED = ("loss", "loss_ce", "loss_kd", "train_acc", "val_acc", "grad_norm_mean", "grad_norm_max")


def _teacher_checkpoint(path: Path) -> Path:
    from tests.test_teacher_cache import tiny_teacher

    save_model_checkpoint(path, tiny_teacher(), SPEC)
    return path


def _train(cfg: dict[str, Any], data_path: Path, cache_path: Path | None) -> tuple[list[dict[str, Any]], dict]:
    """Two epochs of logit-KD; the history and the final student weights."""
    from kdcore.engine import load_teacher

    data = load_dataset(data_path)
    placement = make_placement(cfg["runtime"])
    method = get_method("logit")({k: v for k, v in cfg["method"].items() if k != "name"})
    student = build_student(cfg["model"], cfg["train"]["seed"])
    teacher = load_teacher(cfg["teacher"])
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg["train"]["lr"], momentum=0.9, nesterov=True)
    cache = None
    if cache_path is not None:
        expected = expected_header(cfg["teacher"]["checkpoint"], data.fingerprint, data.n_train, 10, "fp32")
        cache = load_teacher_cache(cache_path, placement.device, expected)
    step_fn = make_step_fn(student, None, optimizer, method, teacher, cfg, placement, teacher_cache=cache)
    state = RunState(student, None, optimizer, history=[])
    for epoch in range(cfg["train"]["epochs"]):
        entry = train_one_epoch(epoch, state, step_fn, data.train_images, data.train_labels, cfg, placement)
        entry["val_acc"] = accuracy(student, data.val_images, data.val_labels, placement, 64, data.normalisation)
        state.history.append(entry)
    return state.history, student.state_dict()


def test_short_run_same_metrics_with_and_without_cache(tmp_path: Path) -> None:
    data_path = tmp_path / "dataset.pt"
    prepare_dataset({"source": "synthetic", "synthetic": {"n_train": 56, "n_test": 8, "seed": 0}, "val_size": 8},
                    data_path)  # fmt: skip
    checkpoint = _teacher_checkpoint(tmp_path / "teacher.pt")
    cache_path = tmp_path / "teacher_cache.pt"
    build_teacher_cache(checkpoint, data_path, cache_path, device="cpu", precision="fp32", batch_size=1024)
    cfg = resolve_config(
        {
            "data": str(data_path),
            "model": {"arch": "resnet18", "width": 4, "num_classes": 10},
            "teacher": {"arch": "resnet18", "width": 4, "num_classes": 10, "checkpoint": str(checkpoint)},
            "method": {"name": "logit"},
            "train": {"epochs": 2, "batch_size": 16, "seed": 0},
            "runtime": {"device": "cpu", "precision": "fp32", "channels_last": False},
        }
    )
    live, live_weights = _train(cfg, data_path, None)
    cached, cached_weights = _train(cfg, data_path, cache_path)
    for a, b in zip(live, cached, strict=True):
        diffs = {k: abs(a[k] - b[k]) for k in COMPARED}
        print(f"epoch {a['epoch']}: |live - cached| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert live[-1]["loss_kd"] > 0
    for name, tensor in live_weights.items():
        torch.testing.assert_close(cached_weights[name], tensor, rtol=1e-4, atol=1e-5)


def test_cache_refused_for_feature_methods(tmp_path: Path) -> None:
    from kdcore.errors import TrainingError
    from kdcore.teacher_cache import TeacherCache

    checkpoint = _teacher_checkpoint(tmp_path / "teacher.pt")
    cfg = resolve_config(
        {
            "data": "-",
            "model": {"arch": "resnet18", "width": 4, "num_classes": 10},
            "teacher": {"arch": "resnet18", "width": 4, "num_classes": 10, "checkpoint": str(checkpoint)},
            "method": {"name": "feature"},
            "runtime": {"device": "cpu", "precision": "fp32"},
        }
    )
    method = get_method("feature")({})
    student = build_student(cfg["model"], 0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    cache = TeacherCache(header={}, table=torch.zeros(1, 162, 10))
    with pytest.raises(TrainingError, match="features"):
        make_step_fn(student, None, optimizer, method, None, cfg, make_placement(cfg["runtime"]), teacher_cache=cache)


def test_bench_row_formats_the_cached_column() -> None:
    from kdcore.bench import HEADER, format_row

    row = {
        "case": "resnet101->resnet34 logit",
        "fast_images_per_s": 180.0,
        "standard_images_per_s": 120.0,
        "speedup": 1.5,
        "fast_epoch_s": 250.0,
        "standard_epoch_s": 375.0,
        "cached_images_per_s": 270.0,
        "cached_gain": 1.5,
        "achieved_tflops": 0.1,
        "utilisation": None,
        "fast_peak_memory_mb": None,
    }
    line = format_row(row)
    assert len(line) == len(HEADER) and "cached img/s" in HEADER
    assert line.split()[-5:-2] == ["270", "1.50x", "0.100"]
    no_cache = format_row({**row, "cached_images_per_s": None, "cached_gain": None})
    assert no_cache.split()[-5:-2] == ["-", "-", "0.100"]


def test_bench_times_the_cached_teacher() -> None:
    from kdcore.bench import Case, run_benchmark

    result = run_benchmark([Case("resnet18", "resnet18", "logit"), Case("resnet18")], 4, 8, 1, 1, "cpu", 0, None)
    logit, baseline = result["rows"]
    assert logit["cached_images_per_s"] > 0
    assert logit["cached_gain"] == pytest.approx(logit["cached_images_per_s"] / logit["fast_images_per_s"])
    assert baseline["cached_images_per_s"] is None and baseline["cached_gain"] is None
