"""LaTeX tables of the study (pandas ``Styler.to_latex``, booktabs rules, captions and labels).

Cells read "mean $\\pm$ std" (accuracies in %, differences in pp); the best cell of a row or column is bold
(Styler ``textbf`` with ``--rwrap``); gains carry $^{*}$ when the Welch p < 0.05 (no correction) and
$^{\\dagger}$ when the Holm-adjusted p < 0.05; the footnote names the Holm family and its size. The tables
need ``\\usepackage{booktabs}`` only.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdcore.analysis.methods import hyperparameter_tex, method_tex
from kdcore.analysis.outputs import TEX_TABLES
from kdcore.analysis.stats import METRIC_LABELS, cell_summary, teacher_runs
from kdcore.analysis.summary import STAT_TABLES
from kdcore.analysis.table import hyperparameter_columns, read_inputs, read_table
from kdcore.atomic import atomic_write_text
from kdcore.errors import ConfigError
from kdcore.labels import split_chain

BOLD = "textbf:--rwrap;"


def sig_foot(comparisons: pd.DataFrame) -> str:
    """Footnote of the significance marks: the correction and the size of its family."""
    m = int(comparisons["p_welch"].notna().sum()) if "p_welch" in comparisons else 0
    return (
        r"$^{*}$ Welch $p<0.05$, no correction; $^{\dagger}$ Holm-adjusted $p<0.05$ over "
        f"{m} pair $\\times$ method KD cells (each against its student's baseline)."
    )


def premise_note(cells: pd.DataFrame, pairs: list[str]) -> str:
    """A warning for each pair whose teacher's mean accuracy does not exceed its student's baseline mean."""
    out = []
    for pair in pairs:
        teacher, student = split_pair(pair)
        t = _cell(cells, stage="teacher", student=teacher)
        b = _cell(cells, stage="baseline", student=student, stem="cifar")
        if t is not None and b is not None and not t["mean"] > b["mean"]:
            out.append(
                f"Warning: teacher {tex_short(teacher)} ({t['mean']:.2f}\\%) does not beat the {short(student)} "
                f"baseline ({b['mean']:.2f}\\%); KD from a weaker teacher is not the paper's setting."
            )
    return " ".join(out)


_NETWORK = re.compile(r"(?P<family>resnet|wrn_)(?P<depth>\d+)(?:_(?P<widen>\d+))?(?P<x4>x4)?(?:-w(?P<width>\d+))?")


def short(arch: str, arrow: str = "\u2192") -> str:
    """'resnet50' -> 'R50', 'resnet8x4' -> 'R8x4', 'resnet18-w16' -> 'R18-w16', 'wrn_40_2' -> 'WRN-40-2'
    (the labels of figures and tables); a chain teacher 'resnet101.logit.resnet50' -> 'R101→R50 (logit)'
    with ``arrow`` between its networks (:func:`tex_short` for LaTeX)."""
    if not isinstance(arch, str):
        return str(arch)
    chain = split_chain(arch)
    if chain is not None:
        parent, method, student = chain
        return f"{short(parent, arrow)}{arrow}{short(student)} ({method})"
    if arch.startswith("wrn_"):
        base, sep, width = arch.partition("-w")
        return "WRN-" + base[4:].replace("_", "-") + (f"-w{width}" if sep else "")
    return arch.replace("resnet", "R")


def tex_short(label: str) -> str:
    """:func:`short` for LaTeX text (the arrow of a chain teacher in math mode)."""
    return short(label, arrow=r"$\rightarrow$").replace("_", r"\_")


def arch_sort_key(network: str) -> tuple:
    """Order of network labels in tables and figures: family, depth, widen factor, x4, width (a label
    without `-w` is at the study's width, which sorts after its listed variants); other names last."""
    found = _NETWORK.fullmatch(network) if isinstance(network, str) else None
    if found is None:
        return (2, 0, 0, 0, 0, str(network))
    width = int(found["width"]) if found["width"] else 1 << 30
    return (
        0 if found["family"] == "resnet" else 1,
        int(found["depth"]),
        int(found["widen"] or 0),
        bool(found["x4"]),
        width,
        network,
    )


def split_pair(pair: str) -> tuple[str, str]:
    """'resnet50-w16-resnet18' -> ('resnet50-w16', 'resnet18'): a pair is `<teacher>-<student>`, each a network
    label: an architecture name (which has no '-') optionally followed by `-w<width>`."""
    labels: list[str] = []
    for token in pair.split("-"):
        if labels and re.fullmatch(r"w[1-9][0-9]*", token):
            labels[-1] += f"-{token}"
        else:
            labels.append(token)
    if len(labels) != 2 or not all(labels):
        raise ValueError(f"pair {pair!r} is not <teacher>-<student>")
    return labels[0], labels[1]


def pair_tex(pair: str) -> str:
    t, s = split_pair(pair)
    return rf"{tex_short(t)}$\rightarrow${short(s)}"


def pm(mean: float, std: float, digits: int = 2) -> str:
    """'94.86 $\\pm$ 0.14'; the std is left out when undefined (one seed); '--' when there is no mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "--"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return rf"{mean:.{digits}f} $\pm$ {std:.{digits}f}"


def num(value: Any, fmt: str = "{:.2f}") -> str:
    return "--" if value is None or pd.isna(value) else fmt.format(value)


def pval(p: Any) -> str:
    if p is None or pd.isna(p):
        return "--"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def sig(row: Any) -> str:
    marks = ""
    if pd.notna(row.get("p_welch")) and row["p_welch"] < 0.05:
        marks += "*"
    if pd.notna(row.get("p_holm")) and row["p_holm"] < 0.05:
        marks += r"\dagger"
    return f"$^{{{marks}}}$" if marks else ""


def gain_cell(row: Any) -> str:
    """'+0.19 [+0.02, +0.37]$^{*}$' (gain with 95% Welch CI and significance marks)."""
    if row is None or pd.isna(row.get("gain")):
        return "--"
    ci = f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" if pd.notna(row.get("ci_low")) else ""
    return f"{row['gain']:+.2f}{ci}{sig(row)}"


def _styled(
    df: pd.DataFrame,
    bold: np.ndarray | None,
    caption: str,
    label: str,
    column_format: str | None = None,
    note: str | None = None,
) -> str:
    """A string table as booktabs LaTeX; ``bold`` is a boolean mask of cells to set in bold."""
    styler = df.style.hide(axis="index")
    if bold is not None and bold.any():
        mask = pd.DataFrame(bold, index=df.index, columns=df.columns)
        styler = styler.apply(lambda _: np.where(mask, BOLD, ""), axis=None)
    tex = styler.to_latex(
        hrules=True,
        caption=caption,
        label=label,
        position="tbp",
        position_float="centering",
        column_format=column_format or "l" * df.shape[1],
    )
    if note:
        tex = tex.replace(r"\end{table}", f"\\par\\smallskip{{\\footnotesize {note}}}\n\\end{{table}}")
    return tex


def _mask(df: pd.DataFrame) -> np.ndarray:
    return np.zeros(df.shape, dtype=bool)


def _cell(cells: pd.DataFrame, **keys: Any) -> pd.Series | None:
    sel = cells
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    return None if sel.empty else sel.iloc[0]


def tex_main_results(comparisons: pd.DataFrame, cells: pd.DataFrame, runs: pd.DataFrame, metric_label: str) -> str:
    """Pair, teacher accuracy, baseline accuracy, the gain of each KD method and the best method per pair."""
    methods = list(dict.fromkeys(comparisons["method"]))
    rows, bold = [], []
    for pair in sorted(comparisons["pair"].unique(), key=lambda p: (arch_sort_key(split_pair(p)[1]), len(p), p)):
        teacher, student = split_pair(pair)
        t = _cell(cells, stage="teacher", student=teacher)
        b = _cell(cells, stage="baseline", student=student, stem="cifar")
        gains = {m: _cell(comparisons, pair=pair, method=m) for m in methods}
        accs = {"baseline": b["mean"] if b is not None else math.nan}
        accs.update({m: g["mean_treated"] if g is not None else math.nan for m, g in gains.items()})
        best = max(accs, key=lambda m: -np.inf if pd.isna(accs[m]) else accs[m])
        rows.append(
            {
                "Pair": pair_tex(pair),
                "Teacher": pm(t["mean"], t["std"]) if t is not None else "--",
                "Baseline": pm(b["mean"], b["std"]) if b is not None else "--",
                **{f"{method_tex(m)} gain": gain_cell(gains[m]) for m in methods},
                "Best": method_tex(best),
            }
        )
        gain_vals = [gains[m]["gain"] if gains[m] is not None else -np.inf for m in methods]
        flag = [False] * (4 + len(methods))
        k = int(np.argmax(gain_vals)) if methods else 0
        if methods and gain_vals[k] > 0:
            flag[3 + k] = True
        bold.append(flag)
    df = pd.DataFrame(rows)
    n = sorted({int(x) for x in comparisons["n_treated"]}) if not comparisons.empty else []
    caption = (
        f"Main results ({metric_label}, \\%). Teacher and baseline: mean $\\pm$ std over seeds; gains: KD "
        f"minus baseline in pp with 95\\% Welch CI (n = {', '.join(map(str, n))} seeds per cell). "
        "The larger positive gain per pair is bold; Best is the method with the highest mean accuracy."
    )
    warning = premise_note(cells, sorted(comparisons["pair"].unique()))
    caption += f" {warning}" if warning else ""
    align = "l" + "c" * (3 + len(methods) + 1)
    return _styled(df, np.array(bold) if bold else None, caption, "tab:main", align, sig_foot(comparisons))


def tex_kd_statistics(comparisons: pd.DataFrame) -> str:
    """Every statistic of every KD cell against its baseline."""
    rows = []
    for _, r in comparisons.sort_values(["student", "pair", "method"]).iterrows():
        rows.append(
            {
                "Pair": pair_tex(r["pair"]),
                "Method": method_tex(r["method"]),
                "n": f"{int(r['n_treated'])}/{int(r['n_control'])}",
                "Gain": f"{r['gain']:+.2f}{sig(r)}",
                "SE": num(r["se"]),
                "95\\% CI (t)": f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if pd.notna(r["ci_low"]) else "--",
                "95\\% CI (BCa)": f"[{r['bca_low']:+.2f}, {r['bca_high']:+.2f}]"
                if pd.notna(r.get("bca_low"))
                else "--",
                "$p$ Welch": pval(r["p_welch"]),
                "$p$ paired": pval(r["p_paired"]),
                "$p$ Holm": pval(r["p_holm"]),
                "Hedges $g$": num(r["hedges_g"]),
                "$n_{\\min}$": _seeds(r.get("seeds_for_min_effect"), r.get("seeds_for_min_effect_upper")),
            }
        )
    df = pd.DataFrame(rows)
    bold = _mask(df)
    if not df.empty and comparisons["p_welch"].notna().any():
        order = comparisons.sort_values(["student", "pair", "method"]).reset_index(drop=True)
        bold[:, list(df.columns).index("$p$ Welch")] = (order["p_welch"] < 0.05).to_numpy()
    effect = comparisons["min_effect_pp"].iloc[0] if "min_effect_pp" in comparisons and len(comparisons) else None
    caption = (
        "KD gain over the student baseline (pp): standard error, 95\\% CIs (Welch t, the primary interval; "
        "BCa bootstrap, descriptive only: with 5 seeds per arm it covers about 87\\%), Welch and paired (shared "
        "seeds) t-test $p$, Holm-adjusted Welch "
        f"$p$ over all {int(comparisons['p_welch'].notna().sum()) if len(comparisons) else 0} cells, Hedges $g$ "
        "and $n_{\\min}$: the seeds per arm an a priori two-sample t-test needs for 80\\% power to detect a "
        + (f"{effect:g} pp" if effect is not None and pd.notna(effect) else "minimum-effect")
        + " gain at the observed baseline SD (in parentheses: at its upper 95\\% confidence limit). $p<0.05$ in bold."
    )
    return _styled(
        df,
        bold,
        caption,
        "tab:kd-stats",
        "llc" + "c" * (df.shape[1] - 3) if not df.empty else None,
        sig_foot(comparisons),
    )


def tex_teachers(cells: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Teacher accuracies (test and val) per architecture; best test accuracy bold."""
    t = cells[cells["stage"] == "teacher"].copy()
    teachers = teacher_runs(runs)
    t["params"] = t["student"].map(teachers.groupby("student")["params"].first())
    t["epochs"] = t["student"].map(teachers.groupby("student")["epochs"].max())
    val = teachers.groupby("student")["val_acc"].agg(["mean", "std"])
    t = t.sort_values("params")
    df = pd.DataFrame(
        {
            "Teacher": [tex_short(a) for a in t["student"]],
            "Params (M)": [num(p / 1e6, "{:.1f}") for p in t["params"]],
            "Epochs": [str(int(e)) for e in t["epochs"]],
            "n": [str(int(n)) for n in t["n"]],
            "Test acc (\\%)": [pm(m, s) for m, s in zip(t["mean"], t["std"], strict=False)],
            "Best val acc (\\%)": [pm(val.loc[a, "mean"], val.loc[a, "std"]) for a in t["student"]],
        }
    )
    bold = _mask(df)
    if len(t):
        bold[int(np.argmax(t["mean"].to_numpy())), 4] = True
    return _styled(
        df,
        bold,
        "Teachers: test accuracy at the best val epoch and best val accuracy, mean $\\pm$ std "
        "over seeds. Highest test accuracy in bold.",
        "tab:teachers",
        "lrrccc",
    )


def tex_fidelity(fidelity_table: pd.DataFrame) -> str:
    """Agreement and KL per pair x method (and the baseline-vs-teacher control); best values bold."""
    if fidelity_table.empty:
        df = pd.DataFrame({"Pair": ["--"], "Student": ["no fidelity measurements"]})
        return _styled(df, None, "Student-teacher fidelity: no measurements.", "tab:fidelity")
    f = fidelity_table.assign(
        arm=np.where(fidelity_table["control"].astype(bool), "baseline", fidelity_table["method"])
    )
    g = f.groupby(["pair", "student", "arm"])
    agg = g[["student_acc", "agreement", "kl_t1", "kl_t4"]].agg(["mean", "std"])
    n = g.size()
    rows, raw = [], []
    for (pair, student, arm), r in agg.iterrows():
        rows.append(
            {
                "Pair": pair_tex(pair),
                "Student": method_tex(arm) + (" (control)" if arm == "baseline" else ""),
                "n": str(int(n.loc[(pair, student, arm)])),
                "Student acc (\\%)": pm(r[("student_acc", "mean")], r[("student_acc", "std")]),
                "Agreement (\\%)": pm(r[("agreement", "mean")], r[("agreement", "std")]),
                "KL $T{=}1$": pm(r[("kl_t1", "mean")], r[("kl_t1", "std")], 3),
                "KL $T{=}4$": pm(r[("kl_t4", "mean")], r[("kl_t4", "std")], 4),
            }
        )
        raw.append([r[("agreement", "mean")], r[("kl_t1", "mean")], r[("kl_t4", "mean")]])
    df = pd.DataFrame(rows)
    raw = np.array(raw, dtype=float)
    bold = _mask(df)
    for j, col, best in ((0, 4, np.nanargmax), (1, 5, np.nanargmin), (2, 6, np.nanargmin)):
        if np.isfinite(raw[:, j]).any():
            bold[int(best(raw[:, j])), col] = True
    return _styled(
        df,
        bold,
        "Student-teacher fidelity on the test set: top-1 agreement and KL(teacher$\\|$student) "
        "at $T=1$ and $T=4$, mean $\\pm$ std over seeds. Control rows: baseline students (no teacher) "
        "measured against the same teacher. Highest agreement and lowest KL in bold.",
        "tab:fidelity",
        "llcccc" + "c",
    )


def tex_stem_ablation(stem_stats: pd.DataFrame, metric_label: str) -> str:
    """CIFAR vs ImageNet stem per architecture with the difference and its 95% CI."""
    if stem_stats.empty:
        return _styled(
            pd.DataFrame({"Arch": ["--"], "Note": ["no stem-ablation runs"]}),
            None,
            "Stem ablation: no runs.",
            "tab:stem",
        )
    rows = []
    for _, r in stem_stats.iterrows():
        rows.append(
            {
                "Arch": short(r["student"]),
                "n": f"{int(r.get('n_cifar', 0) or 0)}/{int(r.get('n_imagenet', 0) or 0)}",
                "CIFAR stem": pm(r.get("mean_cifar"), r.get("std_cifar")),
                "ImageNet stem": pm(r.get("mean_imagenet"), r.get("std_imagenet")),
                "Difference (pp)": f"{r['diff']:+.2f}" if pd.notna(r.get("diff")) else "--",
                "95\\% CI": f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if pd.notna(r.get("ci_low")) else "--",
                "$p$ Welch": pval(r.get("p_welch")),
            }
        )
    df = pd.DataFrame(rows)
    bold = _mask(df)
    for i, r in stem_stats.reset_index(drop=True).iterrows():
        if pd.notna(r.get("mean_cifar")) and pd.notna(r.get("mean_imagenet")):
            bold[i, 2 if r["mean_cifar"] >= r["mean_imagenet"] else 3] = True
    return _styled(
        df,
        bold,
        f"Stem ablation without a teacher ({metric_label}, \\%): CIFAR stem (3$\\times$3 conv) vs "
        "ImageNet stem (7$\\times$7 conv and max-pool), mean $\\pm$ std; difference CIFAR minus "
        "ImageNet with 95\\% Welch CI (-- where a stem has one seed). Better stem in bold.",
        "tab:stem",
        "lcccccc",
    )


def tex_clip_ablation(clip_stats: pd.DataFrame, metric_label: str) -> str:
    """Bugged (student-only clipping) vs corrected arm with the max pre-clip projection gradient norms."""
    if clip_stats.empty:
        return _styled(
            pd.DataFrame({"Pair": ["--"], "Note": ["no clip-ablation runs"]}),
            None,
            "Clip ablation: no runs.",
            "tab:clip",
        )
    rows, bold = [], []
    for _, r in clip_stats.iterrows():
        for arm, label in (("bugged", "bugged (student-only clip)"), ("corrected", "corrected (clip all)")):
            rows.append(
                {
                    "Pair": pair_tex(r["pair"]),
                    "Method": method_tex(r["method"]),
                    "Arm": label,
                    "n": str(int(r.get(f"n_{arm}", 0) or 0)),
                    "Test acc (\\%)": pm(r.get(f"mean_{arm}"), r.get(f"std_{arm}")),
                    "Max proj.\\ grad norm": num(r.get(f"proj_grad_norm_max_{arm}"), "{:.3g}"),
                    "Corrected $-$ bugged (pp)": (
                        f"{r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                        if arm == "bugged" and pd.notna(r.get("ci_low"))
                        else (f"{r['diff']:+.2f}" if arm == "bugged" and pd.notna(r.get("diff")) else "")
                    ),
                    "$p$ Welch": pval(r.get("p_welch")) if arm == "bugged" else "",
                }
            )
        better = "corrected" if (r.get("mean_corrected") or -np.inf) >= (r.get("mean_bugged") or -np.inf) else "bugged"
        bold += [
            [False, False, False, False, better == "bugged", False, False, False],
            [False, False, False, False, better == "corrected", False, False, False],
        ]
    df = pd.DataFrame(rows)
    return _styled(
        df,
        np.array(bold),
        f"Clip-bug ablation ({metric_label}, \\%): the bugged arm clips only the student's "
        "gradients (projection heads unclipped), the corrected arm clips all trained parameters. "
        "Max proj.\\ grad norm: largest pre-clip projection gradient norm over all epochs and seeds "
        "(-- where not recorded). Difference with 95\\% Welch CI. Higher accuracy in bold.",
        "tab:clip",
        "lllcccc" + "c",
    )


def tex_selection(selection_table: pd.DataFrame) -> str:
    """Every selection grid point's val accuracy; the winner of each pair x method in bold."""
    if selection_table.empty:
        return _styled(
            pd.DataFrame({"Pair": ["--"], "Note": ["no selection runs"]}),
            None,
            "Hyper-parameter selection: no runs.",
            "tab:selection",
        )
    hps = hyperparameter_columns(selection_table)
    s = selection_table.sort_values(["student", "pair", "method", *hps]).reset_index(drop=True)
    methods = list(dict.fromkeys(s["method"]))
    df = pd.DataFrame(
        {
            "Pair": [pair_tex(p) for p in s["pair"]],
            "Method": [method_tex(m) for m in s["method"]],
            **{hyperparameter_tex(hp, methods): [num(v, "{:g}") for v in s[hp]] for hp in hps},
            "Val acc (\\%)": [num(v) for v in s["val_acc"]],
            "Used in final": ["yes" if u else "" for u in s["used_in_final"]],
        }
    )
    bold = _mask(df)
    bold[:, 2 + len(hps)] = s["winner"].to_numpy(dtype=bool)
    return _styled(
        df,
        bold,
        "Hyper-parameter selection (seed 0): best val accuracy of every grid point; the winner "
        "of each pair and method (highest val accuracy) in bold.",
        "tab:selection",
        "ll" + "c" * (len(hps) + 2),
    )


def tex_comparison(comp: pd.DataFrame) -> str:
    """Paper vs reproduction table (see :mod:`kdcore.analysis.compare`)."""
    if comp.empty:
        return _styled(
            pd.DataFrame({"Quantity": ["--"], "Note": ["nothing to compare"]}),
            None,
            "Paper vs reproduction: nothing to compare.",
            "tab:comparison",
        )
    rows = []
    for _, r in comp.iterrows():
        compared = r["status"] == "compared"
        rows.append(
            {
                "Quantity": r["quantity_tex"],
                "Paper": pm(r["paper_mean"], r["paper_std"]),
                "Ours": pm(r["ours_mean"], r["ours_std"]),
                "Difference": f"{r['difference']:+.2f}" if compared and pd.notna(r["difference"]) else "--",
                "95\\% interval": (
                    f"[{r['interval_low']:+.2f}, {r['interval_high']:+.2f}]"
                    if compared and pd.notna(r["interval_low"])
                    else "--"
                ),
                "Within": ({True: "yes", False: "no"}.get(r["within"], "--") if compared else r["status"]),
            }
        )
    df = pd.DataFrame(rows)
    bold = _mask(df)
    bold[:, 5] = [(r["status"] == "compared" and r["within"] is False) for _, r in comp.iterrows()]
    return _styled(
        df,
        bold,
        "Paper vs reproduction: mean $\\pm$ std (accuracies in \\%, gains in pp), our minus the "
        "paper's value and its combined 95\\% interval (Welch); ``no'' (bold) marks a difference outside "
        "the interval. Reduced-scale studies are not compared.",
        "tab:comparison",
        "lcccccc",
    )


def _interval(low: Any, high: Any) -> str:
    return f"[{low:+.2f}, {high:+.2f}]" if pd.notna(low) and pd.notna(high) else "--"


def _seeds(n: Any, upper: Any) -> str:
    if n is None or pd.isna(n):
        return "--"
    return f"{int(n)} ({int(upper)})" if upper is not None and pd.notna(upper) else str(int(n))


def tex_moderation_sensitivity(sensitivity: pd.DataFrame, metric_label: str) -> str:
    """The moderation estimate under each analysis choice (kdcore.analysis.sensitivity), one row per choice
    and family, with its 95% CI, p, TOST p and verdict (booktabs)."""
    if sensitivity.empty:
        return _styled(
            pd.DataFrame({"Teacher": ["--"], "Note": ["no family with two or more students"]}),
            None,
            "Moderation sensitivity: no family with two or more students.",
            "tab:moderation-sensitivity",
        )
    rows = [
        {
            "Teacher": tex_short(r["teacher"]),
            "Method": method_tex(r["method"]),
            "Choice": str(r["choice"]),
            "Variant": str(r["variant"]).replace("_", "\\_"),
            "n": "--" if pd.isna(r["seeds_per_group"]) else str(int(r["seeds_per_group"])),
            "Change (pp)": f"{r['gain_change']:+.3f}" if pd.notna(r["gain_change"]) else "--",
            "95\\% CI": _interval(r["gain_change_ci_low"], r["gain_change_ci_high"]),
            "$p$": pval(r["p"]),
            "$p$ TOST": pval(r["p_tost"]),
            "Verdict": str(r["verdict"]),
        }
        for _, r in sensitivity.iterrows()
    ]
    caption = (
        f"Moderation sensitivity ({metric_label} unless the metric is the choice): the change of the KD gain "
        "across each family's capacity range when one analysis choice differs from the primary analysis: the "
        "accuracy metric, leaving out the final seeds that also ran the selection grid, the paired or unpaired "
        "design, and students compared at the same (matched) selection-grid setting instead of each at its own "
        "tuned one (one selection seed per point: estimates only). The rows are alternative analyses of the "
        "same runs, not a multiple-testing family."
    )
    df = pd.DataFrame(rows)
    return _styled(df, None, caption, "tab:moderation-sensitivity", "llll" + "c" * (df.shape[1] - 4))


def tex_moderation(moderation: pd.DataFrame, metric_label: str) -> str:
    """The moderation test per teacher and method: change of the KD gain per doubling of student parameters
    with 95% CI, p, Holm p, the a priori figures and the conclusion in words (booktabs)."""
    if moderation.empty:
        return _styled(
            pd.DataFrame({"Teacher": ["--"], "Note": ["no final KD cells"]}),
            None,
            "Moderation by student capacity: no final KD cells.",
            "tab:moderation",
        )
    rows = []
    for _, r in moderation.iterrows():
        rows.append(
            {
                "Teacher": tex_short(r["teacher"]),
                "Method": method_tex(r["method"]),
                "Students": ", ".join(short(s) for s in str(r["students"]).split()),
                "n": str(int(r["seeds_per_group"])),
                "Slope (pp/doubling)": f"{r['slope']:+.3f}" if pd.notna(r["slope"]) else "--",
                "95\\% CI": f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if pd.notna(r["ci_low"]) else "--",
                "$p$": pval(r["p"]),
                "$p$ Holm": pval(r["p_holm"]),
                "Change 90\\% CI (pp)": _interval(r.get("gain_change_ci90_low"), r.get("gain_change_ci90_high")),
                "$p$ TOST": pval(r.get("p_tost", math.nan)),
                "Ruled out (pp)": num(r.get("bound_ruled_out", math.nan)),
                "Detectable (pp)": num(r["mde_gain_change"]),
                "$n$ for effect": _seeds(r.get("seeds_for_min_effect"), r.get("seeds_for_min_effect_upper")),
            }
        )
    df = pd.DataFrame(rows)
    bold = _mask(df)
    bold[:, 7] = (moderation["p_holm"] < 0.05).to_numpy()
    effect = moderation["min_effect_pp"].iloc[0]
    m = int(moderation["holm_m"].iloc[0])
    caption = (
        f"Does student capacity moderate the KD gain ({metric_label})? Per teacher and method: equal-weight "
        "least-squares slope of the per-student KD gain on $\\log_2$(student parameters), in pp per doubling, "
        "with 95\\% CI from each cell's own variance (Welch--Satterthwaite df; with two students this is the "
        f"difference in gains), $p$ and Holm-adjusted $p$ over the {m} teacher $\\times$ method families (bold "
        "when $<0.05$). Equivalence: 90\\% CI of the change of the gain across the students' capacity range, "
        f"TOST $p$ for a change smaller than {effect:g} pp, and the smallest change the data rule out at "
        "$\\alpha=0.05$. A priori design for the design tested: the smallest change detectable with 80\\% power "
        f"at the study's seeds and observed SD, and the seeds per group needed to detect a {effect:g} pp change "
        "(in parentheses: at the SD's upper 95\\% confidence limit). "
        + " ".join(f"{tex_short(r['teacher'])} {r['method']}: {r['conclusion']}." for _, r in moderation.iterrows())
    )
    return _styled(df, bold, caption, "tab:moderation", "lll" + "c" * (df.shape[1] - 3))


TABLE_NAMES = tuple(TEX_TABLES)  # the names, from the one list in kdcore.analysis.outputs


def tex_table(name: str, tables: dict[str, pd.DataFrame], metric_label: str) -> str:
    """LaTeX table ``name`` (one of :data:`TABLE_NAMES`) from the analysis tables it reads (runs, cells,
    comparisons, fidelity and the statistics tables by name: kdcore.analysis.outputs.TEX_TABLES)."""
    builders = {
        "main_results": lambda: tex_main_results(tables["comparisons"], tables["cells"], tables["runs"], metric_label),
        "kd_statistics": lambda: tex_kd_statistics(tables["comparisons"]),
        "teachers": lambda: tex_teachers(tables["cells"], tables["runs"]),
        "fidelity": lambda: tex_fidelity(tables["fidelity"]),
        "stem_ablation": lambda: tex_stem_ablation(tables["stem_ablation"], metric_label),
        "clip_ablation": lambda: tex_clip_ablation(tables["clip_ablation"], metric_label),
        "selection": lambda: tex_selection(tables["selection"]),
        "moderation": lambda: tex_moderation(tables["moderation"], metric_label),
        "moderation_sensitivity": lambda: tex_moderation_sensitivity(tables["moderation_sensitivity"], metric_label),
    }
    if name not in builders:
        raise ConfigError(f"LaTeX table {name!r} is not one of {', '.join(TABLE_NAMES)}")
    return builders[name]()


def write_tex_table(name: str, inputs: dict[str, Any], out_path: str | Path, metric: str = "test_best") -> Path:
    """LaTeX table ``name`` from a job's named input files (kdcore.analysis.table.read_inputs; the cells are
    computed from the runs read), written to ``out_path``."""
    tables = read_inputs(inputs)
    if "runs" in tables:
        tables["cells"] = cell_summary(tables["runs"], metric)
    return atomic_write_text(out_path, tex_table(name, tables, METRIC_LABELS[metric]))


def write_tables(tables: dict[str, pd.DataFrame], out_dir: str | Path, metric_label: str) -> list[Path]:
    """Write every LaTeX table of the study from the analysis tables (runs, cells, comparisons, fidelity and
    the statistics tables) into ``out_dir/<name>.tex``."""
    out_dir = Path(out_dir)
    return [atomic_write_text(out_dir / f"{name}.tex", tex_table(name, tables, metric_label)) for name in TABLE_NAMES]


def document(table_files: list[str | Path]) -> str:
    """A minimal LaTeX document that inputs the given table files (for a compile check or a preview)."""
    body = "\n".join(rf"\input{{{Path(p).as_posix()}}}" for p in table_files)
    return (
        "\\documentclass{article}\n\\usepackage[margin=1.5cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
        f"\\begin{{document}}\n{body}\n\\end{{document}}\n"
    )


def write_all(tables_dir: str | Path, out_dir: str | Path, metric_label: str) -> list[Path]:
    """Read the CSV tables of ``tables_dir`` (runs, cells, fidelity and every statistics table) and write every
    LaTeX table into ``out_dir``."""
    tables_dir = Path(tables_dir)
    names = ("runs", "fidelity", *STAT_TABLES)
    return write_tables({name: read_table(tables_dir / f"{name}.csv") for name in names}, out_dir, metric_label)
