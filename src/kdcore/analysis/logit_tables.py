"""The analysis tables drawn from the runs' stored test logits (kdcore.predictions) and audit history:

- ``paired_images``: each final KD run against the baseline run of its student and seed, image by image
  (fixed / broken counts, McNemar's exact p), and per (pair, method) the pooled test stratified by seed
  (kdcore.analysis.perimage), Holm-adjusted over the pooled rows;
- ``variance``: the run-to-run SD of each teacher, baseline and final KD cell split into its finite-test-set
  and seed parts (Jordan 2023);
- ``ensembles``: context rows -- the seed-ensemble of each cell and the teacher+student ensemble of each
  final KD and baseline run (softmax probabilities averaged);
- ``audit``: per cell, test accuracy under three protocols -- val-selected (ours), last epoch, best-on-test
  over epochs -- from the runs that recorded ``audit_test_acc`` (``audit.test_every_epoch``).

Runs without a logits file (the ``logits`` column of the run table is empty) are left out; the tables are
empty (header only) when no run has one. Accuracies in %, differences in pp.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax
from scipy.stats import t as t_dist
from statsmodels.stats.multitest import multipletests

from kdcore.analysis.perimage import mcnemar_exact, paired_counts, pooled_exact, variance_decomposition
from kdcore.predictions import TestLogits, read_test_logits

CELL = ["stage", "teacher", "student", "pair", "method"]
CELL_STAGES = ("teacher", "baseline", "final")
PAIRED_COLUMNS = [
    *["pair", "teacher", "student", "method", "seed", "kd_run", "baseline_run", "kd_acc", "baseline_acc"],
    *["both_right", "fixed", "broken", "both_wrong", "net_fixed", "p_exact", "p_holm", "test"],
]
VARIANCE_COLUMNS = [
    *CELL,
    *["runs", "images", "mean_pp", "sd_pp", "sd_test_set_pp", "sd_seed_pp", "var_pp2", "var_test_set_pp2"],
    *["var_seed_pp2", "test_set_share"],
]
ENSEMBLE_COLUMNS = [*CELL, "kind", "members", "ensemble_acc", "mean_member_acc", "gain_pp", "teacher_acc"]
AUDIT_COLUMNS = [
    *CELL,
    *["runs", "val_selected", "val_selected_ci_low", "val_selected_ci_high", "last_epoch", "last_epoch_ci_low"],
    *["last_epoch_ci_high", "best_on_test", "best_on_test_ci_low", "best_on_test_ci_high", "optimism_pp"],
]
#: metric of the analysis -> which stored logits hold it (val_acc: the val-selected checkpoint's)
WHICH = {"test_best": "best", "test_final": "final", "val_acc": "best"}


class LogitStore:
    """Test-logits files read once each, all checked to hold the same test labels."""

    def __init__(self) -> None:
        self._files: dict[str, TestLogits] = {}
        self.fingerprint: str | None = None

    def get(self, path: str) -> TestLogits:
        if path not in self._files:
            logits = read_test_logits(path, self.fingerprint)
            self.fingerprint = logits.labels_fingerprint
            self._files[path] = logits
        return self._files[path]


def with_logits(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that have a test-logits file."""
    if "logits" not in runs.columns:
        return runs.iloc[0:0]
    return runs[runs["logits"].fillna("").astype(str) != ""]


def _paired_rows(kd: pd.DataFrame, base: pd.DataFrame, store: LogitStore, which: str) -> list[dict[str, Any]]:
    rows = []
    for _, run in kd.iterrows():
        match = base[(base["student"] == run["student"]) & (base["seed"] == run["seed"])]
        if match.empty:
            continue
        k, b = store.get(run["logits"]).correct(which), store.get(match.iloc[0]["logits"]).correct(which)
        counts = paired_counts(k, b)
        keys = {c: run[c] for c in ("pair", "teacher", "student", "method", "seed")}
        rows.append(
            {
                **keys,
                "kd_run": run["run_id"],
                "baseline_run": match.iloc[0]["run_id"],
                "kd_acc": 100 * k.mean(),
                "baseline_acc": 100 * b.mean(),
                **counts,
                "net_fixed": counts["fixed"] - counts["broken"],
                "p_exact": mcnemar_exact(counts["fixed"], counts["broken"]),
                "test": "McNemar exact",
            }
        )
    return rows


def _pooled_row(seeds: pd.DataFrame) -> dict[str, Any]:
    first = seeds.iloc[0]
    sums = {c: int(seeds[c].sum()) for c in ("both_right", "fixed", "broken", "both_wrong")}
    return {
        **{c: first[c] for c in ("pair", "teacher", "student", "method")},
        "seed": "pooled",
        "kd_run": f"{len(seeds)} seeds",
        "baseline_run": f"{len(seeds)} seeds",
        "kd_acc": seeds["kd_acc"].mean(),
        "baseline_acc": seeds["baseline_acc"].mean(),
        **sums,
        "net_fixed": sums["fixed"] - sums["broken"],
        "p_exact": pooled_exact(seeds["fixed"].to_list(), seeds["broken"].to_list()),
        "test": "exact conditional, stratified by seed",
    }


