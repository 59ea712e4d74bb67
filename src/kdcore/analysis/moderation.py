"""Does student capacity moderate the KD gain? A test of the interaction, per (teacher, method).

For each (teacher, method) the KD gain of each student (KD minus the same student's baseline, in pp) is
regressed on log2(student parameters); the slope is the change of the gain per doubling of capacity.

* Cell gains. Where every student of the family has at least 2 seeds with both a KD and a baseline run, the
  gain of a cell is the mean of its per-seed differences on the shared seeds (design ``paired``), with variance
  s_d^2 / n. Otherwise (design ``unpaired``) it is mean(KD) - mean(baseline) with variance
  s_KD^2 / n_KD + s_base^2 / n_base. Assumes independent seeds, roughly normal run-to-run noise, and (paired)
  that a seed's KD and baseline runs share what the seed fixes.
* Slope (:func:`slope_contrast`). Equal-weight least squares of the cell gains on log2(params): the slope is
  the linear contrast sum_i c_i gain_i with c the slope row of the OLS pseudo-inverse. Its variance is
  sum_i c_i^2 var_i from each cell's own variance (no common SD assumed: cell SDs may differ), with
  Welch-Satterthwaite degrees of freedom over the variance components (a "Welch contrast"). Weighting cells by
  1 / var from 4-df variances, as an earlier version did, rejects a true null 11-13 % of the time at
  alpha 0.05 (5 capacities x 5 seeds); this test holds its size (tests/test_moderation_calibration.py
  measures it on simulated null studies with cell SDs up to 3x apart). With two capacities it is the
  difference-in-gains test (gain_big - gain_small) / log2 step with Welch-Satterthwaite df.
* Lack of fit. With 3 or more capacities, ``lack_of_fit`` is the residual sum of squares of the cell gains
  around the line over its expectation from the seeds alone (about 1 when the gains lie on a line, NaN with 2
  capacities). It is reported, not used to inflate the SE: the test is of the linear trend across the
  capacities studied (the capacities are fixed, not a sample), and inflating by max(1, lack_of_fit) made the
  test conservative (1-3 % size in the same simulation).
* Holm over the (teacher, method) families with a finite p (statsmodels ``multipletests``).
* Equivalence (TOST, two one-sided t-tests at alpha each, with the slope's Welch-Satterthwaite df): ``p_tost``
  tests |gain_change| < ``min_effect_pp`` across the family's capacity range; the matching interval is the
  90 % CI (``gain_change_ci90_low/high``), and ``bound_ruled_out`` is the smallest change the data rule out at
  alpha (the largest |end| of the 90 % CI). Not Holm-adjusted.
* A priori design (never post-hoc power), for the design that is tested: paired, the SD is the pooled SD of the
  per-seed gains of the family's cells and the slope's SE with n seeds is sd / sqrt(n sum (x - mean x)^2)
  with C (n - 1) df; unpaired, the SD is the pooled within-group SD of the family's KD and baseline groups,
  the SE has a factor sqrt(2) and 2 C (n - 1) df. Both assume equal SDs and equal seeds per cell
  (statsmodels ``TTestPower`` with these df). The SD estimate has few df, so the seeds are given at the SD's
  point estimate and at its one-sided 95 % upper confidence limit sd sqrt(df / chi2_{0.05, df})
  (``sd_upper``, ``seeds_for_min_effect_upper``).

scipy and statsmodels are imported by the functions that use them, as in kdcore.analysis.stats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from kdcore.analysis.stats import (
    ALPHA,
    CONFIDENCE,
    MAX_POWER_N,
    MIN_EFFECT_PP,
    POWER,
    SD_UPPER_CONFIDENCE,
    check_metric,
    holm,
    records,
    sd_upper_limit,
)
from kdcore.errors import DataError

#: Student parameter counts (CIFAR stem, width 64, 10 classes) for run tables that lack them.
KNOWN_PARAMS = {"resnet18": 11_173_962, "resnet34": 21_282_122}
FAMILY = ["teacher", "method"]
TEST_NAME = (
    "equal-weight least-squares slope of the per-student KD gain on log2(student parameters), each cell's own "
    "variance, Welch-Satterthwaite df; two capacities: difference in gains"
)
MODERATION_COLUMNS = [
    "teacher",
    "method",
    "design",
    "n_capacities",
    "students",
    "params_min",
    "params_max",
    "seeds_per_group",
    "slope",
    "se",
    "df",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
    "holm_m",
    "intercept",
    "se_intercept",
    "cov_intercept_slope",
    "lack_of_fit",
    "gain_change",
    "gain_change_ci_low",
    "gain_change_ci_high",
    "gain_change_ci90_low",
    "gain_change_ci90_high",
    "min_effect_pp",
    "p_tost",
    "bound_ruled_out",
    "sd_pp",
    "sd_df",
    "sd_upper",
    "mde_slope",
    "mde_gain_change",
    "seeds_for_min_effect",
    "seeds_for_min_effect_upper",
    "conclusion",
    "notes",
]


def student_params(runs: pd.DataFrame) -> pd.Series:
    """Parameter count per student of the given runs (pass the KD and baseline arms: all of one student
    must agree): the ``params`` column, else :data:`KNOWN_PARAMS`, else counted from
    :func:`kdcore.models.build_model` at the runs' width (CIFAR stem)."""
    out = {}
    for student, grp in runs.groupby("student"):
        p = grp["params"].dropna() if "params" in grp else pd.Series(dtype=float)
        if len(p) and p.nunique() > 1:
            raise DataError(f"student {student}: runs disagree on its parameter count ({sorted(p.unique())})")
        if len(p):
            out[student] = float(p.iloc[0])
        elif student in KNOWN_PARAMS and (grp.get("width", pd.Series([64])).fillna(64) == 64).all():
            out[student] = float(KNOWN_PARAMS[student])
        else:
            from kdcore.models import build_model, count_parameters

            width = int(grp["width"].iloc[0]) if "width" in grp else 64
            out[student] = float(count_parameters(build_model(student, width=width)))
    return pd.Series(out, dtype=float)


