"""Figures of the study (seaborn style on matplotlib), each saved as PDF and PNG.

Colours are the Okabe-Ito colour-blind-safe palette; every colour distinction is doubled by a marker,
line style or fill so the figures also read in grayscale. Functions take the tables of
:mod:`kdcore.analysis.table` / :mod:`kdcore.analysis.stats` and never compute statistics themselves beyond
per-epoch means for curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from kdcore.analysis.latex import arch_sort_key, short, split_pair
from kdcore.analysis.methods import method_label
from kdcore.analysis.moderation import gain_cells, gain_points
from kdcore.analysis.outputs import FIGURES as FIGURE_READS
from kdcore.analysis.stats import teacher_runs
from kdcore.analysis.table import read_inputs, stem_arms
from kdcore.atomic import atomic_path
from kdcore.errors import ConfigError

OKABE_ITO = {
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "black": "#000000",
    "grey": "#7F7F7F",
}
TEACHER_STYLE = {  # colour, marker
    "resnet34": (OKABE_ITO["orange"], "o"),
    "resnet50": (OKABE_ITO["blue"], "s"),
    "resnet101": (OKABE_ITO["vermillion"], "^"),
    "resnet18": (OKABE_ITO["green"], "D"),
}
#: Styles for the teachers TEACHER_STYLE lacks (width variants, chain teachers), taken in order by
#: :func:`teacher_styles`: every colour and marker differs from TEACHER_STYLE's.
EXTRA_TEACHER_STYLES = [
    (OKABE_ITO["sky"], "v"),
    (OKABE_ITO["purple"], "P"),
    (OKABE_ITO["black"], "X"),
    (OKABE_ITO["yellow"], "p"),
    (OKABE_ITO["grey"], "h"),
    (OKABE_ITO["sky"], "*"),
    (OKABE_ITO["purple"], "<"),
    (OKABE_ITO["black"], ">"),
]
METHOD_STYLE = {  # colour, line style, marker; a method without one here gets one of OTHER_METHOD_STYLES
    "baseline": (OKABE_ITO["black"], "-", "o"),
    "logit": (OKABE_ITO["green"], "--", "s"),
    "feature": (OKABE_ITO["purple"], "-.", "^"),
}
OTHER_METHOD_STYLES = [
    (OKABE_ITO["vermillion"], ":", "D"),
    (OKABE_ITO["sky"], (0, (5, 1)), "v"),
    (OKABE_ITO["yellow"], (0, (3, 1, 1, 1, 1, 1)), "P"),
    (OKABE_ITO["blue"], (0, (1, 2)), "X"),
]
#: Marker fill of each KD method in the fidelity figure, in :func:`kd_methods` order: (fill style, words).
METHOD_FILLS = [("full", "filled"), ("none", "open"), ("left", "left half filled"), ("bottom", "lower half filled")]
STEM_STYLE = {
    "cifar": (OKABE_ITO["blue"], "o", "CIFAR stem (3x3 conv)"),
    "imagenet": (OKABE_ITO["vermillion"], "s", "ImageNet stem (7x7 conv + max-pool)"),
}


def teacher_styles(teachers: Any) -> dict[str, tuple[str, str]]:
    """(colour, marker) of every teacher of a figure: :data:`TEACHER_STYLE` for the teachers it names, the
    next unused :data:`EXTRA_TEACHER_STYLES` entry for the others (in sorted order), so that no two teachers
    of a figure look alike. Beyond the extra styles, colours and markers cycle."""
    names = sorted(set(teachers), key=arch_sort_key)
    out = {t: TEACHER_STYLE[t] for t in names if t in TEACHER_STYLE}
    others = [t for t in names if t not in TEACHER_STYLE]
    for i, t in enumerate(others):
        if i < len(EXTRA_TEACHER_STYLES):
            out[t] = EXTRA_TEACHER_STYLES[i]
        else:
            colours, markers = list(OKABE_ITO.values()), ["d", "8", "H", "1", "2", "3", "4"]
            out[t] = (colours[i % len(colours)], markers[i % len(markers)])
    return out


def kd_methods(table: pd.DataFrame) -> list[str]:
    """The KD methods of a table: those with a style of their own first (paper order), then the others
    sorted; the baseline is left out."""
    present = set(table["method"]) - {"baseline"} if "method" in table else set()
    return [m for m in METHOD_STYLE if m in present] + sorted(present - set(METHOD_STYLE))


def method_style(method: str, methods: list[str]) -> tuple[Any, Any, str]:
    """(colour, line style, marker) of ``method`` among the KD methods ``methods`` of a figure."""
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    others = [m for m in methods if m not in METHOD_STYLE]
    return OTHER_METHOD_STYLES[others.index(method) % len(OTHER_METHOD_STYLES)]


def marker_face(index: int, colour: Any) -> dict[str, Any]:
    """Marker face arguments of the ``index``-th KD method (:data:`METHOD_FILLS`) in ``colour``."""
    fill = METHOD_FILLS[index % len(METHOD_FILLS)][0]
    if fill == "none":
        return {"mfc": "white"}
    return {"mfc": colour} if fill == "full" else {"mfc": colour, "fillstyle": fill, "mfcalt": "white"}


def pair_label(pair: str) -> str:
    """'resnet50-resnet34' -> 'R50\u2192R34'."""
    teacher, student = split_pair(pair)
    return f"{short(teacher)}\u2192{short(student)}"


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.15)
    plt.rcParams.update(
        {
            "pdf.fonttype": 42,
            "savefig.bbox": "tight",
            "savefig.dpi": 200,
            "axes.titleweight": "bold",
            "legend.frameon": True,
        }
    )


def save_figure(fig: plt.Figure, pdf_path: str | Path) -> list[Path]:
    """Save ``fig`` as ``pdf_path`` and as the PNG beside it (same stem), atomically; close the figure."""
    pdf_path = Path(pdf_path)
    written = []
    for target, fmt in ((pdf_path, "pdf"), (pdf_path.with_suffix(".png"), "png")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt)
        written.append(target)
    plt.close(fig)
    return written


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.3", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _sig_marks(row: pd.Series) -> str:
    marks = ""
    if pd.notna(row.get("p_welch")) and row["p_welch"] < 0.05:
        marks += "*"
    if pd.notna(row.get("p_holm")) and row["p_holm"] < 0.05:
        marks += "\u2020"
    return marks


def _fit_band(row: pd.Series, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fitted gain and its pointwise 95% CI at parameter counts ``x`` from a moderation-table row."""
    from scipy import stats as st

    lx = np.log2(x)
    fit = row["intercept"] + row["slope"] * lx
    var = row["se_intercept"] ** 2 + 2 * lx * row["cov_intercept_slope"] + (lx * row["se"]) ** 2
    half = st.t.ppf(0.975, row["df"]) * np.sqrt(np.maximum(var, 0))
    return fit, fit - half, fit + half


