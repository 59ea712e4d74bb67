"""Fidelity of a student to its teacher from the two runs' stored test logits (kdcore.predictions), without
loading a model: the same measures as kdcore.fidelity (top-1 agreement, KL(p_T || p_S) at T = 1 and 4 without
a T^2 factor, 15-bin ECE of both, per-class and overall accuracy), computed in float64 from the float16 logits.

They equal kdcore.fidelity's values on the same checkpoints up to the float16 rounding of the logits: the
accuracies and the agreement exactly (float16 storage keeps every row's top class), KL and ECE to within
that rounding. NumPy and SciPy only (the analysis jobs run without torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from kdcore.analysis.table import FIDELITY_COLUMNS
from kdcore.errors import DataError
from kdcore.predictions import TestLogits, read_test_logits

ECE_BINS = 15


def kl_divergence(teacher_logits: np.ndarray, student_logits: np.ndarray, temperature: float) -> float:
    """Mean over images of KL(softmax(t/T) || softmax(s/T))."""
    log_p_t = log_softmax(np.asarray(teacher_logits, np.float64) / temperature, axis=1)
    log_p_s = log_softmax(np.asarray(student_logits, np.float64) / temperature, axis=1)
    return float(np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), axis=1)))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width confidence bins (b holds confidences in (edge_b, edge_b+1]):
    sum_b |B|/n * |acc(B) - conf(B)|."""
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


def fidelity_from_stored(
    student: TestLogits, teacher: TestLogits, classes: Sequence[str], which: str = "best"
) -> dict[str, Any]:
    """The fidelity record's measures (kdcore.fidelity.fidelity_from_logits) of a student run against its
    teacher run, from their stored test logits at ``which`` (``best``: the checkpoints KD used and the
    fidelity jobs measure). Both files must hold the same test labels (fingerprint)."""
    if student.labels_fingerprint != teacher.labels_fingerprint:
        raise DataError("fidelity: the student's and the teacher's test labels differ (fingerprints)")
    s, t, labels = student.logits(which), teacher.logits("best"), student.labels
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


def _fidelity_row(run: pd.Series, teacher: str, teacher_path: str, store: dict[str, TestLogits]) -> dict[str, Any]:
    for path in (run["logits"], teacher_path):
        store.setdefault(path, read_test_logits(path))
    classes = [str(k) for k in range(store[teacher_path].logits_best.shape[1])]
    f = fidelity_from_stored(store[run["logits"]], store[teacher_path], classes)
    return {
        **{c: run[c] for c in ("stage", "run_id", "student", "method", "seed", "source")},
        "teacher": teacher,
        "pair": f"{teacher}-{run['student']}",
        "control": run["stage"] == "baseline",
        "student_acc": 100 * f["student_test_acc"],
        "teacher_acc": 100 * f["teacher_test_acc"],
        "agreement": 100 * f["top1_agreement"],
        **{k: f[k] for k in ("kl_t1", "kl_t4", "ece_student", "ece_teacher")},
        "path": run["logits"],
    }


def fidelity_table_from_logits(runs: pd.DataFrame) -> pd.DataFrame:
    """The fidelity table (kdcore.analysis.table.FIDELITY_COLUMNS) from stored logits instead of fidelity.json
    files: every final KD run against its distillation teacher, and as the control every baseline run against
    each teacher its student is paired with (that teacher's logits file as the KD runs name it)."""
    has = runs["logits"].fillna("").astype(str) != ""
    kd = runs[has & (runs["stage"] == "final") & (runs["teacher_logits"].fillna("").astype(str) != "")]
    teachers = dict(zip(kd["pair"], zip(kd["teacher"], kd["teacher_logits"], strict=True), strict=True))
    store: dict[str, TestLogits] = {}
    rows = [_fidelity_row(r, r["teacher"], r["teacher_logits"], store) for _, r in kd.iterrows()]
    for _, run in runs[has & (runs["stage"] == "baseline")].iterrows():
        for pair, (teacher, path) in sorted(teachers.items()):
            if pair == f"{teacher}-{run['student']}":
                rows.append(_fidelity_row(run, teacher, path, store))
    table = pd.DataFrame(rows, columns=FIDELITY_COLUMNS)
    return table.sort_values(["pair", "control", "method", "seed"]).reset_index(drop=True)
