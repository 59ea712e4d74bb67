"""Paper vs reproduction: each headline quantity of a study of ours beside the imported paper runs.

Quantities: teacher accuracy per architecture, baseline accuracy per student, and per final KD cell its
accuracy and its gain over the baseline. For each: the paper's mean +- std, ours, the difference (ours -
paper) and its combined 95% interval, and whether 0 lies in it (i.e. ours is consistent with the paper).

The interval is Welch's: half-width t_{0.975, df} * sqrt(se_ours^2 + se_paper^2), df by Welch-Satterthwaite.
For an accuracy cell with one seed of ours, the paper's seed spread stands in for ours (a prediction interval
for one new run: se_ours = std_paper). A study is "not comparable" for a quantity when any of its runs behind
it is reduced-scale: synthetic data, width below the paper's, fewer epochs, or fewer training images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kdcore.analysis.latex import arch_sort_key, short
from kdcore.analysis.stats import describe, kd_comparisons

COLUMNS = [
    "quantity",
    "quantity_tex",
    "kind",
    "paper_mean",
    "paper_std",
    "paper_n",
    "ours_mean",
    "ours_std",
    "ours_n",
    "difference",
    "interval_low",
    "interval_high",
    "within",
    "status",
    "reason",
]


def reduced_scale_reasons(ours: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    """Why the runs ``ours`` are not comparable with the paper's runs ``paper`` of the same quantity."""
    reasons = []
    if ours["synthetic"].astype(bool).any():
        reasons.append("synthetic data")
    elif "split" in ours and "split" in paper and set(ours["split"].fillna("")) - set(paper["split"].fillna("")):
        reasons.append("not the paper's train/val split")
    if paper["width"].notna().any() and (ours["width"] < paper["width"].max()).any():
        reasons.append(f"width {int(ours['width'].min())} < {int(paper['width'].max())}")
    if paper["epochs"].notna().any() and (ours["epochs"] < paper["epochs"].max()).any():
        reasons.append(f"{int(ours['epochs'].min())} < {int(paper['epochs'].max())} epochs")
    if paper["n_train"].notna().any() and (ours["n_train"].fillna(0) < paper["n_train"].max()).any():
        reasons.append(f"{int(ours['n_train'].fillna(0).min())} < {int(paper['n_train'].max())} training images")
    return reasons


