"""Statistics of the study from the tidy run table (all accuracies in percent, differences in pp).

Tests and intervals come from scipy: the primary CI is the Welch t-interval (``ttest_ind(equal_var=False)``),
the paired test uses ``ttest_rel``, and a BCa ``bootstrap`` interval is reported beside them. The bootstrap
is not a check on the Welch interval at these sample sizes: with 5 seeds per arm of normal data both the BCa
and the percentile bootstrap cover the true difference only about 87 % of the time at a nominal 95 %, while
the Welch interval covers about 95 % (measured in tests/test_analysis_stats.py); it is kept as a
distribution-free description, not as evidence. Holm's correction and the a priori power figures come from
statsmodels (``multipletests``, ``TTestIndPower``, ``TTestPower``); each Holm family counts its own finite
p-values (``holm_m`` for the Welch p-values, ``holm_m_paired`` for the paired ones). No post-hoc ("observed")
power is reported: the design figures are the seeds needed to detect ``min_effect_pp`` at the observed SD,
for the Welch test (seeds per arm, baseline SD) and for the paired test (pairs, SD of the per-seed
differences), each also at the SD's one-sided 95 % upper confidence limit.

Every test assumes independent seeds and roughly normal run-to-run noise; what else each assumes is in its
docstring.

Whatever needs more seeds than a cell has yields ``None`` (NaN in tables) plus a note saying why, so
that a one-seed study still renders.

scipy and statsmodels are imported by the functions that use them: a job that needs only this module's labels
and table helpers (most LaTeX tables, the figures' run selection) starts without their second of imports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from kdcore.analysis.table import hyperparameter_columns, stem_arms
from kdcore.errors import DataError
from kdcore.labels import split_chain
from kdcore.selection import candidate_score, choose_winner

METRICS = ("test_best", "test_final", "val_acc")
METRIC_LABELS = {
    "test_best": "test accuracy at the best-val epoch",
    "test_final": "test accuracy after the last epoch",
    "val_acc": "best val accuracy",
}
CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
N_BOOT = 9999
BOOT_SEED = 20240601
MAX_POWER_N = 100_000
#: Default smallest effect of interest (pp); the study config's ``analysis.min_effect_pp`` overrides it.
MIN_EFFECT_PP = 0.2
BOOT_METHOD = "BCa"
#: Coverage of the 95 % BCa interval measured on 5-vs-5 normal samples (tests/test_analysis_stats.py).
BOOT_COVERAGE_NOTE = "the 95% BCa interval covers about 87% with 5 seeds per arm (Welch t: about 95%)"
#: One-sided confidence of the SD's upper limit used for the pessimistic seed counts.
SD_UPPER_CONFIDENCE = 0.95
HOLM_FAMILY = "final pair x method KD cells vs their student's baseline"
#: Keys of a cell of the run table, followed by its hyper-parameter columns (:func:`cell_keys`).
CELL_KEYS = ["stage", "teacher", "student", "pair", "method", "stem", "clip_scope"]
NOTE_FEW = "needs at least 2 seeds in each arm"
NOTE_PAIRED = "needs at least 2 seeds shared by both arms"
NOTE_ZERO_VAR = "zero variance in both arms: test undefined"


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is an accuracy column of the run table; ConfigError-like DataError otherwise."""
    if metric not in METRICS:
        raise DataError(f"analysis metric {metric!r} is not one of {', '.join(METRICS)}")
    return metric