def _draw_teacher_gains(
    ax: plt.Axes,
    points: pd.DataFrame,
    cells: pd.DataFrame,
    row: pd.DataFrame,
    teacher: str,
    shift: float,
    style: tuple[str, str],
) -> None:
    """One teacher's series in a method's panel: per-seed gains, cell means with 95% CIs and, when the
    moderation test has a slope (``row``), the fitted line with its 95% band; the legend entry states it.
    ``shift`` multiplies the parameter axis so that teachers at the same student do not overlap; ``style`` is
    the teacher's (colour, marker) (:func:`teacher_styles`)."""
    colour, marker = style
    ax.scatter(points["params"] * shift, points["gain"], s=16, marker=marker, facecolors="none", edgecolors=colour,
               lw=0.8, alpha=0.7, zorder=2)  # fmt: skip
    err = np.vstack([cells["gain"] - cells["ci_low"], cells["ci_high"] - cells["gain"]])
    style = {"color": colour, "ms": 8, "capsize": 4, "lw": 1.6, "markeredgecolor": "black", "markeredgewidth": 0.6}
    x = cells["params"].to_numpy() * shift
    ax.errorbar(x, cells["gain"], yerr=np.where(np.isnan(err), 0.0, err), fmt=marker, **style, zorder=4)
    label, line = f"teacher {short(teacher)}", ""
    if len(row) and pd.notna(row.iloc[0]["slope"]) and pd.notna(row.iloc[0]["ci_low"]):
        r = row.iloc[0]
        grid = np.geomspace(cells["params"].min(), cells["params"].max(), 50)
        fit, lo, hi = _fit_band(r, grid)
        ax.plot(grid * shift, fit, color=colour, lw=1.4, ls="--", zorder=3)
        ax.fill_between(grid * shift, lo, hi, color=colour, alpha=0.15, lw=0, zorder=1)
        label += f": {r['slope']:+.2f} pp/doubling [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], Holm p {r['p_holm']:.2f}"
        line = "--"
    ax.plot([], [], color=colour, marker=marker, mec="black", mew=0.6, ms=8, ls=line, label=label)


