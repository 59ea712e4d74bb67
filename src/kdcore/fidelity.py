"""How faithfully a student imitates its teacher, measured on the test set.

Top-1 agreement, KL(p_T || p_S) at temperatures 1 and 4 (no T^2 factor: a divergence, not a loss),
expected calibration error of both models, per-class and overall accuracy of both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdcore.atomic import atomic_write_json
from kdcore.checkpoint import load_model
from kdcore.config import RUNTIME_DEFAULTS
from kdcore.data import load_dataset
from kdcore.devices import Placement, make_placement
from kdcore.engine import predict_logits
from kdcore.errors import DataError

FIDELITY_SCHEMA_VERSION = 1
ECE_BINS = 15


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> float:
    """Mean over samples of KL(softmax(t/T) || softmax(s/T))."""
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True).item()


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins: sum_b |B|/n * |acc(B) - conf(B)|."""
    probs = logits.float().softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0.0, 1.0, bins + 1, device=logits.device)
    # bin b holds confidences in (edges[b], edges[b+1]]; confidence is > 0 for a softmax
    bin_index = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, bins - 1)
    n = labels.numel()
    ece = torch.zeros((), device=logits.device)
    for b in range(bins):
        mask = bin_index == b
        count = mask.sum()
        if count > 0:
            ece += count / n * (correct[mask].mean() - confidence[mask].mean()).abs()
    return ece.item()


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, float]:
    predicted = logits.argmax(dim=1)
    return {
        name: (predicted[labels == k] == k).float().mean().item() if (labels == k).any() else float("nan")
        for k, name in enumerate(classes)
    }


def fidelity_from_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    """Every fidelity metric from the two models' test-set logits."""
    return {
        "student_test_acc": (student_logits.argmax(1) == labels).float().mean().item(),
        "teacher_test_acc": (teacher_logits.argmax(1) == labels).float().mean().item(),
        "top1_agreement": (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item(),
        "kl_t1": kl_divergence(teacher_logits, student_logits, 1.0),
        "kl_t4": kl_divergence(teacher_logits, student_logits, 4.0),
        "ece_student": expected_calibration_error(student_logits, labels),
        "ece_teacher": expected_calibration_error(teacher_logits, labels),
        "per_class_acc_student": per_class_accuracy(student_logits, labels, classes),
        "per_class_acc_teacher": per_class_accuracy(teacher_logits, labels, classes),
    }


def evaluate_fidelity(
    student_checkpoint: str | Path,
    teacher_checkpoint: str | Path,
    dataset_path: str | Path,
    device: str = "auto",
    labels: dict[str, Any] | None = None,
    precision: str = "auto",
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Load both checkpoints, run them on the test set and return the fidelity record.

    ``precision`` defaults to the engine's ``auto``, so that the student's accuracy here equals its
    test@best in metrics.json; the metrics themselves are computed from float32 logits.
    """
    runtime = {**RUNTIME_DEFAULTS, "device": device, "precision": precision}
    placement: Placement = make_placement(runtime)
    data = load_dataset(dataset_path)
    images = data.test_images.to(placement.device)
    targets = data.test_labels.to(placement.device)
    logits = {}
    meta = {}
    for role, path in (("student", student_checkpoint), ("teacher", teacher_checkpoint)):
        model, info = load_model(path)
        if info["num_classes"] != data.num_classes:
            raise DataError(
                f"{path}: the {role} has {info['num_classes']} outputs, "
                f"but {dataset_path} has {data.num_classes} classes"
            )
        model.to(placement.device, memory_format=placement.memory_format)
        logits[role] = predict_logits(model, images, placement, batch_size, data.normalisation)
        meta[role] = {**{k: info[k] for k in ("arch", "width", "stem")}, "checkpoint": str(path)}
    return {
        "schema_version": FIDELITY_SCHEMA_VERSION,
        "kind": "fidelity",
        "student": meta["student"],
        "teacher": meta["teacher"],
        "teacher_arch": meta["teacher"]["arch"],
        "data_fingerprint": data.fingerprint,
        "labels": dict(labels or {}),
        **fidelity_from_logits(logits["student"], logits["teacher"], targets, list(data.classes)),
    }


def write_fidelity(record: dict[str, Any], out_path: str | Path) -> Path:
    return atomic_write_json(out_path, record)
