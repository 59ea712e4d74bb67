"""The moderation test (kdcore.analysis.moderation): hand computations, a known slope, no effect, the paper's runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdcore.analysis import moderation as M
from kdcore.errors import DataError

DATA = Path(__file__).parent / "data"


def frame(rows: list[dict], params: dict[str, float] | None = None) -> pd.DataFrame:
    """A run table with the columns the moderation test reads (stage, teacher, student, method, seed, ...)."""
    df = pd.DataFrame(rows)
    df["teacher"] = df["pair"].str.partition("-")[0]
    df["stem"], df["clip_scope"], df["width"] = "cifar", "all", 64
    df["params"] = df["student"].map(params or {}).astype(float)
    return df


def study(
    gain: dict[str, float], seeds: int, rng: np.random.Generator, sd: float = 0.15, shared: bool = True
) -> list[dict]:
    """Baseline and KD runs (teacher T, method logit) of students with the given true gains; noise sd."""
    rows = []
    for student, g in gain.items():
        for seed in range(seeds):
            rows.append({"stage": "baseline", "pair": "", "student": student, "method": "baseline", "seed": seed})
            rows[-1]["test_best"] = 90 + rng.normal(0, sd)
            kd_seed = seed if shared else seed + seeds
            rows.append({"stage": "final", "pair": f"T-{student}", "student": student, "method": "logit"})
            rows[-1].update(seed=kd_seed, test_best=90 + g + rng.normal(0, sd))
    return rows


HAND = {  # two students, four groups of 3 seeds, seeds 0-2 shared
    ("baseline", "small"): [90.0, 90.4, 90.2],
    ("final", "small"): [90.5, 90.6, 91.0],
    ("baseline", "big"): [91.0, 91.3, 90.8],
    ("final", "big"): [91.9, 92.3, 91.7],
}
HAND_PARAMS = {"small": 1e6, "big": 4e6}  # two doublings apart


def hand_runs() -> pd.DataFrame:
    rows = [
        {"stage": stage, "pair": "" if stage == "baseline" else f"T-{s}", "student": s, "seed": i, "test_best": v}
        | {"method": "baseline" if stage == "baseline" else "feature"}
        for (stage, s), values in HAND.items()
        for i, v in enumerate(values)
    ]
    return frame(rows, HAND_PARAMS)


def test_two_capacities_is_the_difference_in_gains_with_welch_satterthwaite():
    row = M.moderation_table(hand_runs(), design="unpaired").iloc[0]
    g = {k: np.array(v) for k, v in HAND.items()}
    diff = (g["final", "big"].mean() - g["baseline", "big"].mean()) - (
        g["final", "small"].mean() - g["baseline", "small"].mean()
    )
    v = [x.var(ddof=1) / 3 for x in g.values()]
    se = math.sqrt(sum(v))
    df = sum(v) ** 2 / sum(vi**2 / 2 for vi in v)  # Welch-Satterthwaite over the four groups
    half = stats.t.ppf(0.975, df) * se
    assert row["gain_change"] == pytest.approx(diff)
    assert row["slope"] == pytest.approx(diff / 2)  # per doubling: log2(4e6 / 1e6) = 2
    assert row["df"] == pytest.approx(df)
    assert (row["gain_change_ci_low"], row["gain_change_ci_high"]) == pytest.approx((diff - half, diff + half))
    assert row["p"] == pytest.approx(2 * stats.t.sf(abs(diff) / se, df))
    assert row["design"] == "unpaired" and row["n_capacities"] == 2 and row["holm_m"] == 1


def test_paired_two_capacities_is_welch_on_the_per_seed_gains():
    row = M.moderation_table(hand_runs(), design="auto").iloc[0]
    assert row["design"] == "paired"
    g = {k: np.array(v) for k, v in HAND.items()}
    big, small = g["final", "big"] - g["baseline", "big"], g["final", "small"] - g["baseline", "small"]
    welch = stats.ttest_ind(big, small, equal_var=False)
    assert row["gain_change"] == pytest.approx(big.mean() - small.mean())
    assert row["p"] == pytest.approx(welch.pvalue)
    assert row["df"] == pytest.approx(welch.df)


def test_three_capacities_equal_weight_slope_with_each_cells_variance_by_hand():
    rng = np.random.default_rng(3)
    params = {"a": 1e5, "b": 4e5, "c": 3.2e6}
    runs = frame(study({"a": 0.1, "b": 0.3, "c": 0.2}, 4, rng), params)
    row = M.moderation_table(runs, design="unpaired").iloc[0]
    cells = M.gain_cells(runs, design="unpaired")
    x, y = cells["log2_params"].to_numpy(), cells["gain"].to_numpy()
    c = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    assert row["slope"] == pytest.approx(np.sum(c * y))
    assert row["se"] == pytest.approx(math.sqrt(np.sum(c**2 * cells["se"].to_numpy() ** 2)))
    resid = y - np.polyval(np.polyfit(x, y, 1), x)
    h = 1 / 3 + (x - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2)
    assert row["lack_of_fit"] == pytest.approx(np.sum(resid**2) / np.sum((1 - h) * cells["se"].to_numpy() ** 2))
    # gains by hand: mean KD minus mean baseline per student
    kd = runs[runs["stage"] == "final"].groupby("student")["test_best"].mean()
    base = runs[runs["stage"] == "baseline"].groupby("student")["test_best"].mean()
    assert cells.set_index("student")["gain"].to_dict() == pytest.approx((kd - base).to_dict())


def test_known_slope_is_recovered_within_its_ci():
    rng = np.random.default_rng(7)
    params = {f"s{k}": 1e5 * 2**k for k in range(5)}  # 16x in parameters
    truth = 0.4  # pp per doubling
    runs = frame(study({s: 0.2 + truth * k for k, s in enumerate(params)}, 8, rng), params)
    row = M.moderation_table(runs).iloc[0]
    assert row["ci_low"] < truth < row["ci_high"]
    assert row["p_holm"] < 0.05 and row["conclusion"].startswith("moderation: the gain increases")
    points = M.gain_points(runs)
    assert len(points) == 5 * 8 and points["params"].notna().all()


@pytest.mark.parametrize("shared", [True, False])
def test_no_effect_gives_uniform_p_and_about_five_percent_false_positives(shared):
    rng = np.random.default_rng(11)
    params = {"small": 11_173_962.0, "big": 21_282_122.0}
    p = np.array(
        [
            M.fit_slope(M.gain_cells(frame(study({"small": 0.2, "big": 0.2}, 5, rng, shared=shared), params)))["p"]
            for _ in range(200)
        ]
    )
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.02 <= np.mean(p < 0.05) <= 0.09
    # the table claims moderation only below the Holm-adjusted alpha; a null study reads "inconclusive" here
    row = M.moderation_table(frame(study({"small": 0.2, "big": 0.2}, 5, rng, shared=shared), params)).iloc[0]
    assert row["conclusion"].startswith("moderation") == (row["p_holm"] < 0.05)


def test_a_priori_design_figures():
    x = [math.log2(11_173_962), math.log2(21_282_122)]
    span = x[1] - x[0]
    sd, n = 0.14, 5
    # two capacities: difference in gains over four groups of n, SE = 2 sd / sqrt(n), df = 4 (n - 1)
    delta = 0.3
    nc = delta / (2 * sd / math.sqrt(n))
    crit = stats.t.ppf(0.975, 4 * (n - 1))
    by_hand = stats.nct.sf(crit, 4 * (n - 1), nc) + stats.nct.cdf(-crit, 4 * (n - 1), nc)
    assert M.slope_power(delta / span, sd, x, n) == pytest.approx(by_hand)
    mde = M.detectable_slope(sd, x, n)
    assert M.slope_power(mde, sd, x, n) == pytest.approx(0.8)
    need = M.seeds_for_slope(0.2 / span, sd, x)
    assert M.slope_power(0.2 / span, sd, x, need) >= 0.8 > M.slope_power(0.2 / span, sd, x, need - 1)
    assert M.seeds_for_slope(0.0, sd, x) is None and math.isnan(M.detectable_slope(sd, x[:1], n))


def test_missing_params_use_the_known_counts_and_missing_baseline_is_an_error():
    runs = frame([r for r in study({"resnet18": 0.1, "resnet34": 0.1}, 2, np.random.default_rng(0))])
    assert runs["params"].isna().all()
    assert M.student_params(runs).to_dict() == {"resnet18": 11_173_962.0, "resnet34": 21_282_122.0}
    with pytest.raises(DataError, match="no baseline runs of student resnet34"):
        M.moderation_table(runs[~((runs["stage"] == "baseline") & (runs["student"] == "resnet34"))])


def paper_runs() -> pd.DataFrame:
    """The paper's R50 -> R18 / R34 final runs and both students' baselines (test accuracy at the best val
    epoch, 5 seeds each), copied from the paper's per-run results; no parameter counts (known counts used)."""
    df = pd.read_csv(DATA / "paper_r50_moderation.csv", keep_default_na=False)
    return frame(df.to_dict(orient="records"))