def combined_interval(
    diff: float, se_o: float, df_o: float, se_p: float, df_p: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Welch interval of a difference of two independent estimates (each with its SE and degrees of freedom)."""
    if not all(np.isfinite([diff, se_o, df_o, se_p, df_p])) or df_o <= 0 or df_p <= 0:
        return math.nan, math.nan
    var = se_o**2 + se_p**2
    if var == 0:
        return math.nan, math.nan
    df = var**2 / (se_o**4 / df_o + se_p**4 / df_p)
    half = stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(var)
    return diff - half, diff + half


def _row(
    quantity: str, tex: str, kind: str, paper: dict[str, Any], ours: dict[str, Any], se_df: tuple, reasons: list[str]
) -> dict[str, Any]:
    row = {
        "quantity": quantity,
        "quantity_tex": tex,
        "kind": kind,
        "paper_mean": paper["mean"],
        "paper_std": paper["std"],
        "paper_n": paper["n"],
        "ours_mean": ours["mean"],
        "ours_std": ours["std"],
        "ours_n": ours["n"],
        "difference": math.nan,
        "interval_low": math.nan,
        "interval_high": math.nan,
        "within": None,
        "status": "compared",
        "reason": "",
    }
    if ours["n"] == 0:
        row.update(status="missing in ours")
        return row
    if paper["n"] == 0:
        row.update(status="missing in paper")
        return row
    if reasons:
        row.update(status="not comparable", reason="; ".join(reasons))
        return row
    row["difference"] = ours["mean"] - paper["mean"]
    lo, hi = combined_interval(row["difference"], *se_df)
    row.update(interval_low=lo, interval_high=hi)
    if np.isfinite(lo):
        row["within"] = bool(lo <= 0 <= hi)
    else:
        row["reason"] = "interval needs at least 2 seeds (paper side)"
    return row


def _acc_se_df(o: dict[str, Any], p: dict[str, Any]) -> tuple:
    if o["n"] >= 2:
        se_o, df_o = o["std"] / math.sqrt(o["n"]), o["n"] - 1
    else:  # one run of ours: the paper's run-to-run spread estimates its error
        se_o, df_o = p["std"], p["n"] - 1
    return (se_o, df_o, p["std"] / math.sqrt(p["n"]) if p["n"] >= 2 else math.nan, p["n"] - 1)


def _where(df: pd.DataFrame, **equal: object) -> pd.DataFrame:
    """The rows of ``df`` whose columns equal the given values."""
    mask = pd.Series(True, index=df.index)
    for column, value in equal.items():
        mask &= df[column] == value
    return df[mask]


def compare_to_reference(ours: pd.DataFrame, paper: pd.DataFrame, metric: str = "test_best") -> pd.DataFrame:
    """The comparison table (columns :data:`COLUMNS`) of run table ``ours`` against the paper's run table."""
    rows = []
    for stage, label in (("teacher", "teacher"), ("baseline", "baseline")):
        archs = sorted(set(paper.loc[paper["stage"] == stage, "student"]), key=arch_sort_key)
        for arch in archs:
            match = {"stage": stage, "student": arch, "stem": "cifar"}
            o_runs, p_runs = _where(ours, **match), _where(paper, **match)
            o, p = describe(o_runs[metric]), describe(p_runs[metric])
            rows.append(
                _row(
                    f"{label} {short(arch)} accuracy",
                    f"{label.capitalize()} {short(arch)}",
                    "accuracy",
                    p,
                    o,
                    _acc_se_df(o, p),
                    reduced_scale_reasons(o_runs, p_runs) if len(o_runs) else [],
                )
            )
    comp_p = kd_comparisons(paper, metric)
    comp_o = kd_comparisons(ours, metric) if (ours["stage"] == "final").any() else comp_p.iloc[0:0]
    for _, cp in comp_p.iterrows():
        name = f"{short(cp['teacher'])}->{short(cp['student'])} {cp['method']}"
        tex = f"{short(cp['teacher'])}$\\rightarrow${short(cp['student'])} {cp['method']}"
        final_match = {"stage": "final", "pair": cp["pair"], "method": cp["method"]}
        base_match = {"stage": "baseline", "student": cp["student"], "stem": "cifar"}
        o_runs, p_runs = _where(ours, **final_match), _where(paper, **final_match)
        o, p = describe(o_runs[metric]), describe(p_runs[metric])
        reasons = (
            reduced_scale_reasons(
                pd.concat([o_runs, _where(ours, **base_match)]), pd.concat([p_runs, _where(paper, **base_match)])
            )
            if len(o_runs)
            else []
        )
        rows.append(_row(f"{name} accuracy", f"{tex} acc.", "accuracy", p, o, _acc_se_df(o, p), reasons))
        co = comp_o[(comp_o["pair"] == cp["pair"]) & (comp_o["method"] == cp["method"])]
        go = (
            {"mean": co["gain"].iloc[0], "std": math.nan, "n": int(co["n_treated"].iloc[0])}
            if len(co)
            else {"mean": math.nan, "std": math.nan, "n": 0}
        )
        gp = {"mean": cp["gain"], "std": math.nan, "n": int(cp["n_treated"])}
        se_df = (
            (co["se"].iloc[0] if len(co) else math.nan),
            (co["df"].iloc[0] if len(co) else math.nan),
            cp["se"],
            cp["df"],
        )
        row = _row(f"{name} gain (pp)", f"{tex} gain", "gain", gp, go, se_df, reasons)
        if row["status"] == "compared" and row["within"] is None:
            row["reason"] = "gain interval needs at least 2 seeds per arm on both sides"
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_comparison(
    ours_runs: pd.DataFrame | str | Path,
    paper_runs: pd.DataFrame | str | Path,
    csv_path: str | Path,
    tex_path: str | Path,
    metric: str = "test_best",
) -> pd.DataFrame:
    """Write the comparison table of two run tables (or their runs.csv files) as CSV and LaTeX; return it."""
    from kdcore.analysis.latex import tex_comparison
    from kdcore.analysis.table import read_table, write_table

    ours_runs = ours_runs if isinstance(ours_runs, pd.DataFrame) else read_table(ours_runs)
    paper_runs = paper_runs if isinstance(paper_runs, pd.DataFrame) else read_table(paper_runs)
    from kdcore.atomic import atomic_write_text

    comp = compare_to_reference(ours_runs, paper_runs, metric)
    write_table(comp, csv_path)
    atomic_write_text(tex_path, tex_comparison(comp))
    return comp
