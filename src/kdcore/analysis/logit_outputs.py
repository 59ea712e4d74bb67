"""CSV and LaTeX outputs of the tables drawn from stored test logits and audit history
(kdcore.analysis.logit_tables; their names and the parts they read: kdcore.analysis.outputs.LOGIT_TABLES).
Each output is one job: the CSV and its booktabs table, written from the run (and history) tables of its parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from kdcore.analysis import logit_tables as lt
from kdcore.analysis.latex import _styled, num, pair_tex, pval, short
from kdcore.analysis.methods import method_tex
from kdcore.analysis.outputs import LOGIT_TABLES
from kdcore.analysis.table import read_tables, write_table
from kdcore.atomic import atomic_write_text
from kdcore.errors import ConfigError

NO_LOGITS = "no run of this part has a test-logits file"


def _empty(label: str, caption: str, why: str = NO_LOGITS) -> str:
    return _styled(pd.DataFrame({"Table": ["--"], "Note": [why]}), None, f"{caption}: {why}.", label)


def _cell_name(row: pd.Series) -> str:
    if row["stage"] == "final":
        return f"{pair_tex(row['pair'])} {method_tex(row['method'])}"
    return f"{short(row['student'])} ({row['stage']})"


def tex_paired_images(table: pd.DataFrame) -> str:
    """Fixed / broken images of each KD run against its seed's baseline run, per-seed McNemar and pooled p."""
    caption = "Per-image paired comparison of KD with the baseline of the same student and seed"
    if table.empty:
        return _empty("tab:paired_images", caption)
    df = pd.DataFrame(
        {
            "Pair": [pair_tex(p) for p in table["pair"]],
            "Method": [method_tex(m) for m in table["method"]],
            "Seed": [str(s) for s in table["seed"]],
            "Fixed": table["fixed"].astype(int).astype(str),
            "Broken": table["broken"].astype(int).astype(str),
            "Net (pp)": [num(100 * n / t) for n, t in zip(table["net_fixed"], _images(table), strict=True)],
            "p": [pval(p) for p in table["p_exact"]],
            "p (Holm)": [pval(p) for p in table["p_holm"]],
        }
    )
    note = (
        "Fixed: baseline wrong, KD right; broken: the reverse. Per seed: McNemar's exact test (the test set's "
        "randomness, models fixed). Pooled: exact conditional test of all discordant images stratified by seed, "
        "Holm over the pooled rows; it assumes discordant images independent across seeds."
    )
    return _styled(df, None, caption + ".", "tab:paired_images", "llcrrrrr", note)


def _images(table: pd.DataFrame) -> pd.Series:
    return table[["both_right", "fixed", "broken", "both_wrong"]].sum(axis=1)


def tex_variance(table: pd.DataFrame) -> str:
    """Run-to-run SD of each cell with its finite-test-set and seed parts."""
    caption = "Run-to-run SD of test accuracy split into the finite test set and the seeds (Jordan, 2023)"
    if table.empty:
        return _empty("tab:variance", caption, "no cell with 2 runs that have test-logits files")
    df = pd.DataFrame(
        {
            "Cell": [_cell_name(r) for _, r in table.iterrows()],
            "Runs": table["runs"].astype(int).astype(str),
            "Mean (\\%)": [num(v) for v in table["mean_pp"]],
            "SD (pp)": [num(v, "{:.3f}") for v in table["sd_pp"]],
            "Test-set SD (pp)": [num(v, "{:.3f}") for v in table["sd_test_set_pp"]],
            "Seed SD (pp)": [num(v, "{:.3f}") for v in table["sd_seed_pp"]],
            "Test-set share": [num(100 * v, "{:.0f}\\%") for v in table["test_set_share"]],
        }
    )
    note = (
        "Test-set part: $\\sum_i p_i(1-p_i)/N^2$ with $p_i$ each image's rate of correct runs (unbiased); seed "
        "part: the rest (0 when the estimate is negative), what an infinite test set would keep."
    )
    return _styled(df, None, caption + ".", "tab:variance", "lrrrrrr", note)