def plot_gain_vs_capacity(
    points: pd.DataFrame,
    cells: pd.DataFrame,
    moderation: pd.DataFrame,
    pdf_path: str | Path,
    metric_label: str = "test acc @ best val",
) -> list[Path]:
    """KD gain against student parameters (log axis), one panel per method, teachers by colour + marker:
    per-seed gains (small open markers), cell means with 95% CIs, and the moderation test's fitted slope
    with its 95% CI band; the legend states each slope, its CI and Holm p. Inputs: the tables of
    :func:`kdcore.analysis.moderation.gain_points`, ``gain_cells`` and ``moderation_table``."""
    _style()
    methods = kd_methods(cells) or [""]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.6 * len(methods), 4.6), sharey=True, squeeze=False)
    axes = axes[0]
    if cells.empty:
        for ax in axes:
            _empty(ax, "no final KD runs")
        return save_figure(fig, pdf_path)
    teachers = sorted(cells["teacher"].unique(), key=lambda t: (len(t), t))
    styles = teacher_styles(teachers)
    offset = {t: 2 ** ((i - (len(teachers) - 1) / 2) * 0.03) for i, t in enumerate(teachers)}
    for ax, method in zip(axes, methods, strict=False):
        ax.axhline(0, color="0.2", lw=1.0, zorder=1)
        for teacher in teachers:
            c = cells[(cells["teacher"] == teacher) & (cells["method"] == method)].sort_values("params")
            if c.empty:
                continue
            pts = points[(points["teacher"] == teacher) & (points["method"] == method)]
            row = moderation[(moderation["teacher"] == teacher) & (moderation["method"] == method)]
            _draw_teacher_gains(ax, pts, c, row, teacher, offset[teacher], styles[teacher])
        ax.set_xscale("log", base=2)
        ticks = sorted(cells["params"].unique())
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{p / 1e6:.2g}M" for p in ticks])
        ax.minorticks_off()
        ax.set_title(method_label(method))
        ax.set_xlabel("student parameters (log scale)")
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel(f"KD gain over baseline (pp, {metric_label})")
    note = (
        "open markers: per-seed gains; filled: cell mean \u00b1 95% CI; dashed line and band: equal-weight slope "
        "on log2(parameters) with 95% CI (each cell's own variance, Welch-Satterthwaite df); Holm over teacher "
        "\u00d7 method families"
    )
    fig.text(0.5, -0.04, note, ha="center", fontsize=8, color="0.25", wrap=True)
    fig.tight_layout()
    return save_figure(fig, pdf_path)


def _curve(history: pd.DataFrame, run_ids: Any, column: str = "val_acc") -> pd.DataFrame:
    h = history[history["run_id"].isin(list(run_ids))]
    return h.groupby("epoch")[column].agg(["mean", "std", "count"]).reset_index()