def paired_image_table(runs: pd.DataFrame, metric: str = "test_best") -> pd.DataFrame:
    """One row per final KD run paired with its baseline run (same student and seed), then per (pair, method)
    a pooled row (``seed`` = ``pooled``); ``p_holm``: Holm over the pooled rows."""
    runs, store, which = with_logits(runs), LogitStore(), WHICH[metric]
    kd, base = runs[runs["stage"] == "final"], runs[runs["stage"] == "baseline"]
    per_seed = pd.DataFrame(_paired_rows(kd, base, store, which), columns=PAIRED_COLUMNS)
    if per_seed.empty:
        return per_seed
    pooled = pd.DataFrame(
        [_pooled_row(g) for _, g in per_seed.groupby(["pair", "method"], sort=True)], columns=PAIRED_COLUMNS
    )
    pooled["p_holm"] = multipletests(pooled["p_exact"].to_numpy(), method="holm")[1]
    out = pd.concat([per_seed.astype({"seed": object}), pooled], ignore_index=True)
    out["_pooled"] = out["seed"] == "pooled"
    return out.sort_values(["pair", "method", "_pooled"], kind="stable").drop(columns="_pooled").reset_index(drop=True)


def _cells(runs: pd.DataFrame) -> Iterable[tuple[dict[str, Any], pd.DataFrame]]:
    runs = runs[runs["stage"].isin(CELL_STAGES)]
    for key, group in runs.groupby(CELL, sort=True):
        yield dict(zip(CELL, key, strict=True)), group.sort_values("seed")


def variance_table(runs: pd.DataFrame, metric: str = "test_best") -> pd.DataFrame:
    """Per teacher, baseline and final KD cell with at least 2 runs: :func:`perimage.variance_decomposition`."""
    runs, store, which = with_logits(runs), LogitStore(), WHICH[metric]
    rows = []
    for keys, group in _cells(runs):
        if len(group) >= 2:
            correct = np.stack([store.get(p).correct(which) for p in group["logits"]])
            rows.append({**keys, **variance_decomposition(correct)})
    return pd.DataFrame(rows, columns=VARIANCE_COLUMNS)


def ensemble_accuracy(logits: list[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy (%) of the average of the members' softmax probabilities."""
    probs = np.mean([softmax(np.asarray(x, np.float64), axis=1) for x in logits], axis=0)
    return float(100 * np.mean(probs.argmax(axis=1) == labels))


def _ensemble_row(keys: dict[str, Any], kind: str, accs: list[float], members: list[float], teacher: float) -> dict:
    return {
        **keys,
        "kind": kind,
        "members": len(members),
        "ensemble_acc": float(np.mean(accs)),
        "mean_member_acc": float(np.mean(members)),
        "gain_pp": float(np.mean(accs) - np.mean(members)),
        "teacher_acc": teacher,
    }


def _pair_teachers(runs: pd.DataFrame) -> dict[str, str]:
    """Teacher network -> the test-logits file of the teacher run its final KD runs distilled from."""
    kd = runs[(runs["stage"] == "final") & (runs["teacher_logits"].fillna("").astype(str) != "")]
    return dict(zip(kd["teacher"], kd["teacher_logits"], strict=True))


def ensemble_table(runs: pd.DataFrame, metric: str = "test_best") -> pd.DataFrame:
    """Context rows: ``seed_ensemble`` (all runs of a cell; ``members``: runs) and ``teacher_student`` (each
    final KD run, and each baseline run for every teacher its student is paired with, ensembled with the
    distillation teacher; accuracies are means over the runs; ``members``: runs)."""
    runs, store, which = with_logits(runs), LogitStore(), WHICH[metric]
    rows, teachers = [], _pair_teachers(runs)
    for keys, group in _cells(runs):
        members = [store.get(p) for p in group["logits"]]
        accs = [100 * float(np.mean(m.correct(which))) for m in members]
        if len(members) >= 2:
            acc = ensemble_accuracy([m.logits(which) for m in members], members[0].labels)
            rows.append(_ensemble_row(keys, "seed_ensemble", [acc], accs, float("nan")))
        pairs = [keys["teacher"]] if keys["stage"] == "final" else []
        if keys["stage"] == "baseline":
            pairs = sorted(t for t in teachers if f"{t}-{keys['student']}" in set(runs["pair"]))
        for teacher in pairs:
            if teacher not in teachers:
                continue
            t = store.get(teachers[teacher])
            both = [ensemble_accuracy([m.logits(which), t.logits("best")], t.labels) for m in members]
            row_keys = {**keys, "teacher": teacher, "pair": f"{teacher}-{keys['student']}"}
            rows.append(_ensemble_row(row_keys, "teacher_student", both, accs, 100 * float(np.mean(t.correct()))))
    return pd.DataFrame(rows, columns=ENSEMBLE_COLUMNS)


def _mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval (NaN bounds with fewer than 2 values)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(t_dist.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def audit_table(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Per teacher, baseline and final KD cell: test accuracy (%) val-selected (``test_best``, ours), at the
    last epoch (``test_final``) and best-on-test over epochs (max of ``audit_test_acc``: the optimistic protocol
    that reads the test set to choose), each with its 95% t-interval over seeds, and the optimism of
    best-on-test over val-selected in pp. Only runs whose every epoch has ``audit_test_acc``."""
    if "audit_test_acc" not in history.columns:
        return pd.DataFrame(columns=AUDIT_COLUMNS)
    audited = history.groupby("run_id")["audit_test_acc"].agg(lambda s: s.max() if s.notna().all() else np.nan)
    runs = runs.assign(best_on_test=runs["run_id"].map(audited)).dropna(subset=["best_on_test"])
    rows = []
    for keys, group in _cells(runs):
        row: dict[str, Any] = {**keys, "runs": len(group)}
        for name, column in (("val_selected", "test_best"), ("last_epoch", "test_final"), ("best_on_test", None)):
            values = group[column or name].to_numpy(float)
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _mean_ci(values)
        row["optimism_pp"] = row["best_on_test"] - row["val_selected"]
        rows.append(row)
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)
