"""The moderation sensitivity table (kdcore.analysis.sensitivity): one choice changed at a time, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdcore.analysis import latex
from kdcore.analysis import moderation as M
from kdcore.analysis.sensitivity import moderation_sensitivity, without_selection_seeds

PARAMS = {"small": 1e6, "big": 4e6}
COLUMNS = ["stage", "pair", "teacher", "student", "method", "alpha", "seed", "test_best", "test_final", "val_acc"]


def run(stage: str, student: str, seed: int, acc: float, alpha: float = np.nan) -> dict:
    kd = stage != "baseline"
    return {
        "stage": stage,
        "pair": f"T-{student}" if kd else "",
        "teacher": "T" if kd else "",
        "student": student,
        "method": "logit" if kd else "baseline",
        "alpha": alpha,
        "seed": seed,
        "test_best": acc,
        "test_final": acc - 0.1 * seed,
        "val_acc": acc + 0.05 * seed,
    }


def runs(rng: np.random.Generator) -> pd.DataFrame:
    """Two students, 5 seeds; tuned alpha 0.5 (small) and 0.9 (big); seed 0 also ran the selection grid
    (alpha 0.5 and 0.9 for both) and its final run of the big student is the lucky grid run again."""
    rows = []
    for student, gain in (("small", 0.2), ("big", 0.3)):
        alpha = 0.5 if student == "small" else 0.9
        for seed in range(5):
            rows.append(run("baseline", student, seed, 90 + rng.normal(0, 0.1)))
            lucky = 0.8 if (student == "big" and seed == 0) else 0.0
            rows.append(run("final", student, seed, 90 + gain + lucky + rng.normal(0, 0.1), alpha))
        for a, acc in ((0.5, 90.25), (0.9, 90.6 if student == "big" else 90.1)):
            rows.append(run("select", student, 0, acc, a))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["stem"], df["clip_scope"], df["width"] = "cifar", "all", 64
    df["params"] = df["student"].map(PARAMS)
    df["path"] = [f"run{i}" for i in range(len(df))]
    return df


def test_each_choice_changes_one_thing():
    df = runs(np.random.default_rng(1))
    table = moderation_sensitivity(pd.concat([df, df[df["stage"] == "final"]]), min_effect_pp=0.2)  # parts repeat
    by = table.set_index("variant")
    primary = M.moderation_table(df, min_effect_pp=0.2).iloc[0]
    assert by.loc["primary analysis", "gain_change"] == pytest.approx(primary["gain_change"])
    assert by.loc["primary analysis", "seeds_per_group"] == 5
    for metric in ("test_final", "val_acc"):
        expect = M.moderation_table(df, metric, 0.2).iloc[0]["gain_change"]
        assert by.loc[metric, "gain_change"] == pytest.approx(expect) and by.loc[metric, "metric"] == metric
    # without seed 0: per-seed gains of seeds 1-4 only (the lucky big-student run is gone)
    gains = {}
    for s in PARAMS:
        kd = df[(df["stage"] == "final") & (df["student"] == s) & (df["seed"] > 0)].set_index("seed")["test_best"]
        base = df[(df["stage"] == "baseline") & (df["student"] == s)].set_index("seed")["test_best"]
        gains[s] = (kd - base.loc[kd.index]).mean()
    row = by.loc["without seed(s) 0"]
    assert row["gain_change"] == pytest.approx(gains["big"] - gains["small"]) and row["seeds_per_group"] == 4
    assert row["gain_change"] < by.loc["primary analysis", "gain_change"]
    assert by.loc["unpaired", "p"] == pytest.approx(M.moderation_table(df, design="unpaired").iloc[0]["p"])


def test_matched_hyper_parameters_compare_the_students_at_the_same_grid_point():
    df = runs(np.random.default_rng(2))
    table = moderation_sensitivity(df, min_effect_pp=0.2)
    matched = table[table["choice"] == "hyper-parameters"].set_index("variant")
    base = df[df["stage"] == "baseline"].groupby("student")["test_best"].mean()
    at = {0.5: 90.25 - base["big"] - (90.25 - base["small"]), 0.9: 90.6 - base["big"] - (90.1 - base["small"])}
    assert matched.loc["matched at alpha=0.5", "gain_change"] == pytest.approx(at[0.5])
    assert matched.loc["matched at alpha=0.9", "gain_change"] == pytest.approx(at[0.9])
    assert matched.loc["matched at alpha=0.5", "verdict"] == "estimate only"  # one selection seed: no test
    mean_row = matched.loc[[v for v in matched.index if v.startswith("matched: mean over 2")]].iloc[0]
    assert mean_row["gain_change"] == pytest.approx(np.mean(list(at.values())))
    tex = latex.tex_moderation_sensitivity(table, "test accuracy")
    assert "\\label{tab:moderation-sensitivity}" in tex and "matched at alpha=0.9" in tex


def test_disjoint_final_and_selection_seeds_leave_every_run():
    df = runs(np.random.default_rng(3))
    df.loc[df["stage"] == "select", "seed"] = 100
    kept, label = without_selection_seeds(df)
    assert len(kept) == len(df) and label == "final seeds disjoint from selection"


@pytest.mark.slow
def test_the_parts_it_reads_give_the_whole_studys_table():
    from kdcore.analysis.outputs import STAT_TABLES

    df = runs(np.random.default_rng(4))
    parts = {
        "kd": df[df["stage"].isin(["baseline", "final"])],
        "selection": df[df["stage"].isin(["select", "final"])],
    }
    assert STAT_TABLES["moderation_sensitivity"] == ("kd", "selection")
    split = moderation_sensitivity(pd.concat([parts[p] for p in STAT_TABLES["moderation_sensitivity"]]))
    pd.testing.assert_frame_equal(split, moderation_sensitivity(df))