def _draw_curves(ax: plt.Axes, history: pd.DataFrame, series: dict[str, Any], methods: list[str]) -> int:
    """Each series' val accuracy per epoch (mean \u00b1 std over its runs); returns the last epoch drawn."""
    last = 1
    for m, ids in series.items():
        c = _curve(history, ids)
        if c.empty:
            continue
        last = max(last, int(c["epoch"].max()))
        colour, ls, _ = method_style(m, methods)
        n = int(c["count"].max())
        ax.plot(c["epoch"], c["mean"], color=colour, ls=ls, lw=1.5, label=f"{method_label(m)} (n={n})")
        if n > 1:
            ax.fill_between(c["epoch"], c["mean"] - c["std"], c["mean"] + c["std"], color=colour, alpha=0.18, lw=0)
    return last


def _zoom(ax: plt.Axes, history: pd.DataFrame, run_ids: pd.Series, t_val: pd.Series, start: int, last: int) -> None:
    """Limit ``ax`` to epochs ``start``..``last`` and to the accuracies the runs (and the teacher) reach there."""
    ax.set_xlim(start, last)
    h = history[history["run_id"].isin(run_ids) & (history["epoch"] >= start)]
    if not h.empty:
        lo = float(h["val_acc"].quantile(0.02))
        hi = max(float(h["val_acc"].max()), float(t_val.max()) if len(t_val) else -np.inf)
        ax.set_ylim(lo - 0.3, hi + 0.3)


def plot_convergence(
    runs: pd.DataFrame, history: pd.DataFrame, pdf_path: str | Path, zoom_fraction: float = 0.3
) -> list[Path]:
    """Validation accuracy per epoch (mean \u00b1 std over seeds) per pair: baseline, Logit-KD, Feature-KD curves
    and the teacher's best val accuracy (mean over its seeds) as a dotted line. Lower row zooms into the
    last ``zoom_fraction`` of training, where the methods differ by tenths of a point."""
    _style()
    final = runs[(runs["stage"] == "final") & (runs["method"] != "baseline") & (runs["clip_scope"] == "all")]
    pairs = sorted(final["pair"].unique(), key=lambda p: (arch_sort_key(split_pair(p)[1]), p))
    ncol = max(len(pairs), 1)
    fig, axes = plt.subplots(
        2, ncol, figsize=(4.2 * ncol, 6.6), squeeze=False, sharey="row", gridspec_kw={"height_ratios": [1, 1.2]}
    )
    if not pairs:
        for ax in axes.ravel():
            _empty(ax, "no final KD runs")
        return save_figure(fig, pdf_path)
    base = runs[(runs["stage"] == "baseline") & (runs["stem"] == "cifar")]
    teachers = teacher_runs(runs)
    methods = kd_methods(final)
    for j, pair in enumerate(pairs):
        teacher, student = split_pair(pair)
        series = {"baseline": base[base["student"] == student]["run_id"]}
        series.update({m: final[(final["pair"] == pair) & (final["method"] == m)]["run_id"] for m in methods})
        t_val = teachers[teachers["student"] == teacher]["val_acc"]
        for row in range(2):
            ax = axes[row, j]
            last = _draw_curves(ax, history, series, methods)
            if len(t_val):
                ax.axhline(t_val.mean(), color="0.35", ls=":", lw=1.6)
            if row == 0:
                ax.set_title(pair_label(pair))
                continue
            if len(t_val):
                ax.annotate(f"teacher {short(teacher)} (n={len(t_val)})", (0.02, t_val.mean()),
                            xycoords=("axes fraction", "data"), xytext=(0, 3), textcoords="offset points", fontsize=8,
                            color="0.3", va="bottom")  # fmt: skip
            _zoom(ax, history, pd.concat(series.values()), t_val, max(int(last * (1 - zoom_fraction)), 1), last)
            ax.set_xlabel("epoch")
        axes[0, j].set_xlabel("")
    axes[0, 0].set_ylabel("val accuracy (%)")
    axes[1, 0].set_ylabel(f"val accuracy (%)\nlast {int(zoom_fraction * 100)}% of epochs")
    for ax in axes.ravel():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    handles = [
        Line2D([], [], color=method_style(m, methods)[0], ls=method_style(m, methods)[1], lw=2, label=method_label(m))
        for m in ("baseline", *methods)
    ]
    handles.append(Line2D([], [], color="0.35", ls=":", lw=2, label="teacher best val acc"))
    fig.legend(handles=handles, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.04))
    fig.text(0.5, -0.02, "lines: mean over seeds; bands: \u00b1 1 std", ha="center", fontsize=9, color="0.25")
    fig.tight_layout()
    return save_figure(fig, pdf_path)