def tex_ensembles(table: pd.DataFrame) -> str:
    """Seed ensembles and teacher+student ensembles as context rows."""
    caption = "Ensembles from stored test logits (context, not part of the KD comparison)"
    if table.empty:
        return _empty("tab:ensembles", caption)
    kinds = {"seed_ensemble": "seeds", "teacher_student": "teacher + each run"}
    df = pd.DataFrame(
        {
            "Cell": [_cell_name(r) for _, r in table.iterrows()],
            "Ensemble": [kinds[k] + (f" ({short(t)})" if t else "") for k, t in _kinds(table)],
            "Runs": table["members"].astype(int).astype(str),
            "Ensemble acc (\\%)": [num(v) for v in table["ensemble_acc"]],
            "Single runs (\\%)": [num(v) for v in table["mean_member_acc"]],
            "Gain (pp)": [num(v, "{:+.2f}") for v in table["gain_pp"]],
        }
    )
    return _styled(df, None, caption + ": softmax probabilities averaged.", "tab:ensembles", "llrrrr")


def _kinds(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(kind, teacher named in the row's label: only for teacher+student ensembles) of each row."""
    return [(k, t if k == "teacher_student" else "") for k, t in zip(table["kind"], table["teacher"], strict=True)]


def tex_audit(table: pd.DataFrame) -> str:
    """Test accuracy under three protocols, with the optimism of best-on-test."""
    caption = "Protocol audit: test accuracy selected on validation (ours), at the last epoch and best on test"
    if table.empty:
        why = "no run recorded its test accuracy per epoch (audit.test\\_every\\_epoch)"
        return _empty("tab:audit", caption, why)

    def ci(row: pd.Series, name: str) -> str:
        low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
        bounds = f" [{low:.2f}, {high:.2f}]" if pd.notna(low) else ""
        return num(row[name]) + bounds

    rows = list(table.iterrows())
    df = pd.DataFrame(
        {
            "Cell": [_cell_name(r) for _, r in rows],
            "Runs": table["runs"].astype(int).astype(str),
            "Val-selected (\\%)": [ci(r, "val_selected") for _, r in rows],
            "Last epoch (\\%)": [ci(r, "last_epoch") for _, r in rows],
            "Best on test (\\%)": [ci(r, "best_on_test") for _, r in rows],
            "Optimism (pp)": [num(v, "{:+.2f}") for v in table["optimism_pp"]],
        }
    )
    note = "Means over seeds with 95\\% t-intervals; best on test reads the test set to choose the epoch."
    return _styled(df, None, caption + ".", "tab:audit", "lrrrrr", note)


#: name -> (table from (runs, history, metric), its LaTeX)
BUILDERS: dict[str, tuple[Callable[[pd.DataFrame, pd.DataFrame, str], pd.DataFrame], Callable[[pd.DataFrame], str]]]
BUILDERS = {
    "paired_images": (lambda runs, _, metric: lt.paired_image_table(runs, metric), tex_paired_images),
    "variance": (lambda runs, _, metric: lt.variance_table(runs, metric), tex_variance),
    "ensembles": (lambda runs, _, metric: lt.ensemble_table(runs, metric), tex_ensembles),
    "audit": (lambda runs, history, _: lt.audit_table(runs, history), tex_audit),
}


def logit_table(name: str, runs: pd.DataFrame, history: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """The table ``name`` (:data:`kdcore.analysis.outputs.LOGIT_TABLES`) from the run (and history) table."""
    if name not in BUILDERS or name not in LOGIT_TABLES:
        raise ConfigError(f"logit table {name!r} is not one of {', '.join(LOGIT_TABLES)}")
    return BUILDERS[name][0](runs, history if history is not None else pd.DataFrame(), metric)


def write_logit_table(
    name: str,
    runs_csvs: Sequence[str | Path],
    history_csvs: Sequence[str | Path],
    csv_path: str | Path,
    tex_path: str | Path,
    metric: str = "test_best",
) -> pd.DataFrame:
    """Build the table ``name`` from the runs.csv (and history.csv) files of its parts; write its CSV and its
    LaTeX table. Returns the table."""
    runs = read_tables(runs_csvs)
    history = read_tables(history_csvs) if history_csvs else None
    table = logit_table(name, runs, history, metric)
    write_table(table, csv_path)
    atomic_write_text(tex_path, BUILDERS[name][1](table))
    return table
