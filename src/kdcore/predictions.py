"""A run's stored test-set outputs: its logits at the best-val checkpoint and after the last epoch.

The engine writes them during the run's two test evaluations (no other look at the test set) into the run
folder's :data:`kdcore.runfolder.TEST_LOGITS_FILE`, a NumPy ``.npz`` archive (read with
``numpy.load(path, allow_pickle=False)``; no torch needed, so the analysis reads it)::

    format               "kdcore-test-logits/1"
    logits_best          float16 [n_test, num_classes]   test@best: the best-val checkpoint (best.pt)
    logits_final         float16 [n_test, num_classes]   test@final: the weights after the last epoch
    labels               int16 [n_test]                   the test labels, in the dataset's test order
    labels_fingerprint   sha256 hex of the labels as int64 little-endian bytes (:func:`labels_fingerprint`)
    best_epoch, final_epoch   int

Rounding to float16 keeps every row's top class: where rounding to nearest would change a row's argmax
(first maximum, as torch and NumPy take it), the top class's logit is raised to the next float16 above the
row's largest other value, so ``argmax`` of the stored logits reproduces the recorded test accuracies
exactly; a value so raised is at most 1.5 float16 steps from the float32 logit (others: half a step). Values beyond the
float16 range are clipped to it. NumPy only: the analysis jobs run without torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdcore.atomic import atomic_write
from kdcore.errors import DataError

LOGITS_FORMAT = "kdcore-test-logits/1"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def labels_fingerprint(labels: np.ndarray) -> str:
    """sha256 hex of ``labels`` as int64 little-endian bytes (the same for any integer dtype)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def to_float16(logits: np.ndarray) -> np.ndarray:
    """``logits`` (float32 [n, c]) as float16 with every row's argmax kept (see the module docstring)."""
    full = np.asarray(logits, dtype=np.float32)
    half = np.clip(full, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    if half.size == 0:
        return half
    top = full.argmax(axis=1)
    for _ in range(4):  # one pass suffices; a second only if the raised value itself hit the range limit
        wrong = np.flatnonzero(half.argmax(axis=1) != top)
        if wrong.size == 0:
            return half
        others = half[wrong].copy()
        others[np.arange(wrong.size), top[wrong]] = -np.inf
        half[wrong, top[wrong]] = np.nextafter(others.max(axis=1), np.float16(np.inf))
    bad = np.flatnonzero(half.argmax(axis=1) != top)
    if bad.size:
        raise DataError(f"test logits: float16 cannot keep the top class of row {bad[0]}")
    return half


@dataclass(frozen=True)
class TestLogits:
    """The content of a run's test-logits file (arrays as stored)."""

    logits_best: np.ndarray
    logits_final: np.ndarray
    labels: np.ndarray
    labels_fingerprint: str
    best_epoch: int
    final_epoch: int

    def correct(self, which: str = "best") -> np.ndarray:
        """Per-image correctness (bool [n_test]) at ``best`` or ``final``."""
        return self.logits(which).argmax(axis=1) == self.labels

    def logits(self, which: str = "best") -> np.ndarray:
        if which not in ("best", "final"):
            raise DataError(f"test logits: {which!r} is not 'best' or 'final'")
        return self.logits_best if which == "best" else self.logits_final


def write_test_logits(
    path: str | os.PathLike[str],
    logits_best: np.ndarray,
    logits_final: np.ndarray,
    labels: np.ndarray,
    best_epoch: int,
    final_epoch: int,
) -> Path:
    """Write a run's test logits (float32 [n, c] each) and labels to ``path`` atomically."""
    labels = np.asarray(labels)
    if np.asarray(logits_best).shape != np.asarray(logits_final).shape or len(labels) != len(logits_best):
        raise DataError(f"{path}: logits and labels of different lengths")
    arrays = {
        "format": np.array(LOGITS_FORMAT),
        "logits_best": to_float16(logits_best),
        "logits_final": to_float16(logits_final),
        "labels": labels.astype(np.int16),
        "labels_fingerprint": np.array(labels_fingerprint(labels)),
        "best_epoch": np.array(int(best_epoch)),
        "final_epoch": np.array(int(final_epoch)),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def read_test_logits(path: str | os.PathLike[str], fingerprint: str | None = None) -> TestLogits:
    """Read a test-logits file; DataError naming it when it is unreadable, of another format, inconsistent,
    or (``fingerprint`` given) holds other test labels."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            content = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable test-logits file ({exc})") from None
    if str(content.get("format")) != LOGITS_FORMAT:
        raise DataError(f"{path}: format {content.get('format')!r}, expected {LOGITS_FORMAT!r}")
    out = TestLogits(
        content["logits_best"],
        content["logits_final"],
        content["labels"].astype(np.int64),
        str(content["labels_fingerprint"]),
        int(content["best_epoch"]),
        int(content["final_epoch"]),
    )
    if labels_fingerprint(out.labels) != out.labels_fingerprint:
        raise DataError(f"{path}: its labels do not match the fingerprint it records")
    if fingerprint is not None and out.labels_fingerprint != fingerprint:
        raise DataError(f"{path}: test labels differ from the other runs' (fingerprint {out.labels_fingerprint[:12]})")
    if out.logits_best.shape != out.logits_final.shape or out.logits_best.shape[0] != out.labels.shape[0]:
        raise DataError(f"{path}: logits and labels of different lengths")
    return out
