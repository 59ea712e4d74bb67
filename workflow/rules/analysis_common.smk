# Helpers of the results stage (analysis.smk): its output names and optional `analysis` config keys.
# Functions and constants only (Snakemake's linter wants rule files free of function definitions).

ANALYSIS_TABLES = "results/tables"
ANALYSIS_FIGURES = "results/figures"
ANALYSIS_REFERENCE = "results/reference"
ANALYSIS_FIGURE_NAMES = ["gain_vs_capacity", "convergence", "fidelity", "stem_ablation", "clip_ablation"]
ANALYSIS_STAT_TABLES = ["cells", "comparisons", "selection", "stem_ablation", "clip_ablation"]
ANALYSIS_TEX_TABLES = [
    "main_results",
    "kd_statistics",
    "teachers",
    "fidelity",
    "stem_ablation",
    "clip_ablation",
    "selection",
]


def analysis_setting(key: str, default):
    """A key of the optional ``analysis`` section of the config."""
    return (config.get("analysis") or {}).get(key, default) or default


def analysis_metric() -> str:
    return analysis_setting("metric", "test_best")


def reference_zip() -> str | None:
    return (config.get("analysis") or {}).get("reference_zip") or None


def analysis_targets(wildcards=None) -> list[str]:
    """Every output of the results stage (figures, statistics, LaTeX, comparison when a reference is set)."""
    out = [f"{ANALYSIS_TABLES}/summary.json"]
    out += [f"{ANALYSIS_FIGURES}/{name}.{ext}" for name in ANALYSIS_FIGURE_NAMES for ext in ("pdf", "png")]
    out += [f"{ANALYSIS_TABLES}/{name}.tex" for name in ANALYSIS_TEX_TABLES]
    if reference_zip():
        out += [f"{ANALYSIS_TABLES}/comparison.csv", f"{ANALYSIS_TABLES}/comparison.tex"]
    return out