def _arms(runs: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    final = runs[(runs["stage"] == "final") & (runs["method"] != "baseline") & (runs["clip_scope"] == "all")]
    base = runs[(runs["stage"] == "baseline") & (runs["stem"] == "cifar")]
    for name, df in (("final", final), ("baseline", base)):
        dup = df.duplicated(["teacher", "method", "student", "seed"])
        if dup.any():
            r = df[dup].iloc[0]
            raise DataError(
                f"{name} runs: several runs of {r['teacher']} {r['method']} {r['student']} seed {r['seed']}"
            )
    return final.dropna(subset=[metric]), base.dropna(subset=[metric])


def gain_points(runs: pd.DataFrame, metric: str = "test_best") -> pd.DataFrame:
    """Per-seed KD gains (KD minus the same student's baseline of the same seed, pp) of every final cell:
    teacher, method, student, params, seed, gain. Seeds without both runs are left out. Descriptive; a gain is
    a paired difference only where the seed fixes what the two runs share."""
    check_metric(metric)
    final, base = _arms(runs, metric)
    params = student_params(pd.concat([final, base]))
    b = base.set_index(["student", "seed"])[metric]
    rows = []
    for _, r in final.iterrows():
        if (r["student"], r["seed"]) in b.index:
            gain = float(r[metric]) - float(b.loc[(r["student"], r["seed"])])
            rows.append({**{k: r[k] for k in ("teacher", "method", "student")}, "seed": int(r["seed"]), "gain": gain})
    df = pd.DataFrame(rows, columns=["teacher", "method", "student", "seed", "gain"])
    df.insert(3, "params", df["student"].map(params))
    return df


def _ws_df(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite df of a sum of variance components (variance, df). Assumes independent components,
    each a scaled chi-square on its df (normal runs); an approximation that is good at 4 df per component
    (tests/test_moderation_calibration.py)."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / d for v, d in parts if d > 0)
    return total * total / denom if denom > 0 else math.nan


def _cell(kd: pd.Series, base: pd.Series, paired: bool) -> dict[str, Any]:
    """Gain of one student cell, its variance components [(variance of the mean, df)] and group SDs."""
    if paired:
        shared = kd.index.intersection(base.index)
        d = kd.loc[shared] - base.loc[shared]
        n = len(d)
        var = float(d.var(ddof=1)) / n if n > 1 else math.nan
        return {"gain": float(d.mean()), "n": n, "parts": [(var, n - 1)]}
    parts = [(float(s.var(ddof=1)) / len(s) if len(s) > 1 else math.nan, len(s) - 1) for s in (kd, base)]
    return {"gain": float(kd.mean() - base.mean()), "n": min(len(kd), len(base)), "parts": parts}


def gain_cells(runs: pd.DataFrame, metric: str = "test_best", design: str = "auto") -> pd.DataFrame:
    """One row per final (teacher, method, student) cell: params, log2_params, design, n, gain, se, df,
    ci_low, ci_high (95% t), sd_kd, sd_base and ``parts`` (variance components for the slope's df).

    ``design``: ``paired`` (per-seed differences on shared seeds), ``unpaired`` (cell means), or ``auto``
    (paired where every student of the (teacher, method) family has >= 2 shared seeds).

    The 95% t-interval of a cell assumes independent seeds and normal runs (paired: normal per-seed differences;
    unpaired: Welch, no equal variances, Welch-Satterthwaite df)."""
    from scipy import stats

    check_metric(metric)
    if design not in ("auto", "paired", "unpaired"):
        raise DataError(f"moderation design {design!r} is not one of auto, paired, unpaired")
    final, base = _arms(runs, metric)
    params = student_params(pd.concat([final, base]))
    rows = []
    for (teacher, method), fam in final.groupby(FAMILY, sort=True):
        series = {}
        for student, grp in fam.groupby("student"):
            b = base[base["student"] == student]
            if b.empty:
                raise DataError(f"final KD cell {teacher}-{student} {method}: no baseline runs of student {student}")
            series[student] = (grp.set_index("seed")[metric], b.set_index("seed")[metric])
        paired = design == "paired" or (
            design == "auto" and all(len(k.index.intersection(b.index)) >= 2 for k, b in series.values())
        )
        for student, (kd, b) in series.items():
            c = _cell(kd, b, paired)
            var = sum(v for v, _ in c["parts"])
            se, df = math.sqrt(var) if np.isfinite(var) else math.nan, _ws_df(c["parts"])
            half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * se if np.isfinite(df) and se > 0 else math.nan
            rows.append(
                {
                    "teacher": teacher,
                    "method": method,
                    "student": student,
                    "params": params[student],
                    "log2_params": math.log2(params[student]),
                    "design": "paired" if paired else "unpaired",
                    "n": c["n"],
                    "gain": c["gain"],
                    "se": se,
                    "df": df,
                    "ci_low": c["gain"] - half,
                    "ci_high": c["gain"] + half,
                    "sd_kd": float(kd.std(ddof=1)) if len(kd) > 1 else math.nan,
                    "sd_base": float(b.std(ddof=1)) if len(b) > 1 else math.nan,
                    "n_kd": len(kd),
                    "n_base": len(b),
                    "parts": c["parts"],
                }
            )
    cols = ["teacher", "method", "student", "params", "log2_params", "design", "n", "gain", "se", "df"]
    df = pd.DataFrame(rows, columns=[*cols, "ci_low", "ci_high", "sd_kd", "sd_base", "n_kd", "n_base", "parts"])
    return df.sort_values([*FAMILY, "params"]).reset_index(drop=True)


def slope_contrast(
    x: Any, gains: Any, variances: Any, dfs: Any, confidence: float = CONFIDENCE
) -> dict[str, np.ndarray]:
    """Equal-weight least-squares slope of cell gains on ``x``, tested with each cell's own variance.

    ``x``: (C,) capacities; ``gains``: (..., C) cell gains; ``variances``: (..., C, K) the variance components
    of each cell's gain (variances of means: one for a paired cell, KD and baseline for an unpaired one);
    ``dfs``: their degrees of freedom, broadcast to ``variances``. Vectorised over the leading axes (a
    simulation passes thousands of studies at once). Assumes independent cells whose components are scaled
    chi-squares with the given df (normal runs) and true gains linear in ``x``; no common SD.

    Returns arrays: slope, se, df (Welch-Satterthwaite), ci_low, ci_high, p (two-sided t), intercept,
    se_intercept, cov_intercept_slope and lack_of_fit (residual SS over its expectation; NaN for C < 3).
    """
    from scipy import stats

    x = np.asarray(x, dtype=float)
    design = np.column_stack([np.ones_like(x), x])
    pinv = np.linalg.pinv(design)  # rows: intercept and slope coefficients of the cells
    g = np.asarray(gains, dtype=float)
    v = np.asarray(variances, dtype=float)
    d = np.broadcast_to(np.asarray(dfs, dtype=float), v.shape)
    cell_var = v.sum(axis=-1)
    coef = g @ pinv.T
    comp = pinv[1][:, None] ** 2 * v
    var = comp.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = var**2 / (comp**2 / d).sum(axis=(-2, -1))
        se = np.sqrt(var)
        slope = coef[..., 1]
        half = stats.t.ppf(0.5 + confidence / 2, df) * se
        resid = g - coef @ design.T
        expected = (cell_var * np.diag(np.eye(len(x)) - design @ pinv)).sum(axis=-1)
        lof = (resid**2).sum(axis=-1) / expected if len(x) > 2 else np.full(np.shape(slope), np.nan)
    return {
        "slope": slope,
        "se": se,
        "df": df,
        "ci_low": slope - half,
        "ci_high": slope + half,
        "p": 2 * stats.t.sf(np.abs(slope / se), df),
        "intercept": coef[..., 0],
        "se_intercept": np.sqrt((pinv[0] ** 2 * cell_var).sum(axis=-1)),
        "cov_intercept_slope": (pinv[0] * pinv[1] * cell_var).sum(axis=-1),
        "lack_of_fit": lof,
    }


def fit_slope(cells: pd.DataFrame) -> dict[str, float]:
    """The moderation slope (pp per doubling) of one family's cells (:func:`gain_cells`) by
    :func:`slope_contrast` (equal weights, each cell's own variance, Welch-Satterthwaite df; same assumptions),
    as floats. With fewer than 2 capacities whose cells have a finite, positive SE (e.g. one seed per cell) only
    the slope and intercept are estimated, from every cell with a gain; the rest is NaN."""
    keys = ("slope", "se", "df", "ci_low", "ci_high", "p", "intercept", "se_intercept", "cov_intercept_slope")
    nan = dict.fromkeys((*keys, "lack_of_fit"), math.nan)
    ok = cells[np.isfinite(cells["se"]) & (cells["se"] > 0)]
    if ok["log2_params"].nunique() < 2 or len(ok) < 2:
        est = cells[np.isfinite(cells["gain"])]
        if est["log2_params"].nunique() < 2:
            return nan
        slope, intercept = np.polyfit(est["log2_params"].to_numpy(), est["gain"].to_numpy(), 1)
        return {**nan, "slope": float(slope), "intercept": float(intercept)}  # an estimate, untested
    variances = np.array([[v for v, _ in parts] for parts in ok["parts"]], dtype=float)
    dfs = np.array([[d for _, d in parts] for parts in ok["parts"]], dtype=float)
    res = slope_contrast(ok["log2_params"].to_numpy(), ok["gain"].to_numpy(), variances, dfs)
    return {k: float(v) for k, v in res.items()}


def tost(estimate: float, se: float, df: float, bound: float) -> float:
    """Two one-sided t-tests (TOST) of |true value| < ``bound`` for a normal estimate with standard error
    ``se`` on ``df`` degrees of freedom: the larger of the two one-sided p-values (assumes the estimate is
    t-distributed as in its own test). Equivalent to the (1 - 2 alpha) CI lying inside (-bound, bound)."""
    from scipy import stats

    if not (np.isfinite(estimate) and np.isfinite(se) and np.isfinite(df)) or se <= 0 or bound <= 0:
        return math.nan
    t = stats.t(df)
    return float(max(t.sf((estimate + bound) / se), t.sf((bound - estimate) / se)))


def pooled_sd(runs: pd.DataFrame, cells: pd.DataFrame, metric: str = "test_best", design: str = "unpaired") -> tuple:
    """Pooled SD (pp) behind one family's test and its degrees of freedom: ``paired``, of the per-seed gains of
    the family's cells; otherwise of its KD groups and the baselines of its students. Assumes one common
    run-to-run SD (the planning figures need one; the test itself does not)."""
    teacher, method = cells["teacher"].iloc[0], cells["method"].iloc[0]
    if design == "paired":
        pts = gain_points(runs, metric)
        fam = pts[(pts["teacher"] == teacher) & (pts["method"] == method)]
        groups = [g["gain"] for _, g in fam.groupby("student")]
    else:
        final, base = _arms(runs, metric)
        fam = final[(final["teacher"] == teacher) & (final["method"] == method)]
        groups = [g[metric] for _, g in fam.groupby("student")]
        groups += [g[metric] for s, g in base.groupby("student") if s in set(cells["student"])]
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    dof = sum(len(g) - 1 for g in groups)
    return (math.sqrt(ss / dof) if dof > 0 else math.nan), int(dof)


def slope_power(slope: float, sd: float, log2_params: Any, n: int, alpha: float = ALPHA, paired: bool = False) -> float:
    """A priori power of the two-sided slope test with ``n`` seeds per group when the run-to-run SD is ``sd``
    and the capacities are ``log2_params`` (statsmodels ``TTestPower``). ``paired``: ``sd`` is the SD of the
    per-seed gains, SE sd / sqrt(n Sxx), C (n - 1) df; unpaired: ``sd`` is that of single runs, SE
    sd sqrt(2 / (n Sxx)), 2 C (n - 1) df. Assumes equal SDs and seeds in every cell."""
    from scipy import stats
    from statsmodels.stats.power import TTestPower

    x = np.unique(np.asarray(log2_params, dtype=float))
    k = 1 if paired else 2
    unit_se = sd * math.sqrt(k / float(((x - x.mean()) ** 2).sum()))  # SE of the slope with 1 seed per group
    df = k * len(x) * (n - 1)
    power = float(TTestPower().power(abs(slope) / unit_se, n, alpha, df=df))
    if np.isnan(power):  # scipy's noncentral t returns NaN far in the lower tail: that tail is 0 there
        power = float(stats.nct.sf(stats.t.ppf(1 - alpha / 2, df), df, abs(slope) / unit_se * math.sqrt(n)))
    return power


def detectable_slope(
    sd: float, log2_params: Any, n: int, power: float = POWER, alpha: float = ALPHA, paired: bool = False
) -> float:
    """The smallest slope (pp per doubling) the test detects with ``power`` at ``n`` seeds per group
    (:func:`slope_power`, same assumptions)."""
    from scipy import optimize

    if not (np.isfinite(sd) and sd > 0 and n >= 2 and len(np.unique(log2_params)) >= 2):
        return math.nan

    def gap(s: float) -> float:
        return slope_power(s * sd, sd, log2_params, n, alpha, paired) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0, hi)) * sd


