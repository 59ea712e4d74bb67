"""How faithfully a student imitates its teacher on the test set, from the two runs' stored test logits.

Top-1 agreement, KL(p_T || p_S) at temperatures 1 and 4 (no T^2 factor: a divergence, not a loss), 15-bin
expected calibration error of both models, per-class and overall accuracy of both. Computed in float64 from
the float16 logits that every run stores (kdcore.predictions) at its best-val checkpoint and at its last
epoch, so no model is loaded and no GPU is needed: the study's fidelity table is part of the analysis.

The values equal those computed from the checkpoints' float32 logits up to the float16 rounding of the
logits: accuracies and agreement exactly (float16 storage keeps every row's top class), KL and ECE to within
that rounding (tests/test_test_logits.py measures it). NumPy and SciPy only (the analysis runs without torch);
SciPy is imported by the functions that use it, so the analysis jobs that only import the run tables skip it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdcore.atomic import atomic_write_json
from kdcore.errors import DataError
from kdcore.predictions import TestLogits, read_test_logits
from kdcore.runfolder import METRICS_FILE, TEST_LOGITS_FILE

FIDELITY_SCHEMA_VERSION = 2
ECE_BINS = 15


def kl_divergence(teacher_logits: np.ndarray, student_logits: np.ndarray, temperature: float) -> float:
    """Mean over images of KL(softmax(t/T) || softmax(s/T))."""
    from scipy.special import log_softmax

    log_p_t = log_softmax(np.asarray(teacher_logits, np.float64) / temperature, axis=1)
    log_p_s = log_softmax(np.asarray(student_logits, np.float64) / temperature, axis=1)
    return float(np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), axis=1)))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins (b holds confidences in (edge_b, edge_b+1]):
    sum_b |B|/n * |acc(B) - conf(B)|."""
    from scipy.special import log_softmax

    probs = np.exp(log_softmax(np.asarray(logits, np.float64), axis=1))
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    gap = np.abs(np.bincount(index, correct, bins) - np.bincount(index, confidence, bins))
    return float(gap.sum() / labels.size) if labels.size else float("nan")


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Accuracy on the images of each class (NaN for a class without images)."""
    predicted = np.asarray(logits).argmax(axis=1)
    return {
        name: float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else float("nan")
        for k, name in enumerate(classes)
    }


def fidelity_measures(
    student_logits: np.ndarray, teacher_logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Every fidelity measure (accuracies, agreement, KL at T = 1 and 4, ECE, per-class accuracies) from the two
    models' test logits."""
    s, t = np.asarray(student_logits), np.asarray(teacher_logits)
    return {
        "student_test_acc": float(np.mean(s.argmax(1) == labels)),
        "teacher_test_acc": float(np.mean(t.argmax(1) == labels)),
        "top1_agreement": float(np.mean(s.argmax(1) == t.argmax(1))),
        "kl_t1": kl_divergence(t, s, 1.0),
        "kl_t4": kl_divergence(t, s, 4.0),
        "ece_student": expected_calibration_error(s, labels),
        "ece_teacher": expected_calibration_error(t, labels),
        "per_class_acc_student": per_class_accuracy(s, labels, classes),
        "per_class_acc_teacher": per_class_accuracy(t, labels, classes),
    }


def fidelity_from_stored(
    student: TestLogits, teacher: TestLogits, classes: Sequence[str] | None = None, which: str = "best"
) -> dict[str, Any]:
    """The fidelity measures of a student run against its teacher run, from their stored test logits: the
    student's at ``which`` (``best``: the checkpoint its test@best comes from), the teacher's at ``best`` (the
    checkpoint KD distils from). Both files must hold the same test labels (fingerprint). ``classes``: names
    of the per-class accuracies (default: the class indices)."""
    if student.labels_fingerprint != teacher.labels_fingerprint:
        raise DataError("fidelity: the student's and the teacher's test labels differ (fingerprints)")
    names = list(classes) if classes is not None else [str(k) for k in range(teacher.logits_best.shape[1])]
    return fidelity_measures(student.logits(which), teacher.logits("best"), student.labels, names)


def logits_file(run: str | Path) -> Path:
    """A run's test-logits file, given the file itself or the run's folder."""
    path = Path(run)
    return path / TEST_LOGITS_FILE if path.is_dir() else path


def _network(run_logits: Path) -> str | None:
    """The network a run trained (its metrics.json's labels, else model.arch), None without a metrics.json."""
    metrics = run_logits.parent / METRICS_FILE
    if not metrics.is_file():
        return None
    data = json.loads(metrics.read_text(encoding="utf-8"))
    labels = data.get("labels") or {}
    return labels.get("student") or (data.get("model") or {}).get("arch")


def fidelity_record(student_run: str | Path, teacher_run: str | Path, which: str = "best") -> dict[str, Any]:
    """The fidelity record (what ``kdcore fidelity`` writes) of a student run against a teacher run, each given
    as its folder or its test-logits file."""
    student_path, teacher_path = logits_file(student_run), logits_file(teacher_run)
    student, teacher = read_test_logits(student_path), read_test_logits(teacher_path)
    meta = {
        role: {"logits": str(path), "at": at, "arch": _network(path)}
        for role, path, at in (("student", student_path, which), ("teacher", teacher_path, "best"))
    }
    return {
        "schema_version": FIDELITY_SCHEMA_VERSION,
        "kind": "fidelity",
        **meta,
        "teacher_arch": meta["teacher"]["arch"],
        "labels_fingerprint": student.labels_fingerprint,
        "labels": {},
        **fidelity_from_stored(student, teacher, which=which),
    }


def write_fidelity(record: dict[str, Any], out_path: str | Path) -> Path:
    return atomic_write_json(out_path, record)
