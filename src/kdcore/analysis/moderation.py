"""Does student capacity moderate the KD gain? A test of the interaction, per (teacher, method).

For each (teacher, method) the KD gain of each student (KD minus the same student's baseline, in pp) is
regressed on log2(student parameters); the slope is the change of the gain per doubling of capacity.

* Cell gains. Where every student of the family has at least 2 seeds with both a KD and a baseline run, the
  gain of a cell is the mean of its per-seed differences on the shared seeds (design ``paired``), with variance
  s_d^2 / n. Otherwise (design ``unpaired``) it is mean(KD) - mean(baseline) with variance
  s_KD^2 / n_KD + s_base^2 / n_base.
* Slope. Weighted least squares of the cell gains on log2(params) with weights 1 / var (statsmodels ``WLS``,
  ``cov_type="fixed scale"``: the cell variances are the errors). The slope is a linear contrast of the
  group means; its degrees of freedom are Welch-Satterthwaite over the groups behind it. With exactly two
  capacities this is the difference-in-gains test (KD_big - base_big) - (KD_small - base_small), divided by
  the log2 step, with Welch-Satterthwaite over the four groups (unpaired) or the two gain samples (paired).
* Holm over the (teacher, method) family (statsmodels ``multipletests``).
* A priori design (never post-hoc power): the run-to-run SD is the pooled within-group SD of the family's
  KD and baseline groups. For ``n`` seeds per group and the family's capacities, the slope's SE is
  sqrt(2 sd^2 / n / sum((x - mean x)^2)) (unpaired, equal seeds: conservative when pairing helps), with
  2 C (n - 1) degrees of freedom for C capacities. From it: the smallest slope detectable at 80% power with the
  study's seeds, and the seeds per group needed to detect a change of ``min_effect_pp`` in the gain across the
  family's capacity range (statsmodels ``TTestPower`` with these degrees of freedom).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize, stats
from statsmodels.stats.power import TTestPower

from kdcore.analysis.stats import ALPHA, CONFIDENCE, MAX_POWER_N, MIN_EFFECT_PP, POWER, check_metric, holm, records
from kdcore.errors import DataError

#: Student parameter counts (CIFAR stem, width 64, 10 classes) for run tables that lack them.
KNOWN_PARAMS = {"resnet18": 11_173_962, "resnet34": 21_282_122}
FAMILY = ["teacher", "method"]
TEST_NAME = (
    "WLS of the per-student KD gain on log2(student parameters), Welch-Satterthwaite df; "
    "two capacities: difference in gains"
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
    "gain_change",
    "gain_change_ci_low",
    "gain_change_ci_high",
    "sd_pp",
    "mde_slope",
    "mde_gain_change",
    "min_effect_pp",
    "seeds_for_min_effect",
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
    teacher, method, student, params, seed, gain. Seeds without both runs are left out."""
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
    """Welch-Satterthwaite df of a sum of variance components (variance, df)."""
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
    (paired where every student of the (teacher, method) family has >= 2 shared seeds)."""
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


def fit_slope(cells: pd.DataFrame) -> dict[str, float]:
    """WLS slope (pp per doubling) of one family's cell gains on log2(params), weights 1 / se^2, with its SE,
    Welch-Satterthwaite df, 95% CI, two-sided p, intercept and their covariance; NaN where undefined."""
    nan = dict.fromkeys(("slope", "se", "df", "ci_low", "ci_high", "p", "intercept", "se_intercept"), math.nan)
    nan["cov_intercept_slope"] = math.nan
    ok = cells[np.isfinite(cells["se"]) & (cells["se"] > 0)]
    if ok["log2_params"].nunique() < 2 or len(ok) < 2:
        return nan
    x = sm.add_constant(ok["log2_params"].to_numpy(), has_constant="add")
    w = 1.0 / ok["se"].to_numpy() ** 2
    res = sm.WLS(ok["gain"].to_numpy(), x, weights=w).fit(cov_type="fixed scale")
    # the slope is sum_i c_i * gain_i: c is the slope row of the whitened pseudo-inverse times sqrt(w)
    coef = res.model.pinv_wexog[1] * np.sqrt(w)
    parts = [(c * c * v, d) for c, cell_parts in zip(coef, ok["parts"], strict=True) for v, d in cell_parts]
    slope, se = float(res.params[1]), float(res.bse[1])
    df = _ws_df(parts)
    t = stats.t(df)
    half = t.ppf(0.5 + CONFIDENCE / 2) * se
    return {
        "slope": slope,
        "se": se,
        "df": df,
        "ci_low": slope - half,
        "ci_high": slope + half,
        "p": float(2 * t.sf(abs(slope / se))),
        "intercept": float(res.params[0]),
        "se_intercept": float(res.bse[0]),
        "cov_intercept_slope": float(res.cov_params()[0, 1]),
    }


def pooled_sd(runs: pd.DataFrame, cells: pd.DataFrame, metric: str = "test_best") -> float:
    """Pooled within-group SD (pp) of a family's KD groups and the baselines of its students."""
    final, base = _arms(runs, metric)
    fam = final[(final["teacher"] == cells["teacher"].iloc[0]) & (final["method"] == cells["method"].iloc[0])]
    groups = [g[metric] for _, g in fam.groupby("student")]
    groups += [g[metric] for s, g in base.groupby("student") if s in set(cells["student"])]
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    dof = sum(len(g) - 1 for g in groups)
    return math.sqrt(ss / dof) if dof > 0 else math.nan