def seeds_for_slope(
    slope: float,
    sd: float,
    log2_params: Any,
    power: float = POWER,
    alpha: float = ALPHA,
    max_n: int = MAX_POWER_N,
    paired: bool = False,
) -> int | None:
    """Seeds per group needed to detect ``slope`` with ``power`` (:func:`slope_power`, same assumptions);
    None when undefined or above ``max_n``."""
    if not (np.isfinite(slope) and np.isfinite(sd)) or slope == 0 or sd <= 0 or len(np.unique(log2_params)) < 2:
        return None

    def enough(n: int) -> bool:
        return slope_power(slope, sd, log2_params, n, alpha, paired) >= power

    if not enough(max_n):
        return None
    lo, hi = 2, 2
    while not enough(hi):
        lo, hi = hi, min(2 * hi, max_n)
    while lo < hi:  # power grows with n: bisection
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return int(hi)


def _conclusion(row: dict[str, Any]) -> str:
    if not np.isfinite(row["p"]):
        return "untested: needs 2 capacities with at least 2 seeds per group"
    effect, bound = row["min_effect_pp"], row["bound_ruled_out"]
    if row["p_holm"] < ALPHA:
        way = "increases" if row["slope"] > 0 else "decreases"
        return f"moderation: the gain {way} with capacity (Holm p < {ALPHA:g})"
    if row["p_tost"] < ALPHA:
        return (
            f"no moderation of {effect:g} pp or more across the capacity range (TOST p = {row['p_tost']:.2g}; "
            f"changes larger than {bound:.2f} pp ruled out)"
        )
    return (
        f"inconclusive: neither moderation nor its absence at {effect:g} pp is shown (TOST p = "
        f"{row['p_tost']:.2g}); only changes larger than {bound:.2f} pp are ruled out at alpha {ALPHA:g}"
    )