def paper_gains() -> dict[str, dict[str, np.ndarray]]:
    """Per-seed gains (KD minus baseline of the same seed) of the paper's R50 families, by method and student."""
    runs = paper_runs()
    base = runs[runs["stage"] == "baseline"].set_index(["student", "seed"])["test_best"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for (method, student), g in runs[runs["stage"] == "final"].groupby(["method", "student"]):
        kd = g.set_index(["student", "seed"])["test_best"]
        out.setdefault(method, {})[student] = (kd - base.loc[kd.index]).to_numpy()
    return out


def test_paper_runs_do_not_show_moderation():
    table = M.moderation_table(paper_runs(), min_effect_pp=0.2).set_index("method")
    feat, logit = table.loc["feature"], table.loc["logit"]
    assert (table["design"] == "paired").all() and (table["seeds_per_group"] == 5).all()
    # difference in gains R34 - R18 (pp): feature 0.194 - 0.098, logit 0.084 - 0.058
    assert round(feat["gain_change"], 3) == 0.096 and round(logit["gain_change"], 3) == 0.026
    assert (round(feat["gain_change_ci_low"], 2), round(feat["gain_change_ci_high"], 2)) == (-0.10, 0.29)
    assert (round(logit["gain_change_ci_low"], 2), round(logit["gain_change_ci_high"], 2)) == (-0.22, 0.28)
    assert round(feat["p"], 2) == 0.28 and round(logit["p"], 2) == 0.80
    assert round(feat["p_holm"], 2) == 0.56 and table["holm_m"].eq(2).all()
    assert table["conclusion"].str.startswith("inconclusive").all()


def test_paper_runs_equivalence_is_statsmodels_tost_on_the_per_seed_gains():
    from statsmodels.stats.weightstats import ttost_ind

    table = M.moderation_table(paper_runs(), min_effect_pp=0.2).set_index("method")
    for method, gains in paper_gains().items():
        row = table.loc[method]
        big, small = gains["resnet34"], gains["resnet18"]
        p, _, _ = ttost_ind(big, small, -0.2, 0.2, usevar="unequal")
        assert row["p_tost"] == pytest.approx(p)
        ci = stats.ttest_ind(big, small, equal_var=False).confidence_interval(0.90)
        assert (row["gain_change_ci90_low"], row["gain_change_ci90_high"]) == pytest.approx((ci.low, ci.high))
        assert row["bound_ruled_out"] == pytest.approx(max(-ci.low, ci.high))
        # at the bound ruled out, TOST sits at alpha exactly; a hair above it, rejects
        assert ttost_ind(big, small, -row["bound_ruled_out"], row["bound_ruled_out"], usevar="unequal")[0] == (
            pytest.approx(0.05)
        )
    # neither family rules out 0.2 pp: the 90% CIs reach 0.25 (feature) and 0.22 (logit)
    assert (table["p_tost"] > 0.05).all() and (table["bound_ruled_out"] > 0.2).all()


def test_paper_runs_paired_design_figures_from_the_sd_of_the_per_seed_gains():
    table = M.moderation_table(paper_runs(), min_effect_pp=0.2).set_index("method")
    x = [math.log2(11_173_962), math.log2(21_282_122)]
    for method, gains in paper_gains().items():
        row = table.loc[method]
        ss = sum(float(((g - g.mean()) ** 2).sum()) for g in gains.values())
        sd = math.sqrt(ss / 8)
        assert row["sd_pp"] == pytest.approx(sd) and row["sd_df"] == 8
        assert row["sd_upper"] == pytest.approx(sd * math.sqrt(8 / stats.chi2.ppf(0.05, 8)))
        span = x[1] - x[0]
        # paired two capacities: SE of the difference in gains sqrt(2) sd / sqrt(n), 2 (n - 1) df
        n = int(row["seeds_for_min_effect"])
        for seeds, expect in ((n, True), (n - 1, False)):
            nc = 0.2 / (math.sqrt(2) * sd / math.sqrt(seeds))
            df = 2 * (seeds - 1)
            crit = stats.t.ppf(0.975, df)
            assert (stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= 0.8) == expect
        assert M.slope_power(row["mde_slope"], sd, x, 5, paired=True) == pytest.approx(0.8)
        assert row["seeds_for_min_effect_upper"] == M.seeds_for_slope(0.2 / span, row["sd_upper"], x, paired=True)
        assert row["seeds_for_min_effect_upper"] > row["seeds_for_min_effect"]


def test_paper_runs_unpaired_and_observed_size_planning():
    runs = paper_runs()
    table = M.moderation_table(runs, design="unpaired").set_index("method")
    assert round(table.loc["feature", "p"], 2) == 0.48 and round(table.loc["logit", "p"], 2) == 0.83
    x = M.gain_cells(runs).drop_duplicates("student")["log2_params"]
    span = float(x.max() - x.min())
    # seeds per group to detect a change as large as the feature-KD point estimate (0.1 pp)
    assert M.seeds_for_slope(0.1 / span, table.loc["feature", "sd_pp"], x) == 70


def test_outputs_table_summary_and_figure(tmp_path):
    from kdcore.analysis import figures, latex, stats

    runs = paper_runs()
    table = M.moderation_table(runs)
    tex = latex.tex_moderation(table, "test accuracy")
    assert "\\toprule" in tex and "\\label{tab:moderation}" in tex and "over the 2 teacher" in tex
    assert "+0.103" in tex and "inconclusive" in tex
    section = M.moderation_summary(table)
    assert section["multiple_comparisons"]["m"] == 2 and len(section["families"]) == 2
    assert section["families"][0]["seeds_for_min_effect"] == table["seeds_for_min_effect"].iloc[0]
    assert section["power"]["kind"] == "a priori" and "TOST" in section["equivalence"]["test"]
    written = figures.plot_gain_vs_capacity(
        M.gain_points(runs), M.gain_cells(runs), table, tmp_path / "gain_vs_capacity.pdf"
    )
    assert [p.suffix for p in written] == [".pdf", ".png"] and all(p.stat().st_size > 1000 for p in written)
    assert not stats.premise_warnings(stats.teacher_premise(runs))  # no teacher runs: nothing to warn about
