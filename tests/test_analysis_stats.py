"""Statistics of kdcore.analysis.stats against direct scipy computations on hand-made run tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from _analysis_study import make_study
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from kdcore.analysis import stats as S
from kdcore.analysis.summary import build_summary
from kdcore.analysis.table import build_run_table
from kdcore.errors import DataError


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> pd.DataFrame:
    m, f = make_study(tmp_path_factory.mktemp("study"), seeds=(0, 1, 2, 3, 4))
    return build_run_table(m, f)


def test_cell_summary_matches_numpy(runs):
    cells = S.cell_summary(runs)
    base = cells[(cells["stage"] == "baseline") & (cells["student"] == "resnet34")].iloc[0]
    raw = runs[(runs["stage"] == "baseline") & (runs["student"] == "resnet34")]["test_best"]
    assert base["n"] == 5
    assert base["mean"] == pytest.approx(raw.mean())
    assert base["std"] == pytest.approx(np.std(raw, ddof=1))


def test_comparisons_against_scipy(runs):
    comp = S.kd_comparisons(runs)
    assert len(comp) == 6  # 3 pairs x 2 methods
    row = comp[(comp["pair"] == "resnet50-resnet34") & (comp["method"] == "feature")].iloc[0]
    kd = runs[
        (runs["stage"] == "final") & (runs["pair"] == "resnet50-resnet34") & (runs["method"] == "feature")
    ].sort_values("seed")
    base = runs[(runs["stage"] == "baseline") & (runs["student"] == "resnet34")].sort_values("seed")
    x, y = kd["test_best"].to_numpy(), base["test_best"].to_numpy()
    welch = stats.ttest_ind(x, y, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert row["gain"] == pytest.approx(x.mean() - y.mean())
    assert row["p_welch"] == pytest.approx(welch.pvalue)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["se"] == pytest.approx(math.sqrt(x.var(ddof=1) / 5 + y.var(ddof=1) / 5))
    paired = stats.ttest_rel(x, y)
    assert row["p_paired"] == pytest.approx(paired.pvalue)
    assert row["n_paired"] == 5
    sp = math.sqrt((x.var(ddof=1) * 4 + y.var(ddof=1) * 4) / 8)
    d = (x.mean() - y.mean()) / sp
    assert row["cohen_d"] == pytest.approx(d)
    assert row["hedges_g"] == pytest.approx(d * (1 - 3 / (4 * 10 - 9)))
    boot = stats.bootstrap(
        (x, y),
        lambda a, b, axis=-1: a.mean(axis) - b.mean(axis),
        n_resamples=S.N_BOOT,
        method="BCa",
        rng=np.random.default_rng(S.BOOT_SEED),
        vectorized=True,
    )
    assert (row["bca_low"], row["bca_high"]) == pytest.approx(
        (boot.confidence_interval.low, boot.confidence_interval.high)
    )
    assert row["p_holm"] == pytest.approx(S.holm(comp["p_welch"].to_numpy())[row.name])
    assert (comp["holm_m"] == 6).all()
    # a priori design figure: seeds per arm for min_effect_pp at the baseline's SD (no observed-effect power)
    power = pytest.importorskip("statsmodels.stats.power")
    n = power.TTestIndPower().solve_power(effect_size=S.MIN_EFFECT_PP / y.std(ddof=1), alpha=0.05, power=0.8)
    assert row["seeds_for_min_effect"] == math.ceil(n)
    assert "seeds_80_power" not in comp.columns


def test_paired_design_uses_shared_seeds_only(runs):
    # drop two baseline seeds: Welch uses 5 vs 3 runs, the paired test the 3 shared seeds
    sub = runs[~((runs["stage"] == "baseline") & runs["seed"].isin([3, 4]))]
    row = S.kd_comparisons(sub).query("pair == 'resnet34-resnet18' and method == 'logit'").iloc[0]
    kd = sub[(sub["stage"] == "final") & (sub["pair"] == "resnet34-resnet18") & (sub["method"] == "logit")].set_index(
        "seed"
    )["test_best"]
    base = sub[(sub["stage"] == "baseline") & (sub["student"] == "resnet18")].set_index("seed")["test_best"]
    assert row["n_treated"] == 5 and row["n_control"] == 3 and row["n_paired"] == 3
    assert row["p_welch"] == pytest.approx(stats.ttest_ind(kd, base, equal_var=False).pvalue)
    assert row["p_paired"] == pytest.approx(stats.ttest_rel(kd.loc[[0, 1, 2]], base.loc[[0, 1, 2]]).pvalue)


def test_holm_step_down():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    adj = S.holm(p)
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 with m = 4 -> 0.02, 0.03, 0.06, 0.06 (monotone)
    assert adj[[3, 0, 2, 1]] == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert math.isnan(adj[4])
    assert S.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(1).uniform(0, 0.2, 8)
    assert S.holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1])


def test_seeds_to_detect_is_a_priori():
    # d = 1 (effect = SD): the textbook 17 seeds per arm at alpha 0.05 two-sided, 80% power
    assert S.seeds_to_detect(0.5, 0.5) == 17
    n = S.seeds_to_detect(0.2, 0.14)
    assert TTestIndPower().power(0.2 / 0.14, n, 0.05) >= 0.8 > TTestIndPower().power(0.2 / 0.14, n - 1, 0.05)
    assert S.seeds_to_detect(0.0, 0.1) is None and S.seeds_to_detect(0.2, 0.0) is None
    assert S.seeds_to_detect(1e-6, 1.0) is None  # beyond MAX_POWER_N


def test_significance_legend_names_correction_and_family_size():
    text = S.significance_legend(8)
    assert "no correction" in text and "Holm" in text and "over 8 " in text


def test_a_comparison_whose_runs_mix_devices_or_precisions_gets_a_note(tmp_path):
    from kdcore.analysis.summary import build_summary, mixed_compute_notes

    m, f = make_study(tmp_path, seeds=(0, 1))
    runs = build_run_table(m, f)
    runs["compute"] = "cpu/float32"
    assert mixed_compute_notes(runs) == []
    one = runs.index[runs["run_id"] == "final/resnet50-resnet34/feature/seed1"]
    runs.loc[one, "compute"] = "cuda/bfloat16"
    notes = mixed_compute_notes(runs)
    assert notes == [
        "resnet50-resnet34 feature and its baselines mix devices or precisions (cpu/float32 3 runs, "
        "cuda/bfloat16 1 runs): compare with care"
    ]
    assert notes[0] in build_summary(runs)["notes"]
    runs.loc[runs["stage"] == "baseline", "compute"] = ""  # runs that record none (imported) are left out
    runs.loc[runs["stage"] == "final", "compute"] = "cuda/bfloat16"
    assert mixed_compute_notes(runs) == []


def test_teacher_premise_warns_when_teacher_is_weaker(tmp_path):
    from _analysis_study import default_acc

    def weak_r34(stage, student, teacher, method, seed):  # teacher R34 below the R18 student's baseline
        acc = default_acc(stage, student, teacher, method, seed)
        return acc - 0.2 if stage == "teacher" and student == "resnet34" else acc

    m, f = make_study(tmp_path, acc=weak_r34)
    runs = build_run_table(m, f)
    premise = S.teacher_premise(runs).set_index("pair")
    assert not premise.loc["resnet34-resnet18", "holds"]
    assert premise.loc["resnet50-resnet18", "holds"] and premise.loc["resnet50-resnet34", "holds"]
    assert premise.loc["resnet34-resnet18", "margin"] == pytest.approx(
        runs.query("stage == 'teacher' and student == 'resnet34'")["test_best"].mean()
        - runs.query("stage == 'baseline' and student == 'resnet18'")["test_best"].mean()
    )
    summary = build_summary(runs)
    warned = [n for n in summary["notes"] if "does not beat" in n]
    assert len(warned) == 1 and "resnet34" in warned[0] and "resnet18" in warned[0]
    assert not [n for n in build_summary(build_run_table(*make_study(tmp_path / "ok")))["notes"] if "beat" in n]


def test_one_seed_study_renders_with_notes(tmp_path):
    m, f = make_study(tmp_path, seeds=(0,), teacher_seeds=(0,))
    runs = build_run_table(m, f)
    comp = S.kd_comparisons(runs)
    assert comp["gain"].notna().all()
    assert comp["p_welch"].isna().all() and comp["ci_low"].isna().all() and comp["p_holm"].isna().all()
    assert comp["notes"].str.contains("at least 2 seeds").all()
    summary = build_summary(runs)
    assert summary["comparisons"][0]["p_welch"] is None
    assert summary["notes"] and summary["multiple_comparisons"]["m"] == 0
    assert all(r["n_cifar"] == 1 for r in summary["stem_ablation"])


def test_selection_table_and_select_winner_agree(tmp_path):
    """Two selection seeds: the best single run belongs to a point whose mean loses; both paths pick the mean."""
    import json

    from kdcore.selection import choose_winner, score_candidates

    runs = pd.DataFrame(
        {
            "stage": "select",
            "pair": "resnet50-resnet18",
            "teacher": "resnet50",
            "student": "resnet18",
            "method": "logit",
            "alpha": [0.5, 0.5, 0.9, 0.9, 0.7, 0.7],
            "temperature": 4.0,
            "beta": np.nan,
            "seed": [0, 1, 0, 1, 0, 1],
            "val_acc": [95.0, 90.0, 93.0, 93.0, 93.0, 93.0],
            "test_best": 90.0,
        }
    )
    sel = S.selection_table(runs)
    assert set(sel.loc[sel["winner"], "alpha"]) == {0.7}  # mean 93 ties 0.9; 0.7 comes first in grid order
    candidates = []
    for a in (0.5, 0.7, 0.9):  # grid order of the workflow: ascending, like the table
        paths = []
        for seed, v in runs.loc[runs["alpha"] == a, ["seed", "val_acc"]].itertuples(index=False):
            path = tmp_path / f"{a}-{seed}.json"
            path.write_text(json.dumps({"results": {"best_val_acc": v / 100}}))
            paths.append(str(path))
        candidates.append({"hp": f"a{a}", "params": {"alpha": a}, "metrics": paths})
    assert choose_winner(score_candidates(candidates, "best_val_acc"))["hp"] == "a0.7"


def test_selection_winner_and_final_choice(runs):
    sel = S.selection_table(runs)
    assert sel.groupby(["pair", "method"])["winner"].sum().eq(1).all()
    logit = sel[(sel["pair"] == "resnet34-resnet18") & (sel["method"] == "logit")]
    assert logit.loc[logit["val_acc"].idxmax(), "winner"]
    assert logit["used_in_final"].sum() == 1 and logit.loc[logit["used_in_final"], "winner"].all()


def test_stem_and_clip_ablations(runs):
    stem = S.stem_ablation(runs).set_index("student")
    cif = runs[(runs["stage"] == "baseline") & (runs["student"] == "resnet18") & runs["seed"].isin([0, 1])]["test_best"]
    img = runs[(runs["stage"] == "stem") & (runs["student"] == "resnet18")]["test_best"]
    assert stem.loc["resnet18", "n_cifar"] == 2  # CIFAR arm: the baselines with the ImageNet arm's seeds
    assert stem.loc["resnet18", "diff"] == pytest.approx(cif.mean() - img.mean())
    clip = S.clip_ablation(runs).iloc[0]
    assert clip["proj_grad_norm_max_bugged"] == pytest.approx(3.0 * 1.3)
    assert clip["proj_grad_norm_max_corrected"] == pytest.approx(0.5 * 1.3)
    fix = runs[(runs["stage"] == "final") & (runs["pair"] == "resnet50-resnet18") & (runs["method"] == "feature")][
        "test_best"
    ]
    bug = runs[runs["stage"] == "clip"]["test_best"]
    assert clip["p_welch"] == pytest.approx(stats.ttest_ind(fix, bug, equal_var=False).pvalue)


def test_duplicate_seed_is_an_error(runs):
    dup = pd.concat([runs, runs[runs["stage"] == "final"].head(1).assign(run_id="x")])
    with pytest.raises(DataError, match="share seed"):
        S.kd_comparisons(dup)


def test_unknown_metric():
    with pytest.raises(DataError, match="metric"):
        S.check_metric("accuracy")


def test_welch_interval_reaches_nominal_coverage_and_the_bootstrap_does_not():
    """Seeded simulation, 5 seeds per arm of normal data with unequal SDs: compare_arms' primary interval
    (Welch t) covers the true difference about 95% of the time; its BCa interval clearly less."""
    rng = np.random.default_rng(20240601)
    sims, truth = 400, 0.3
    welch = bca = 0
    for _ in range(sims):
        x = pd.Series(rng.normal(truth, 0.2, 5))
        y = pd.Series(rng.normal(0.0, 0.1, 5))
        r = S.compare_arms(x, y, n_resamples=999, boot_seed=int(rng.integers(1 << 31)), min_effect_pp=math.nan)
        welch += r["ci_low"] <= truth <= r["ci_high"]
        bca += r["bca_low"] <= truth <= r["bca_high"]
    assert 0.93 <= welch / sims <= 0.97
    assert bca / sims < 0.91  # about 0.87: the bootstrap is no check on the Welch interval at 5 seeds
    assert "87%" in S.BOOT_COVERAGE_NOTE


def test_each_holm_family_counts_its_own_p_values(runs):
    keep = ~((runs["stage"] == "final") & (runs["pair"] == "resnet50-resnet34") & (runs["method"] == "feature"))
    shifted = runs[(runs["stage"] == "final") & ~keep].assign(seed=lambda d: d["seed"] + 100)  # no shared seeds
    comp = S.kd_comparisons(pd.concat([runs[keep], shifted], ignore_index=True))
    assert comp["p_welch"].notna().sum() == 6 and comp["p_paired"].notna().sum() == 5
    assert (comp["holm_m"] == 6).all() and (comp["holm_m_paired"] == 5).all()
    finite = comp["p_paired"].notna()
    expect = multipletests(comp.loc[finite, "p_paired"], method="holm")[1]
    assert comp.loc[finite, "p_holm_paired"].to_numpy() == pytest.approx(expect)
    assert comp.loc[~finite, "p_holm_paired"].isna().all()


def test_paired_power_uses_the_sd_of_the_differences_and_its_upper_limit():
    x = pd.Series([90.5, 90.6, 91.0, 90.7, 90.9])
    y = pd.Series([90.0, 90.4, 90.2, 90.3, 90.6])
    r = S.compare_arms(x, y, n_resamples=99, min_effect_pp=0.2)
    sd = float(np.std(x - y, ddof=1))
    assert r["sd_diff"] == pytest.approx(sd)
    n = r["pairs_for_min_effect"]
    assert TTestPower().power(0.2 / sd, n, 0.05) >= 0.8 > TTestPower().power(0.2 / sd, n - 1, 0.05)
    upper = sd * math.sqrt(4 / stats.chi2.ppf(0.05, 4))
    assert S.sd_upper_limit(sd, 4) == pytest.approx(upper)
    assert r["pairs_for_min_effect_upper"] == S.pairs_to_detect(0.2, upper) > n
    assert r["seeds_for_min_effect_upper"] == S.seeds_to_detect(0.2, S.sd_upper_limit(float(y.std()), 4))