def _design_figures(
    runs: pd.DataFrame, fam: pd.DataFrame, metric: str, min_effect_pp: float, span: float
) -> dict[str, Any]:
    """The a priori design columns of one family (sd_pp, sd_df, sd_upper, mde_*, seeds_for_min_effect*)."""
    paired = fam["design"].iloc[0] == "paired"
    sd, dof = pooled_sd(runs, fam, metric, "paired" if paired else "unpaired")
    upper = sd_upper_limit(sd, dof)
    n = int(fam["n"].min()) if paired else int(min(fam["n_kd"].min(), fam["n_base"].min()))
    mde = detectable_slope(sd, fam["log2_params"], n, paired=paired)

    def need(s: float) -> int | None:
        return seeds_for_slope(min_effect_pp / span, s, fam["log2_params"], paired=paired) if span > 0 else None

    return {
        "seeds_per_group": n,
        "sd_pp": sd,
        "sd_df": dof,
        "sd_upper": upper,
        "mde_slope": mde,
        "mde_gain_change": mde * span,
        "seeds_for_min_effect": need(sd),
        "seeds_for_min_effect_upper": need(upper),
    }


def _family_row(runs: pd.DataFrame, fam: pd.DataFrame, metric: str, min_effect_pp: float) -> dict[str, Any]:
    """One row of :func:`moderation_table` (all columns but p_holm, holm_m, conclusion)."""
    from scipy import stats

    fit = fit_slope(fam)
    span = float(fam["log2_params"].max() - fam["log2_params"].min())
    half90 = stats.t.ppf(1 - ALPHA, fit["df"]) * fit["se"] * span if np.isfinite(fit["df"]) else math.nan
    change = fit["slope"] * span
    return {
        "teacher": fam["teacher"].iloc[0],
        "method": fam["method"].iloc[0],
        "design": fam["design"].iloc[0],
        "n_capacities": int(fam["log2_params"].nunique()),
        "students": " ".join(fam["student"]),
        "params_min": float(fam["params"].min()),
        "params_max": float(fam["params"].max()),
        **fit,
        "gain_change": change,
        "gain_change_ci_low": fit["ci_low"] * span,
        "gain_change_ci_high": fit["ci_high"] * span,
        "gain_change_ci90_low": change - half90,
        "gain_change_ci90_high": change + half90,
        "min_effect_pp": min_effect_pp,
        "p_tost": tost(change, fit["se"] * span, fit["df"], min_effect_pp),
        "bound_ruled_out": abs(change) + half90,
        **_design_figures(runs, fam, metric, min_effect_pp, span),
        "notes": "" if np.isfinite(fit["p"]) else "needs 2 capacities with at least 2 seeds per group",
    }


