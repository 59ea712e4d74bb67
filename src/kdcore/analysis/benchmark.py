"""The CIFAR-100 KD benchmark (config/cifar100-benchmark.yaml): our accuracies beside the published ones.

The reference (``cifar100_benchmark.csv`` next to this module) holds, per teacher -> student pair, the
published top-1 test accuracies (%) of the teacher, the student trained alone, Logit-KD and DKD, with their
source. Published numbers are single values (means over the authors' runs, without spread), so the table
shows ours as mean +- std over seeds and the difference ours - published; no interval is claimed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdcore.errors import DataError

REFERENCE_CSV = Path(__file__).with_name("cifar100_benchmark.csv")
REFERENCE_COLUMNS = ["teacher", "student", "teacher_acc", "student_acc", "kd_acc", "dkd_acc", "source"]
#: reference column -> (stage, method) of our runs that it is compared with
QUANTITIES: dict[str, tuple[str, str]] = {
    "teacher_acc": ("teacher", "baseline"),
    "student_acc": ("baseline", "baseline"),
    "kd_acc": ("final", "logit"),
    "dkd_acc": ("final", "dkd"),
}
COLUMNS = ["teacher", "student", "quantity", "published", "ours_mean", "ours_std", "ours_n", "difference", "source"]


def load_reference(path: str | Path = REFERENCE_CSV) -> pd.DataFrame:
    """The published accuracies; a missing column or a non-numeric accuracy is a DataError naming the file."""
    try:
        ref = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read the benchmark reference ({exc})") from exc
    missing = [c for c in REFERENCE_COLUMNS if c not in ref.columns]
    if missing:
        raise DataError(f"{path}: benchmark reference lacks columns {missing}")
    for column in QUANTITIES:
        if not pd.api.types.is_numeric_dtype(ref[column]) or ref[column].isna().any():
            raise DataError(f"{path}: column {column} must hold a number in every row")
    return ref[REFERENCE_COLUMNS]


def our_runs(runs: pd.DataFrame, stage: str, method: str, arch: str, teacher: str) -> pd.Series:
    """Test accuracies (%) of our runs behind one quantity: a teacher's runs by architecture, a baseline's by
    student, a KD cell's by pair and method."""
    rows = runs[(runs["stage"] == stage) & (runs["student"] == arch)]
    if stage == "final":
        rows = rows[(rows["teacher"] == teacher) & (rows["method"] == method)]
    return rows["test_best"].astype(float)


def benchmark_table(runs: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (pair, quantity) of the reference (columns :data:`COLUMNS`); ours empty where we have no run."""
    reference = load_reference() if reference is None else reference
    rows = []
    for ref in reference.itertuples(index=False):
        for quantity, (stage, method) in QUANTITIES.items():
            arch = ref.teacher if quantity == "teacher_acc" else ref.student
            ours = our_runs(runs, stage, method, arch, ref.teacher)
            published = float(getattr(ref, quantity))
            mean = float(ours.mean()) if len(ours) else float("nan")
            rows.append(
                {
                    "teacher": ref.teacher,
                    "student": ref.student,
                    "quantity": quantity,
                    "published": published,
                    "ours_mean": mean,
                    "ours_std": float(ours.std(ddof=1)) if len(ours) > 1 else float("nan"),
                    "ours_n": len(ours),
                    "difference": mean - published,
                    "source": ref.source,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)
