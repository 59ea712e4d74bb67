"""Per-image paired tests, the variance decomposition, ensembles and the audit table from stored test logits
(kdcore.analysis.perimage, kdcore.analysis.logit_tables), on simulated correctness and small logits files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from kdcore.analysis import logit_tables as lt
from kdcore.analysis.perimage import mcnemar_exact, paired_counts, pooled_exact, variance_decomposition
from kdcore.errors import DataError
from kdcore.predictions import write_test_logits

ALPHA = 0.05


def test_paired_counts_and_mcnemar_exact_follow_the_discordant_images():
    base = np.array([1, 1, 0, 0, 1, 0, 0, 1], bool)
    kd = np.array([1, 0, 1, 1, 1, 0, 1, 1], bool)
    assert paired_counts(kd, base) == {"both_right": 3, "fixed": 3, "broken": 1, "both_wrong": 1}
    assert mcnemar_exact(3, 1) == pytest.approx(binomtest(1, 4, 0.5).pvalue)
    assert mcnemar_exact(30, 10) == pytest.approx(binomtest(10, 40, 0.5).pvalue) and mcnemar_exact(30, 10) < ALPHA
    assert mcnemar_exact(0, 0) == 1.0 and pooled_exact([0, 0], [0, 0]) == 1.0
    assert pooled_exact([20, 25, 18], [10, 12, 9]) == pytest.approx(binomtest(63, 94, 0.5).pvalue)


def simulate_pooled_p(rng: np.random.Generator, shift: float, reps: int, seeds: int, images: int) -> np.ndarray:
    """p of the pooled test over ``reps`` simulated studies: per image a difficulty, per seed a KD and a
    baseline run whose correctness is Bernoulli(p_i + shift) and Bernoulli(p_i), independent."""
    p_image = rng.beta(4, 1, size=images)  # most images easy, some hard: heterogeneous discordance
    kd = rng.random((reps, seeds, images)) < np.clip(p_image + shift, 0, 1)
    base = rng.random((reps, seeds, images)) < p_image
    fixed, broken = (kd & ~base).sum(axis=2), (~kd & base).sum(axis=2)
    return np.array([pooled_exact(f, b) for f, b in zip(fixed, broken, strict=True)])


def test_the_pooled_stratified_test_holds_its_size_and_detects_a_two_point_gain():
    rng = np.random.default_rng(20231)
    reps = 2000
    size = np.mean(simulate_pooled_p(rng, 0.0, reps, seeds=5, images=1000) < ALPHA)
    se = np.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert size <= ALPHA + 3 * se, size  # valid under its null (images independent, no shared image effect)
    assert size >= ALPHA - 4 * se, size  # and not far below it
    power = np.mean(simulate_pooled_p(rng, 0.02, 500, seeds=5, images=1000) < ALPHA)
    assert power > 0.5, power


def test_variance_decomposition_splits_test_set_and_seed_variance_without_bias():
    rng = np.random.default_rng(5)
    runs, images, reps = 5, 2000, 300
    p_image = rng.beta(4, 1, size=images)
    binomial_pp2 = np.sum(p_image * (1 - p_image)) / images**2 * 1e4

    def estimates(seed_sd: float) -> pd.DataFrame:
        rows = []
        for _ in range(reps):
            shift = rng.normal(0, seed_sd, size=(runs, 1))  # a run-level accuracy shift: the seed part
            correct = rng.random((runs, images)) < np.clip(p_image + shift, 0, 1)
            rows.append(variance_decomposition(correct))
        return pd.DataFrame(rows)

    pure = estimates(0.0)  # independent images only: all of the variance is the test set's
    assert pure["var_test_set_pp2"].mean() == pytest.approx(binomial_pp2, rel=0.02)
    assert abs(pure["var_seed_pp2"].mean()) < 0.1 * binomial_pp2
    assert pure["var_pp2"].mean() == pytest.approx(binomial_pp2, rel=0.1)
    shifted = estimates(0.01)  # plus a seed part of 1 pp SD (a little less after clipping at 1)
    assert 0.7 < shifted["var_seed_pp2"].mean() < 1.2
    assert shifted["test_set_share"].median() < pure["test_set_share"].median()
    with pytest.raises(ValueError):
        variance_decomposition(np.ones((1, 10), bool))


# ----------------------------------------------------------------------------- tables from logits files
N_IMAGES = 400


def logits_for(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> np.ndarray:
    """Logits whose argmax is right on about ``accuracy`` of the images."""
    logits = rng.normal(0, 1, size=(labels.size, 10)).astype(np.float32)
    right = rng.random(labels.size) < accuracy
    logits[np.arange(labels.size), labels] += np.where(right, 6.0, -6.0)
    return logits


def run_row(stage: str, student: str, seed: int, path: Path, teacher: str = "", method: str = "baseline") -> dict:
    return {
        "stage": stage,
        "run_id": f"{stage}/{teacher}-{student}/{method}/seed{seed}",
        "teacher": teacher,
        "student": student,
        "pair": f"{teacher}-{student}" if teacher else "",
        "method": method,
        "seed": seed,
        "test_best": np.nan,
        "test_final": np.nan,
        "logits": str(path),
        "teacher_logits": "",
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> pd.DataFrame:
    """A teacher, 3 baseline and 3 KD runs of one pair with logits files; KD about 15 points better."""
    root = tmp_path_factory.mktemp("logits")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, N_IMAGES)
    rows = []

    def add(stage: str, student: str, seed: int, accuracy: float, **kw) -> Path:
        path = root / f"{stage}-{student}-{seed}.npz"
        best = logits_for(rng, labels, accuracy)
        write_test_logits(path, best, logits_for(rng, labels, accuracy - 0.02), labels, 3, 4)
        rows.append(run_row(stage, student, seed, path, **kw))
        rows[-1]["test_best"] = 100 * float(np.mean(best.argmax(1) == labels))
        return path

    teacher = add("teacher", "resnet34", 0, 0.9)
    for seed in range(3):
        add("baseline", "resnet18", seed, 0.70)
        add("final", "resnet18", seed, 0.85, teacher="resnet34", method="logit")
        rows[-1]["teacher_logits"] = str(teacher)
    return pd.DataFrame(rows)


def test_paired_image_table_has_a_row_per_seed_and_a_pooled_row(study):
    table = lt.paired_image_table(study)
    assert list(table.columns) == lt.PAIRED_COLUMNS and len(table) == 4
    seeds, pooled = table.iloc[:3], table.iloc[3]
    assert list(seeds["seed"]) == [0, 1, 2] and pooled["seed"] == "pooled"
    assert (seeds[["both_right", "fixed", "broken", "both_wrong"]].sum(axis=1) == N_IMAGES).all()
    kd = study[study["stage"] == "final"].sort_values("seed")
    assert np.allclose(seeds["kd_acc"], kd["test_best"])
    assert np.allclose(seeds["kd_acc"] - seeds["baseline_acc"], 100 * seeds["net_fixed"] / N_IMAGES)
    assert pooled["fixed"] == seeds["fixed"].sum() and pooled["p_exact"] < ALPHA and pooled["p_holm"] < ALPHA


def test_variance_and_ensemble_tables_cover_every_cell_with_logits(study):
    variance = lt.variance_table(study)
    assert set(variance["stage"]) == {"baseline", "final"} and (variance["runs"] == 3).all()
    assert np.allclose(variance["var_pp2"], variance["var_test_set_pp2"] + variance["var_seed_pp2"])
    ens = lt.ensemble_table(study)
    seed_ens = ens[ens["kind"] == "seed_ensemble"].set_index("stage")
    assert set(seed_ens.index) == {"baseline", "final"}  # the teacher cell has one run
    assert seed_ens.loc["final", "ensemble_acc"] > seed_ens.loc["final", "mean_member_acc"]  # independent errors
    ts = ens[ens["kind"] == "teacher_student"].set_index("stage")
    assert set(ts.index) == {"baseline", "final"} and (ts["teacher"] == "resnet34").all()
    assert ts.loc["final", "teacher_acc"] == pytest.approx(study.iloc[0]["test_best"])


def test_tables_are_empty_without_logits_and_refuse_other_test_labels(study, tmp_path):
    assert lt.paired_image_table(study.assign(logits="")).empty and lt.variance_table(study.assign(logits="")).empty
    other = tmp_path / "other.npz"
    labels = np.arange(N_IMAGES) % 10
    write_test_logits(other, np.zeros((N_IMAGES, 10), np.float32), np.zeros((N_IMAGES, 10), np.float32), labels, 1, 1)
    changed = study.copy()
    changed.loc[changed.index[-1], "logits"] = str(other)
    with pytest.raises(DataError, match="test labels differ"):
        lt.variance_table(changed)


def test_audit_table_compares_val_selected_last_epoch_and_best_on_test(study):
    runs = study.assign(test_final=study["test_best"] - 0.5)
    history = pd.DataFrame(
        [
            {"run_id": r, "epoch": e, "audit_test_acc": acc + (1.0 if e == 2 else 0.0)}
            for r, acc in zip(runs["run_id"], runs["test_best"], strict=True)
            for e in (1, 2, 3)
        ]
    )
    history.loc[history["run_id"] == runs.iloc[0]["run_id"], "audit_test_acc"] = np.nan  # teacher: no audit
    table = lt.audit_table(runs, history).set_index("stage")
    assert set(table.index) == {"baseline", "final"}
    assert np.allclose(table["optimism_pp"], 1.0) and np.allclose(table["val_selected"] - table["last_epoch"], 0.5)
    assert (table["best_on_test_ci_low"] < table["best_on_test"]).all()