def describe(values: Any) -> dict[str, Any]:
    """n, mean, sample std (ddof=1), SEM, min, max of a sample; std/SEM NaN when n < 2. The SEM assumes
    independent values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "sem": math.nan, "min": math.nan, "max": math.nan}
    std = float(np.std(x, ddof=1)) if n > 1 else math.nan
    return {
        "n": n,
        "mean": float(np.mean(x)),
        "std": std,
        "sem": float(stats.sem(x)) if n > 1 else math.nan,
        "min": float(np.min(x)),
        "max": float(np.max(x)),
    }


def holm(pvalues: Any) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (statsmodels ``multipletests``); NaN entries stay NaN and do
    not count in the family. Controls the family-wise error rate under any dependence of the tests."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    if finite.any():
        out[finite] = multipletests(p[finite], alpha=ALPHA, method="holm")[1]
    return out


def family_size(pvalues: Any) -> int:
    """Number of tests in a Holm family: the finite p-values."""
    return int(np.isfinite(np.asarray(pvalues, dtype=float)).sum())


def significance_legend(m: int, family: str = HOLM_FAMILY) -> str:
    """What the marks mean, with the correction and its family size (plain text; figures and tables format it)."""
    return f"* Welch p < {ALPHA:g}, no correction; \u2020 Holm-adjusted p < {ALPHA:g} over {m} {family}"


def smallest_n(power_at: Callable[[int], float], power: float = POWER, max_n: int = MAX_POWER_N) -> int | None:
    """The smallest n >= 2 with ``power_at(n) >= power`` (power grows with n: bisection); None above ``max_n``.
    A power that scipy cannot evaluate (NaN: the noncentral t far in its tail, a huge effect) counts as reached."""

    def enough(n: int) -> bool:
        value = float(power_at(n))
        return value >= power or np.isnan(value)

    lo, hi = 2, 2
    while not enough(hi):
        if hi >= max_n:
            return None
        lo, hi = hi + 1, min(2 * hi, max_n)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


def seeds_to_detect(
    effect_pp: float, sd_pp: float, power: float = POWER, alpha: float = ALPHA, max_n: int = MAX_POWER_N
) -> int | None:
    """A priori: seeds per arm for a two-sided two-sample t-test to detect ``effect_pp`` with ``power`` when
    the run-to-run SD is ``sd_pp`` (statsmodels ``TTestIndPower``); None when undefined or above ``max_n``.
    Assumes equal SDs and seeds in both arms (the pooled t-test; Welch's test needs about as many)."""
    if not (np.isfinite(effect_pp) and np.isfinite(sd_pp)) or effect_pp == 0 or sd_pp <= 0:
        return None
    from statsmodels.stats.power import TTestIndPower

    d = abs(effect_pp) / sd_pp
    return smallest_n(lambda n: TTestIndPower().power(d, n, alpha), power, max_n)


def pairs_to_detect(
    effect_pp: float, sd_diff_pp: float, power: float = POWER, alpha: float = ALPHA, max_n: int = MAX_POWER_N
) -> int | None:
    """A priori: seeds (pairs) for a two-sided paired t-test to detect ``effect_pp`` with ``power`` when the
    per-seed differences have SD ``sd_diff_pp`` (statsmodels ``TTestPower``, one-sample t on the differences);
    None when undefined or above ``max_n``. Assumes independent, normal per-seed differences."""
    if not (np.isfinite(effect_pp) and np.isfinite(sd_diff_pp)) or effect_pp == 0 or sd_diff_pp <= 0:
        return None
    from statsmodels.stats.power import TTestPower

    d = abs(effect_pp) / sd_diff_pp
    return smallest_n(lambda n: TTestPower().power(d, n, alpha), power, max_n)


def sd_upper_limit(sd: float, df: float, confidence: float = SD_UPPER_CONFIDENCE) -> float:
    """One-sided upper confidence limit of an SD estimated on ``df`` degrees of freedom:
    sd sqrt(df / chi2_{1-confidence}(df)). Assumes normal data, so that df s^2 / sigma^2 is chi-square."""
    from scipy import stats

    if not (np.isfinite(sd) and np.isfinite(df) and df > 0):
        return math.nan
    return float(sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df)))


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def compare_arms(
    treated: pd.Series,
    control: pd.Series,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOT,
    boot_seed: int = BOOT_SEED,
    min_effect_pp: float = MIN_EFFECT_PP,
) -> dict[str, Any]:
    """Difference ``treated - control`` of two samples indexed by seed, with every statistic of the study.

    Keys: n_treated, n_control, mean_treated, std_treated, mean_control, std_control, diff, se, df,
    ci_low, ci_high (Welch t, the primary interval), bca_low, bca_high (BCa bootstrap, descriptive: it
    under-covers at 5 seeds, see the module docstring), p_welch, n_paired, paired_diff, sd_diff,
    paired_ci_low, paired_ci_high, p_paired, cohen_d, hedges_g, min_effect_pp, seeds_for_min_effect and
    seeds_for_min_effect_upper (a priori: seeds per arm for the two-sample test to detect ``min_effect_pp``
    at 80% power at the control arm's SD and at its upper confidence limit), pairs_for_min_effect and
    pairs_for_min_effect_upper (the same for the paired test at the SD of the per-seed differences),
    notes (list of str).

    Assumes independent seeds and roughly normal runs. Welch: no equal variances. Paired: a seed's runs in
    the two arms share what the seed fixes, the differences are independent and normal. BCa: the samples
    represent their populations (not true at 5 seeds). Cohen's d / Hedges' g: pooled SD.
    """
    from scipy import stats

    x = treated.dropna().astype(float)
    y = control.dropna().astype(float)
    dx, dy = describe(x), describe(y)
    out: dict[str, Any] = {
        "n_treated": dx["n"],
        "n_control": dy["n"],
        "mean_treated": dx["mean"],
        "std_treated": dx["std"],
        "mean_control": dy["mean"],
        "std_control": dy["std"],
        "diff": dx["mean"] - dy["mean"] if dx["n"] and dy["n"] else math.nan,
        "se": math.nan,
        "df": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "bca_low": math.nan,
        "bca_high": math.nan,
        "p_welch": math.nan,
        "n_paired": 0,
        "paired_diff": math.nan,
        "paired_ci_low": math.nan,
        "paired_ci_high": math.nan,
        "p_paired": math.nan,
        "cohen_d": math.nan,
        "hedges_g": math.nan,
        "min_effect_pp": min_effect_pp,
        "seeds_for_min_effect": seeds_to_detect(min_effect_pp, dy["std"]),
        "seeds_for_min_effect_upper": seeds_to_detect(min_effect_pp, sd_upper_limit(dy["std"], dy["n"] - 1)),
        "sd_diff": math.nan,
        "pairs_for_min_effect": None,
        "pairs_for_min_effect_upper": None,
        "notes": [],
    }
    notes: list[str] = out["notes"]
    if dx["n"] >= 2 and dy["n"] >= 2:
        nx, ny = dx["n"], dy["n"]
        out["se"] = math.sqrt(dx["std"] ** 2 / nx + dy["std"] ** 2 / ny)
        if out["se"] == 0:
            notes.append(NOTE_ZERO_VAR)
        else:
            res = stats.ttest_ind(x.to_numpy(), y.to_numpy(), equal_var=False)
            ci = res.confidence_interval(confidence_level=confidence)
            out.update(p_welch=float(res.pvalue), df=float(res.df), ci_low=float(ci.low), ci_high=float(ci.high))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tiny samples: scipy warns about degenerate BCa resamples
                boot = stats.bootstrap(
                    (x.to_numpy(), y.to_numpy()),
                    _mean_diff,
                    n_resamples=n_resamples,
                    confidence_level=confidence,
                    method="BCa",
                    vectorized=True,
                    rng=np.random.default_rng(boot_seed),
                )
            out.update(bca_low=float(boot.confidence_interval.low), bca_high=float(boot.confidence_interval.high))
            pooled = math.sqrt(((nx - 1) * dx["std"] ** 2 + (ny - 1) * dy["std"] ** 2) / (nx + ny - 2))
            d = out["diff"] / pooled
            out.update(cohen_d=d, hedges_g=d * (1 - 3 / (4 * (nx + ny) - 9)))
    else:
        notes.append(f"t-test, CI, effect size, power: {NOTE_FEW}")
    shared = x.index.intersection(y.index)
    out["n_paired"] = len(shared)
    if len(shared) >= 2:
        xs, ys = x.loc[shared].to_numpy(), y.loc[shared].to_numpy()
        diffs = xs - ys
        out["paired_diff"] = float(np.mean(diffs))
        sd_diff = float(np.std(diffs, ddof=1))
        out.update(
            sd_diff=sd_diff,
            pairs_for_min_effect=pairs_to_detect(min_effect_pp, sd_diff),
            pairs_for_min_effect_upper=pairs_to_detect(min_effect_pp, sd_upper_limit(sd_diff, len(shared) - 1)),
        )
        if np.ptp(diffs) == 0:
            notes.append("paired test: identical differences on every seed, test undefined")
        else:
            res = stats.ttest_rel(xs, ys)
            ci = res.confidence_interval(confidence_level=confidence)
            out.update(p_paired=float(res.pvalue), paired_ci_low=float(ci.low), paired_ci_high=float(ci.high))
    else:
        notes.append(f"paired t-test: {NOTE_PAIRED}")
    return out