def slope_power(slope: float, sd: float, log2_params: Any, n: int, alpha: float = ALPHA) -> float:
    """A priori power of the two-sided slope test with ``n`` seeds per group (unpaired, equal seeds) when the
    run-to-run SD is ``sd`` and the capacities are ``log2_params`` (statsmodels ``TTestPower``)."""
    x = np.unique(np.asarray(log2_params, dtype=float))
    unit_se = sd * math.sqrt(2.0 / float(((x - x.mean()) ** 2).sum()))  # SE of the slope with 1 seed per group
    return float(TTestPower().power(abs(slope) / unit_se, n, alpha, df=2 * len(x) * (n - 1)))


def detectable_slope(sd: float, log2_params: Any, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest slope (pp per doubling) the test detects with ``power`` at ``n`` seeds per group."""
    if not (np.isfinite(sd) and sd > 0 and n >= 2 and len(np.unique(log2_params)) >= 2):
        return math.nan
    hi = 1.0
    while slope_power(hi * sd, sd, log2_params, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda s: slope_power(s * sd, sd, log2_params, n, alpha) - power, 0, hi)) * sd


def seeds_for_slope(
    slope: float, sd: float, log2_params: Any, power: float = POWER, alpha: float = ALPHA, max_n: int = MAX_POWER_N
) -> int | None:
    """Seeds per group needed to detect ``slope`` with ``power``; None when undefined or above ``max_n``."""
    if not (np.isfinite(slope) and np.isfinite(sd)) or slope == 0 or sd <= 0 or len(np.unique(log2_params)) < 2:
        return None
    if slope_power(slope, sd, log2_params, max_n, alpha) < power:
        return None
    lo, hi = 2, 2
    while slope_power(slope, sd, log2_params, hi, alpha) < power:
        lo, hi = hi, min(2 * hi, max_n)
    while lo < hi:  # power grows with n: bisection
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if slope_power(slope, sd, log2_params, mid, alpha) >= power else (mid + 1, hi)
    return int(hi)


def _conclusion(row: dict[str, Any]) -> str:
    if not np.isfinite(row["p"]):
        return "untested: needs 2 capacities with at least 2 seeds per group"
    span = math.log2(row["params_max"] / row["params_min"])
    bound = row["min_effect_pp"] / span
    if row["p_holm"] < ALPHA:
        way = "increases" if row["slope"] > 0 else "decreases"
        return f"moderation: the gain {way} with capacity (Holm p < {ALPHA:g})"
    if -bound < row["ci_low"] and row["ci_high"] < bound:
        return f"no moderation of {row['min_effect_pp']:g} pp or more across the capacity range (CI excludes it)"
    return f"inconclusive: the CI includes 0 and changes of {row['min_effect_pp']:g} pp across the capacity range"


def moderation_table(
    runs: pd.DataFrame, metric: str = "test_best", min_effect_pp: float = MIN_EFFECT_PP, design: str = "auto"
) -> pd.DataFrame:
    """The moderation test of every (teacher, method) family (columns :data:`MODERATION_COLUMNS`): slope in
    pp per doubling of student parameters with 95% CI and p, Holm over the families, the change of the gain
    across the family's capacity range (``gain_change``), and the a priori design figures."""
    cells = gain_cells(runs, metric, design)
    rows = []
    for (teacher, method), fam in cells.groupby(FAMILY, sort=True):
        fit = fit_slope(fam)
        span = float(fam["log2_params"].max() - fam["log2_params"].min())
        sd = pooled_sd(runs, fam, metric)
        n = int(min(fam["n_kd"].min(), fam["n_base"].min()))
        mde = detectable_slope(sd, fam["log2_params"], n)
        rows.append(
            {
                "teacher": teacher,
                "method": method,
                "design": fam["design"].iloc[0],
                "n_capacities": int(fam["log2_params"].nunique()),
                "students": " ".join(fam["student"]),
                "params_min": float(fam["params"].min()),
                "params_max": float(fam["params"].max()),
                "seeds_per_group": n,
                **fit,
                "gain_change": fit["slope"] * span,
                "gain_change_ci_low": fit["ci_low"] * span,
                "gain_change_ci_high": fit["ci_high"] * span,
                "sd_pp": sd,
                "mde_slope": mde,
                "mde_gain_change": mde * span,
                "min_effect_pp": min_effect_pp,
                "seeds_for_min_effect": seeds_for_slope(min_effect_pp / span, sd, fam["log2_params"])
                if span > 0
                else None,
                "notes": "" if np.isfinite(fit["p"]) else "needs 2 capacities with at least 2 seeds per group",
            }
        )
    df = pd.DataFrame(rows, columns=[c for c in MODERATION_COLUMNS if c not in ("p_holm", "holm_m", "conclusion")])
    df["p_holm"] = holm(df["p"]) if len(df) else []
    df["holm_m"] = int(np.isfinite(df["p"].to_numpy(dtype=float)).sum()) if len(df) else 0
    df["conclusion"] = [_conclusion(r) for r in df.to_dict(orient="records")]
    return df[MODERATION_COLUMNS]


def moderation_summary(table: pd.DataFrame, metric: str = "test_best") -> dict[str, Any]:
    """The ``moderation`` section of summary.json."""
    return {
        "question": "does the KD gain change with student capacity (per teacher and method)?",
        "test": TEST_NAME,
        "units": "slope in pp of KD gain per doubling of student parameters; gain_change across the family's range",
        "metric": metric,
        "confidence": CONFIDENCE,
        "multiple_comparisons": {"method": "holm", "family": "(teacher, method)", "m": int(table["holm_m"].max())}
        if len(table)
        else {"method": "holm", "family": "(teacher, method)", "m": 0},
        "power": {
            "kind": "a priori",
            "target": POWER,
            "sd": "pooled within-group SD of the family's KD and baseline groups",
            "design": "unpaired, equal seeds per group",
        },
        "families": records(table),
    }