def moderation_table(
    runs: pd.DataFrame, metric: str = "test_best", min_effect_pp: float = MIN_EFFECT_PP, design: str = "auto"
) -> pd.DataFrame:
    """The moderation test of every (teacher, method) family (columns :data:`MODERATION_COLUMNS`): slope in
    pp per doubling of student parameters with 95% CI and p (:func:`slope_contrast`), Holm over the families
    with a finite p, the change of the gain across the family's capacity range (``gain_change``) with its 95%
    and 90% CIs, the equivalence test (:func:`tost`) at ``min_effect_pp`` and the bound ruled out, and the a
    priori design figures of the design tested (module docstring lists the assumptions)."""
    cells = gain_cells(runs, metric, design)
    rows = [_family_row(runs, fam, metric, min_effect_pp) for _, fam in cells.groupby(FAMILY, sort=True)]
    df = pd.DataFrame(rows, columns=[c for c in MODERATION_COLUMNS if c not in ("p_holm", "holm_m", "conclusion")])
    df["p_holm"] = holm(df["p"]) if len(df) else []
    df["holm_m"] = int(np.isfinite(df["p"].to_numpy(dtype=float)).sum()) if len(df) else 0
    df["conclusion"] = [_conclusion(r) for r in df.to_dict(orient="records")]
    return df[MODERATION_COLUMNS]