FIDELITY_PANELS = (("agreement", "top-1 agreement with teacher (%)"), ("kl_t1", "KL(teacher \u2016 student), T = 1"))


def _fidelity_means(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of agreement and KL at T=1 per ``keys`` (columns ``agreement_mean``, ...)."""
    agg = df.groupby(keys)[["agreement", "kl_t1"]].agg(["mean", "std"]).reset_index()
    agg.columns = ["_".join(c).rstrip("_") for c in agg.columns]
    return agg


def _draw_fidelity_panel(
    ax: plt.Axes,
    kd: pd.DataFrame,
    control: pd.DataFrame | None,
    column: str,
    methods: list[str],
    styles: dict[str, tuple[str, str]],
) -> None:
    """One student's panel of ``column``: each KD cell at its gain (95% CI) and its mean (std over seeds),
    coloured by teacher and filled by method; the baseline controls at gain 0 in grey."""
    ax.axvline(0, color="0.2", lw=1.0)
    for _, r in kd.iterrows():
        colour, marker = styles[r["teacher"]]
        xerr = [[r["gain"] - r["ci_low"]], [r["ci_high"] - r["gain"]]] if pd.notna(r["ci_low"]) else None
        yerr = None if pd.isna(r[f"{column}_std"]) else r[f"{column}_std"]
        face = marker_face(methods.index(r["method"]), colour)
        style = {"ms": 10, "mec": colour, "mew": 2.0, "capsize": 3, "lw": 1.0, "elinewidth": 0.9, "alpha": 0.9}
        ax.errorbar(r["gain"], r[f"{column}_mean"], xerr=xerr, yerr=yerr, fmt=marker, color=colour, **face, **style,
                    zorder=3)  # fmt: skip
    for _, r in control.iterrows() if control is not None else ():
        _, marker = styles[r["teacher"]]
        yerr = None if pd.isna(r[f"{column}_std"]) else r[f"{column}_std"]
        ax.errorbar(0, r[f"{column}_mean"], yerr=yerr, fmt=marker, ms=10, color="0.45", mfc="0.8", mec="0.3",
                    capsize=3, zorder=2)  # fmt: skip


def _fidelity_legend(
    fig: plt.Figure, styles: dict[str, tuple[str, str]], methods: list[str], control: list[str]
) -> None:
    """Teachers by colour and marker, methods by fill (shown on each teacher's marker, as drawn), and the
    control in grey with the marker of each teacher it is measured against."""
    handles: list[Any] = [
        Line2D([], [], ls="", marker=marker, ms=9, color=colour, mec=colour, mew=2.0, label=f"teacher {short(t)}")
        for t, (colour, marker) in styles.items()
    ]
    labels = [h.get_label() for h in handles]
    for i, m in enumerate(methods):
        fill = METHOD_FILLS[i % len(METHOD_FILLS)]
        handles.append(
            tuple(
                Line2D([], [], ls="", marker=marker, ms=9, color="0.3", mec="0.3", mew=2.0, **marker_face(i, "0.3"))
                for _, marker in styles.values()
            )
        )
        labels.append(f"{method_label(m)} ({fill[1]})")
    if control:
        grey = {"ls": "", "ms": 9, "color": "0.45", "mfc": "0.8", "mec": "0.3"}
        handles.append(tuple(Line2D([], [], marker=styles[t][1], **grey) for t in control))
        labels.append("baseline vs teacher (control)")
    fig.legend(handles, labels, loc="upper center", ncol=min(len(handles), 4), bbox_to_anchor=(0.5, 1.07),
               fontsize=9, handler_map={tuple: HandlerTuple(ndivide=None)})  # fmt: skip


def plot_fidelity(comparisons: pd.DataFrame, fidelity_table: pd.DataFrame, pdf_path: str | Path) -> list[Path]:
    """Top-1 agreement with the teacher and KL(teacher||student) at T=1 against the KD gain, one column per
    student; baseline students measured against the same teachers are the control, drawn at gain 0 in grey."""
    _style()
    control_rows = fidelity_table["control"].astype(bool) if not fidelity_table.empty else None
    kd = fidelity_table[~control_rows] if control_rows is not None else fidelity_table
    ctl = fidelity_table[control_rows] if control_rows is not None else fidelity_table
    if kd.empty or comparisons.empty:
        fig, ax = plt.subplots(figsize=(6, 3))
        _empty(ax, "no fidelity measurements")
        return save_figure(fig, pdf_path)
    agg = _fidelity_means(kd, ["pair", "teacher", "student", "method"]).merge(
        comparisons[["pair", "method", "gain", "ci_low", "ci_high"]], on=["pair", "method"], how="left"
    )
    cagg = _fidelity_means(ctl, ["pair", "teacher", "student"]) if not ctl.empty else None
    methods = kd_methods(agg)
    styles = teacher_styles(set(agg["teacher"]) | (set(cagg["teacher"]) if cagg is not None else set()))
    students = sorted(agg["student"].unique(), key=arch_sort_key)
    fig, axes = plt.subplots(
        2, len(students), figsize=(5.0 * len(students), 7.4), sharey="row", sharex=True, squeeze=False
    )
    for j, student in enumerate(students):
        control = cagg[cagg["student"] == student] if cagg is not None else None
        for i, (column, label) in enumerate(FIDELITY_PANELS):
            ax = axes[i, j]
            _draw_fidelity_panel(ax, agg[agg["student"] == student], control, column, methods, styles)
            if i == 0:
                ax.set_title(f"student {short(student)}")
            else:
                ax.set_xlabel("KD gain over baseline (pp), \u00b1 95% CI")
            if j == 0:
                ax.set_ylabel(label)
    controls = sorted(set(cagg["teacher"]) & set(styles), key=arch_sort_key) if cagg is not None else []
    _fidelity_legend(fig, styles, methods, controls)
    note = "vertical bars: \u00b1 1 std over seeds; horizontal bars: 95% CI of the gain"
    if cagg is None:
        note += "\nno baseline-vs-teacher control measurements in these data"
    fig.text(0.5, -0.04, note, ha="center", fontsize=9, color="0.25")
    fig.tight_layout()
    return save_figure(fig, pdf_path)


def plot_stem_ablation(
    runs: pd.DataFrame, stem_stats: pd.DataFrame, pdf_path: str | Path, metric: str = "test_best"
) -> list[Path]:
    """Test accuracy per architecture with the CIFAR and the ImageNet stem (seeds as dots, mean as a bar
    marker), annotated with the CIFAR - ImageNet difference and its 95% CI."""
    _style()
    arms = {a: v for a, v in stem_arms(runs).items() if not (v[0].empty and v[1].empty)}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if not arms:
        _empty(ax, "no stem-ablation runs")
        return save_figure(fig, pdf_path)
    archs = sorted(arms, key=arch_sort_key)
    st = pd.concat([pd.concat(v) for v in arms.values()])
    for i, arch in enumerate(archs):
        for k, stem in enumerate(("cifar", "imagenet")):
            colour, marker, _ = STEM_STYLE[stem]
            v = arms[arch][k][metric].to_numpy()
            if v.size == 0:
                continue
            x = i + (k - 0.5) * 0.36
            jitter = np.linspace(-0.05, 0.05, v.size) if v.size > 1 else np.zeros(1)
            ax.scatter(x + jitter, v, color=colour, marker=marker, s=40, edgecolor="black", lw=0.5, zorder=3)
            ax.hlines(v.mean(), x - 0.13, x + 0.13, color=colour, lw=3, zorder=2)
        r = stem_stats[stem_stats["student"] == arch] if not stem_stats.empty else stem_stats
        if not r.empty and pd.notna(r["diff"].iloc[0]):
            r = r.iloc[0]
            ci = f"\n[{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if pd.notna(r["ci_low"]) else "\n(1 seed: no CI)"
            top = st[st["student"] == arch][metric].max()
            ax.text(i, top + 0.6, f"\u0394 = {r['diff']:+.2f} pp{ci}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(archs)))
    epochs = st.groupby("student")["epochs"].max()
    ep_note = epochs.nunique() > 1
    ax.set_xticklabels(
        [f"{short(a)}\n(n={len(arms[a][1])} per stem" + (f", {int(epochs[a])} ep)" if ep_note else ")") for a in archs]
    )
    lo, hi = st[metric].min(), st[metric].max()
    ax.set_ylim(lo - 1.0, hi + 2.2)
    ax.set_ylabel("test accuracy (%)")
    handles = [
        Line2D(
            [], [], ls="", marker=STEM_STYLE[s][1], color=STEM_STYLE[s][0], mec="black", ms=8, label=STEM_STYLE[s][2]
        )
        for s in ("cifar", "imagenet")
    ]
    ax.legend(handles=handles, loc="center", bbox_to_anchor=(0.42, 0.5), fontsize=9)
    ax.set_title("Stem ablation (no teacher)")
    fig.text(
        0.5,
        -0.03,
        "dots: seeds; bars: mean; \u0394: CIFAR minus ImageNet stem, 95% Welch CI",
        ha="center",
        fontsize=9,
        color="0.25",
    )
    fig.tight_layout()
    return save_figure(fig, pdf_path)


ClipArm = tuple[str, pd.DataFrame, Any, str]  # (label, runs, colour, marker)


def _draw_clip_accuracy(ax: plt.Axes, arms: list[ClipArm], stats_row: pd.Series, metric: str) -> None:
    """Panel (a): each arm's runs (jittered points) and mean, titled with the pair and method, and the
    corrected-minus-bugged difference with its Welch CI and p below."""
    for i, (_label, df, colour, marker) in enumerate(arms):
        v = df[metric].to_numpy()
        if v.size == 0:
            continue
        jitter = np.linspace(-0.08, 0.08, v.size) if v.size > 1 else np.zeros(1)
        ax.scatter(i + jitter, v, color=colour, marker=marker, s=45, edgecolor="black", lw=0.5, zorder=3)
        ax.hlines(v.mean(), i - 0.2, i + 0.2, color=colour, lw=3)
    ax.set_xticks([0, 1])
    ax.set_xticklabels([a[0] for a in arms])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel("test accuracy (%)")
    r = stats_row
    ci = (
        f", 95% CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], Welch p = {r['p_welch']:.2f}"
        if pd.notna(r.get("ci_low"))
        else ""
    )
    diff = f"corrected \u2212 bugged = {r['diff']:+.2f} pp" if pd.notna(r.get("diff")) else ""
    ax.set_title(f"{pair_label(r['pair'])} {method_label(r['method'])}", fontsize=11)
    ax.text(0.5, -0.28, diff + ci, transform=ax.transAxes, ha="center", fontsize=9, color="0.25")


def _draw_projection_norms(ax: plt.Axes, arms: list[ClipArm], history: pd.DataFrame, clip_norm: pd.Series) -> None:
    """Panel (b): each arm's maximum pre-clip projection gradient norm per epoch (mean \u00b1 std over seeds)
    and the clip threshold; says which arm did not record it."""
    drawn = []
    for label, df, colour, marker in arms:
        c = _curve(history, df["run_id"], "proj_grad_norm_max")
        c = c[c["mean"].notna()]
        if c.empty:
            continue
        style = {"color": colour, "lw": 1.5, "marker": marker, "markevery": max(len(c) // 10, 1)}
        ax.plot(c["epoch"], c["mean"], **style, label=label.replace("\n", " "))
        if c["count"].max() > 1:
            ax.fill_between(c["epoch"], c["mean"] - c["std"], c["mean"] + c["std"], color=colour, alpha=0.2, lw=0)
        drawn.append(label)
    ax.set_title("Projection gradient norm per epoch (mean \u00b1 std)", fontsize=11)
    if not drawn:
        _empty(ax, "projection gradient norms not recorded")
        return
    if len(clip_norm):
        threshold = float(clip_norm.iloc[0])
        ax.axhline(threshold, color="0.2", ls="--", lw=1.2, label=f"clip threshold ({threshold:g})")
    ax.legend(loc="best", fontsize=9)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_ylabel("max pre-clip projection grad norm")
    ax.set_ylim(bottom=0)
    missing = [a[0].split("\n")[0] for a in arms if a[0] not in drawn]
    if missing:
        ax.text(0.98, 0.04, f"not recorded for the {' / '.join(missing)} arm", transform=ax.transAxes, ha="right",
                fontsize=9, color="0.3")  # fmt: skip


def plot_clip_ablation(
    runs: pd.DataFrame, history: pd.DataFrame, clip_stats: pd.DataFrame, pdf_path: str | Path, metric: str = "test_best"
) -> list[Path]:
    """(a) test accuracy of the bugged arm (projection gradients not clipped) and the corrected arm;
    (b) maximum pre-clip projection gradient norm per epoch (mean \u00b1 std over seeds)."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    if clip_stats.empty:
        for ax in axes:
            _empty(ax, "no clip-ablation runs")
        return save_figure(fig, pdf_path)
    r = clip_stats.iloc[0]
    same_cell = (runs["pair"] == r["pair"]) & (runs["method"] == r["method"])
    bug = runs[(runs["stage"] == "clip") & same_cell]
    fix = runs[(runs["stage"] == "final") & same_cell & (runs["clip_scope"] == "all")]
    arms = [
        ("bugged\n(student-only clip)", bug, OKABE_ITO["vermillion"], "s"),
        ("corrected\n(clip all params)", fix, OKABE_ITO["blue"], "o"),
    ]
    _draw_clip_accuracy(axes[0], arms, r, metric)
    clip_norm = pd.concat([bug, fix]).get("clip_norm", pd.Series(dtype=float)).dropna()
    _draw_projection_norms(axes[1], arms, history, clip_norm)
    fig.tight_layout()
    return save_figure(fig, pdf_path)


FIGURES = tuple(FIGURE_READS)  # the names, from the one list in kdcore.analysis.outputs


def write_figure(name: str, inputs: dict[str, Any], pdf_path: str | Path, metric: str = "test_best") -> list[Path]:
    """Draw figure ``name`` (one of :data:`FIGURES`) from a job's named input files (runs, history, fidelity,
    comparisons, moderation, stem_ablation, clip_ablation: kdcore.analysis.outputs.FIGURES; read by
    kdcore.analysis.table.read_inputs) into ``pdf_path`` and the PNG beside it (:func:`save_figure`)."""
    if name not in FIGURES:
        raise ConfigError(f"figure {name!r} is not one of {', '.join(FIGURES)}")
    t = read_inputs(inputs)
    label = {"test_best": "test acc @ best val", "test_final": "final test acc", "val_acc": "best val acc"}.get(
        metric, metric
    )
    if name == "gain_vs_capacity":
        points, cells = gain_points(t["runs"], metric), gain_cells(t["runs"], metric)
        return plot_gain_vs_capacity(points, cells, t["moderation"], pdf_path, label)
    if name == "convergence":
        return plot_convergence(t["runs"], t["history"], pdf_path)
    if name == "fidelity":
        return plot_fidelity(t["comparisons"], t["fidelity"], pdf_path)
    if name == "stem_ablation":
        return plot_stem_ablation(t["runs"], t["stem_ablation"], pdf_path, metric)
    return plot_clip_ablation(t["runs"], t["history"], t["clip_ablation"], pdf_path, metric)