def _by_seed(df: pd.DataFrame, metric: str, what: str) -> pd.Series:
    if df["seed"].duplicated().any():
        seeds = sorted(df.loc[df["seed"].duplicated(), "seed"].unique().tolist())
        raise DataError(f"{what}: several runs share seed(s) {seeds}; cannot pair or count them")
    return df.set_index("seed")[metric]


def cell_keys(runs: pd.DataFrame) -> list[str]:
    """:data:`CELL_KEYS` and the hyper-parameter columns of ``runs``."""
    return [*CELL_KEYS, *hyperparameter_columns(runs)]


def chain_teacher_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs behind each chain teacher ``<teacher>.<method>.<student>`` of a run table
    (kdcore.labels.split_chain): the final runs of that pair and method, as teacher-stage rows whose
    ``student`` is the chain label (their accuracy is the chain teacher's)."""
    chains = []
    for label in runs["teacher"].dropna().unique():
        parts = split_chain(str(label)) if label else None
        if parts is None:
            continue
        parent, method, student = parts
        source = runs[(runs["stage"] == "final") & (runs["pair"] == f"{parent}-{student}") & (runs["method"] == method)]
        hps = {hp: math.nan for hp in hyperparameter_columns(runs)}
        chains.append(source.assign(stage="teacher", student=label, teacher="", pair="", method="baseline", **hps))
    return pd.concat(chains, ignore_index=True) if chains else runs.iloc[0:0]


def teacher_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs behind every teacher of a run table as teacher-stage rows (``student`` = the teacher label):
    the teacher runs and those of the chain teachers (:func:`chain_teacher_runs`)."""
    return _append(runs[runs["stage"] == "teacher"], chain_teacher_runs(runs))


def _append(df: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, more], ignore_index=True) if not more.empty else df


def cell_summary(runs: pd.DataFrame, metric: str = "test_best") -> pd.DataFrame:
    """Mean, std, n, min, max of ``metric`` per cell (stage x teacher x student x method x hyper-parameters);
    a chain teacher's teacher cell holds the final runs it is taken from (:func:`chain_teacher_runs`).
    Descriptive (:func:`describe`): the SEM assumes independent seeds."""
    check_metric(metric)
    runs = _append(runs, chain_teacher_runs(runs))
    keys = cell_keys(runs)
    rows = []
    for key, grp in runs.groupby(keys, dropna=False, sort=True):
        d = describe(grp[metric])
        rows.append({**dict(zip(keys, key, strict=False)), **d, "seeds": " ".join(str(s) for s in sorted(grp["seed"]))})
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "std", "sem", "min", "max", "seeds"])


def baselines(runs: pd.DataFrame) -> pd.DataFrame:
    """Student baseline runs (stage baseline, CIFAR stem)."""
    return runs[(runs["stage"] == "baseline") & (runs["stem"] == "cifar")]


def kd_comparisons(runs: pd.DataFrame, metric: str = "test_best", **kwargs: Any) -> pd.DataFrame:
    """Every final KD cell (pair x method) against its student's baseline, with Holm over all cells.

    Columns: pair, teacher, student, method, the hyper-parameter columns of ``runs``, student_params,
    teacher_params, the keys of :func:`compare_arms`
    (``treated`` = KD, ``control`` = baseline; ``diff`` is the gain in pp), ``p_holm`` (Welch p-values
    adjusted across all comparisons), ``p_holm_paired`` (paired p-values adjusted across the comparisons that
    have one), ``holm_m`` and ``holm_m_paired`` (each family's own size: its finite p-values) and ``notes``
    (joined by '; '). ``kwargs`` go to :func:`compare_arms` (e.g. ``min_effect_pp``), whose docstring lists
    the assumptions.
    """
    check_metric(metric)
    final = runs[(runs["stage"] == "final") & (runs["method"] != "baseline") & (runs["clip_scope"] == "all")]
    base = baselines(runs)
    hps = hyperparameter_columns(runs)
    rows = []
    for (pair, teacher, student, method), grp in final.groupby(["pair", "teacher", "student", "method"], sort=True):
        b = base[base["student"] == student]
        if b.empty:
            raise DataError(f"final KD cell {pair} {method}: no baseline runs of student {student}")
        res = compare_arms(
            _by_seed(grp, metric, f"{pair} {method}"), _by_seed(b, metric, f"baseline {student}"), **kwargs
        )
        rows.append(
            {
                "pair": pair,
                "teacher": teacher,
                "student": student,
                "method": method,
                **{hp: grp[hp].iloc[0] for hp in hps},
                "student_params": grp["params"].iloc[0],
                "teacher_params": grp["teacher_params"].iloc[0],
                **res,
            }
        )
    cols = ["pair", "teacher", "student", "method", *hps, "student_params", "teacher_params"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[*cols, "diff", "p_welch", "p_holm", "p_holm_paired", "holm_m_paired", "notes"])
    df["p_holm"] = holm(df["p_welch"])
    df["p_holm_paired"] = holm(df["p_paired"])
    df["holm_m"] = family_size(df["p_welch"])
    df["holm_m_paired"] = family_size(df["p_paired"])
    df["notes"] = df["notes"].map("; ".join)
    return df.rename(columns={"diff": "gain"})


def _same(a: Any, b: Any) -> bool:
    """Equality of two hyper-parameter values where NaN equals NaN."""
    return (pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and math.isclose(float(a), float(b)))


def _winning_point(grp: pd.DataFrame, metric: str, hps: list[str]) -> tuple | None:
    """The grid point (values of ``hps``) of one pair x method that :func:`kdcore.selection.choose_winner`
    picks: highest mean ``metric`` over its selection seeds, ties to the first point in grid order."""
    groups = grp.groupby(hps, dropna=False, sort=False) if hps else [((), grp)]
    points = [
        {"hp": hp if isinstance(hp, tuple) else (hp,), "score": candidate_score(g[metric].tolist())} for hp, g in groups
    ]
    best = choose_winner(points)
    return None if math.isnan(best["score"]) else best["hp"]


def _same_point(a: Any, b: tuple) -> bool:
    return all(_same(x, y) for x, y in zip(a, b, strict=True))


def selection_table(runs: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Every selection-grid run (stage select) with its val accuracy, ``winner`` (the run belongs to the grid
    point the workflow's selection rule picks: highest mean ``metric`` over the selection seeds, ties to the
    first point in grid order, see :mod:`kdcore.selection`) and whether the final runs used that point.
    Descriptive. The winner is the best of several noisy means: with few selection seeds its score, and a final
    run on a selection seed, are biased upwards (winner's curse; kdcore.analysis.sensitivity shows the
    moderation result without those seeds)."""
    hps = hyperparameter_columns(runs)
    sel = runs[runs["stage"] == "select"].sort_values(["pair", "method", *hps, "seed"])
    final = runs[(runs["stage"] == "final") & (runs["method"] != "baseline")]
    rows = []
    for (pair, method), grp in sel.groupby(["pair", "method"], sort=True):
        best = _winning_point(grp, metric, hps)
        fin = final[(final["pair"] == pair) & (final["method"] == method)]
        for _, r in grp.iterrows():
            point = tuple(r[hps])
            rows.append(
                {
                    "pair": pair,
                    "teacher": r["teacher"],
                    "student": r["student"],
                    "method": method,
                    **dict(zip(hps, point, strict=True)),
                    "seed": r["seed"],
                    "val_acc": r["val_acc"],
                    "test_best": r["test_best"],
                    "winner": best is not None and _same_point(point, best),
                    "used_in_final": any(_same_point(tuple(f[hps]), point) for _, f in fin.iterrows()),
                }
            )
    columns = ["pair", "teacher", "student", "method", *hps, "seed", "val_acc", "test_best", "winner", "used_in_final"]
    return pd.DataFrame(rows, columns=columns)


def stem_ablation(runs: pd.DataFrame, metric: str = "test_best", **kwargs: Any) -> pd.DataFrame:
    """Per architecture of the stem ablation: CIFAR stem minus ImageNet stem (pp) with CI and tests
    (:func:`compare_arms`, same assumptions; no multiple-comparison correction)."""
    check_metric(metric)
    rows = []
    for arch, (cif, img) in stem_arms(runs).items():
        grp = pd.concat([cif, img])
        if cif.empty or img.empty:
            rows.append({"student": arch, "notes": "needs runs with both stems"})
            continue
        res = compare_arms(
            _by_seed(cif, metric, f"stem cifar {arch}"), _by_seed(img, metric, f"stem imagenet {arch}"), **kwargs
        )
        res["notes"] = "; ".join(res["notes"])
        rows.append(
            {
                "student": arch,
                "params_cifar": cif["params"].iloc[0],
                "params_imagenet": img["params"].iloc[0],
                "epochs": int(grp["epochs"].max()),
                **res,
            }
        )
    df = pd.DataFrame(rows)
    return (
        df.rename(
            columns={
                "mean_treated": "mean_cifar",
                "std_treated": "std_cifar",
                "n_treated": "n_cifar",
                "mean_control": "mean_imagenet",
                "std_control": "std_imagenet",
                "n_control": "n_imagenet",
            }
        )
        if not df.empty
        else df
    )


def clip_ablation(runs: pd.DataFrame, metric: str = "test_best", **kwargs: Any) -> pd.DataFrame:
    """Bugged arm (stage clip: projections not clipped) against the corrected final runs of the same pair
    and method (clip_scope all): accuracy difference corrected - bugged and max pre-clip projection grad norms
    (:func:`compare_arms`, same assumptions; no multiple-comparison correction)."""
    check_metric(metric)
    bug = runs[runs["stage"] == "clip"]
    final = runs[(runs["stage"] == "final") & (runs["clip_scope"] == "all")]
    rows = []
    for (pair, method), grp in bug.groupby(["pair", "method"], sort=True):
        fix = final[(final["pair"] == pair) & (final["method"] == method)]
        base = {
            "pair": pair,
            "teacher": grp["teacher"].iloc[0],
            "student": grp["student"].iloc[0],
            "method": method,
            "clip_scope_bugged": grp["clip_scope"].iloc[0],
            "alpha_bugged": grp["alpha"].iloc[0],
            "alpha_corrected": fix["alpha"].iloc[0] if len(fix) else math.nan,
            "proj_grad_norm_max_bugged": float(grp["proj_grad_norm_max"].max()),
            "proj_grad_norm_max_corrected": float(fix["proj_grad_norm_max"].max()) if len(fix) else math.nan,
            "proj_grad_norm_mean_of_max_bugged": float(grp["proj_grad_norm_max"].mean()),
            "proj_grad_norm_mean_of_max_corrected": float(fix["proj_grad_norm_max"].mean()) if len(fix) else math.nan,
        }
        if fix.empty:
            base["notes"] = "no corrected final runs of this pair and method"
            base.update(
                n_bugged=len(grp), mean_bugged=describe(grp[metric])["mean"], std_bugged=describe(grp[metric])["std"]
            )
            rows.append(base)
            continue
        res = compare_arms(
            _by_seed(fix, metric, f"{pair} {method} corrected"),
            _by_seed(grp, metric, f"{pair} {method} bugged"),
            **kwargs,
        )
        res["notes"] = "; ".join(res["notes"])
        rows.append({**base, **res})
    df = pd.DataFrame(rows)
    return (
        df.rename(
            columns={
                "mean_treated": "mean_corrected",
                "std_treated": "std_corrected",
                "n_treated": "n_corrected",
                "mean_control": "mean_bugged",
                "std_control": "std_bugged",
                "n_control": "n_bugged",
            }
        )
        if not df.empty
        else df
    )


def teacher_premise(runs: pd.DataFrame, metric: str = "test_best") -> pd.DataFrame:
    """Per final pair: the teacher's mean accuracy against its student's baseline mean (CIFAR stem). KD from a
    teacher that does not beat the student is not the paper's setting; ``holds`` is False for such pairs.
    Descriptive (means only, no test): assumes the seeds' means represent the architectures."""
    check_metric(metric)
    final = runs[(runs["stage"] == "final") & (runs["method"] != "baseline")]
    teach, base = teacher_runs(runs), baselines(runs)
    rows = []
    for pair, grp in final.groupby("pair", sort=True):
        teacher, student = grp["teacher"].iloc[0], grp["student"].iloc[0]
        t = describe(teach.loc[teach["student"] == teacher, metric])
        b = describe(base.loc[base["student"] == student, metric])
        margin = t["mean"] - b["mean"]
        rows.append(
            {
                "pair": pair,
                "teacher": teacher,
                "student": student,
                "teacher_mean": t["mean"],
                "teacher_n": t["n"],
                "baseline_mean": b["mean"],
                "baseline_n": b["n"],
                "margin": margin,
                "holds": bool(margin > 0) if np.isfinite(margin) else None,
            }
        )
    cols = ["pair", "teacher", "student", "teacher_mean", "teacher_n", "baseline_mean", "baseline_n", "margin"]
    return pd.DataFrame(rows, columns=[*cols, "holds"])


def premise_warnings(premise: pd.DataFrame) -> list[str]:
    """One warning per pair whose teacher does not beat its student's baseline."""
    return [
        f"teacher {r['teacher']} ({r['teacher_mean']:.2f} %) does not beat the baseline of its student "
        f"{r['student']} ({r['baseline_mean']:.2f} %): KD from a weaker teacher is not the paper's setting; "
        "read this pair's gains with care"
        for _, r in premise.iterrows()
        if pd.notna(r["holds"]) and not r["holds"]
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    return value


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a table as JSON-ready dicts (NaN -> None)."""
    return [_jsonable(r) for r in df.to_dict(orient="records")]