def moderation_summary(table: pd.DataFrame, metric: str = "test_best") -> dict[str, Any]:
    """The ``moderation`` section of summary.json."""
    m = int(table["holm_m"].max()) if len(table) else 0
    return {
        "question": "does the KD gain change with student capacity (per teacher and method)?",
        "test": TEST_NAME,
        "units": "slope in pp of KD gain per doubling of student parameters; gain_change across the family's range",
        "metric": metric,
        "confidence": CONFIDENCE,
        "equivalence": {
            "test": "TOST at min_effect_pp on gain_change, alpha per family (not Holm-adjusted)",
            "interval": f"{1 - 2 * ALPHA:.0%} CI (gain_change_ci90_low, gain_change_ci90_high)",
            "bound_ruled_out": "smallest |gain_change| the data rule out at alpha",
        },
        "multiple_comparisons": {"method": "holm", "family": "(teacher, method) with a finite p", "m": m},
        "power": {
            "kind": "a priori",
            "target": POWER,
            "sd": "pooled SD of the per-seed gains (paired) or of the KD and baseline groups (unpaired)",
            "sd_upper": f"one-sided {SD_UPPER_CONFIDENCE:.0%} upper confidence limit of the SD (chi-square)",
            "design": "the design tested (paired or unpaired), equal seeds and SDs per cell",
        },
        "families": records(table),
    }
