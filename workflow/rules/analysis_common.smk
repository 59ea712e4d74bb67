# Helpers of the results stage (analysis.smk): its output names, the runs of each part of the study and the
# optional `analysis` config keys. Functions and constants only (Snakemake's linter wants rule files free of
# function definitions). The output names and what each output reads come from kdcore.analysis.outputs.
# Uses from common.smk: teacher_metrics(), baseline_metrics(), select_metrics(), final_metrics(),
# stem_metrics(), clip_metrics(), clip_runs(), run_dir(), fidelity_checks(); with analysis.runs_from:
# reference it replaces common.smk's study_targets() (default target) by analysis_targets().

import json
from pathlib import Path

from kdcore.runfolder import TEST_LOGITS_FILE

from kdcore.analysis.outputs import (
    FIGURES as ANALYSIS_FIGURE_READS,
    LOGIT_TABLES as ANALYSIS_LOGIT_READS,
    PARTS as ANALYSIS_PARTS,
    STAT_TABLES as ANALYSIS_STAT_PARTS,
    TEX_TABLES as ANALYSIS_TEX_READS,
    available as _available_outputs,
    available_stat_tables as _available_stat_tables,
)


def analysis_setting(key: str, default):
    """A key of the optional ``analysis`` section of the config."""
    return (config.get("analysis") or {}).get(key, default) or default


def analysis_runs_from() -> str:
    """``train`` (the study's own runs under results/runs) or ``reference`` (an analysis-only study of the
    runs imported from analysis.reference_zip: no training job, outputs under results/paper)."""
    return analysis_setting("runs_from", "train")


def reference_zip() -> str | None:
    return (config.get("analysis") or {}).get("reference_zip") or None


# (an analysis-only study without analysis.reference_zip is refused by kdcore.config.validate_study_config)
ANALYSIS_FROM_REFERENCE = analysis_runs_from() == "reference"
# An analysis-only study writes beside a trained one, not over it.
ANALYSIS_ROOT = "results/paper" if ANALYSIS_FROM_REFERENCE else "results"
ANALYSIS_TABLES = f"{ANALYSIS_ROOT}/tables"
ANALYSIS_PART_TABLES = f"{ANALYSIS_ROOT}/tables/parts"
ANALYSIS_FIGURES = f"{ANALYSIS_ROOT}/figures"
ANALYSIS_LOGS = f"{ANALYSIS_ROOT}/logs/analysis"
ANALYSIS_BENCHMARKS = f"{ANALYSIS_ROOT}/benchmarks/analysis"
ANALYSIS_REFERENCE = "results/reference"
ANALYSIS_FIGURE_NAMES = list(ANALYSIS_FIGURE_READS)
ANALYSIS_TEX_TABLES = list(ANALYSIS_TEX_READS)


def analysis_metric() -> str:
    return analysis_setting("metric", "test_best")


def analysis_min_effect_pp() -> float:
    """Smallest effect of interest (pp) for the a priori design figures (schema default 0.2)."""
    return float(analysis_setting("min_effect_pp", 0.2))


def summary_report_labels(wildcards, output) -> dict[str, str]:
    """Report labels of summary.json, read when the report is built: its warnings (``notes``, e.g. a teacher
    that does not beat its student's baseline), so that they show in the report beside the file."""
    notes = json.loads(Path(output.summary).read_text())["notes"]
    return {"warnings": " | ".join(notes) if notes else "none"}


# ----------------------------------------------------------------------------- parts of the study
def clip_final_metrics() -> list[str]:
    """The corrected arm of the clip ablation: final KD runs of each of its (pair, method)."""
    arms = {(t, s, m) for t, s, m, _ in clip_runs()}
    prefixes = tuple(run_dir("final", teacher=t, student=s, method=m, seed="") for t, s, m in arms)
    return [p for p in final_metrics() if prefixes and p.startswith(prefixes)]


def analysis_part_files(part: str) -> dict[str, list]:
    """The inputs of one part's run tables (kdcore.analysis.outputs.PARTS): its metrics.json files
    (``metrics``), and for the fidelity part the fidelity comparisons (``checks``, common.smk's
    fidelity_checks()) with the test-logits files they read (``logits``)."""
    checks = fidelity_checks() if part == "fidelity" else []
    metrics = {
        "teachers": teacher_metrics,
        "kd": lambda: baseline_metrics() + final_metrics(),
        "selection": lambda: select_metrics() + final_metrics(),
        "fidelity": lambda: [check["run"] for check in checks],
        "stem": stem_metrics,
        "clip": lambda: clip_metrics() + clip_final_metrics(),
    }[part]()
    return {"metrics": list(dict.fromkeys(metrics)), "checks": checks, "logits": fidelity_logits(checks)}


def fidelity_logits(checks: list[dict[str, str]]) -> list[str]:
    """The test-logits files that the fidelity comparisons ``checks`` read: each student run's and its teacher
    run's (once each)."""
    files = [
        f for check in checks for f in (str(Path(check["run"]).parent / TEST_LOGITS_FILE), check["teacher_logits"])
    ]
    return list(dict.fromkeys(files))


def analysis_parts() -> set[str]:
    """The parts this study has: an optional part (selection, fidelity, an ablation) that the config
    disables has no runs, hence no tables or figures. The imported runs have every part (the importer
    refuses a zip that lacks any run of the paper's layout)."""
    if ANALYSIS_FROM_REFERENCE:
        return set(ANALYSIS_PARTS)
    optional = {"selection": select_metrics, "fidelity": fidelity_checks, "stem": stem_metrics, "clip": clip_metrics}
    return {"teachers", "kd"} | {part for part, runs in optional.items() if runs()}


def part_table(part: str, kind: str) -> str:
    """runs.csv, history.csv or fidelity.csv (``kind``) of one part."""
    return f"{ANALYSIS_PART_TABLES}/{part}/{kind}.csv"


def analysis_reads(kind: str, name: str) -> dict[str, list[str]]:
    """Named inputs of one figure or LaTeX table (``kind``: figure | table): the tables it is drawn from.
    An output drawn from a part that this study leaves out is an error naming the part."""
    reads = (ANALYSIS_FIGURE_READS if kind == "figure" else ANALYSIS_TEX_READS)[name]
    missing = [p for p in reads.parts() if p not in analysis_parts()]
    if missing:
        raise ValueError(
            f"{kind} {name!r} is drawn from the {', '.join(missing)} part of the study, which the config "
            "disables (selection.enabled, fidelity, ablations)"
        )
    inputs = {"runs": [part_table(p, "runs") for p in reads.runs]}
    if reads.history:
        inputs["history"] = [part_table(p, "history") for p in reads.runs]
    if reads.fidelity:
        inputs["fidelity"] = [part_table("fidelity", "fidelity")]
    for stat in reads.stats:
        inputs[stat] = [f"{ANALYSIS_TABLES}/{stat}.csv"]
    return inputs


# ----------------------------------------------------------------------------- targets
def analysis_figures() -> list[str]:
    return _available_outputs(ANALYSIS_FIGURE_READS, analysis_parts())


def analysis_tex_tables() -> list[str]:
    return _available_outputs(ANALYSIS_TEX_READS, analysis_parts())


def analysis_stat_tables() -> list[str]:
    return _available_stat_tables(analysis_parts())


def analysis_logit_tables() -> list[str]:
    """The tables drawn from stored test logits (kdcore.analysis.outputs.LOGIT_TABLES): a trained study's runs
    keep their test logits, the runs imported from the paper's zip do not, so an analysis-only study has none.
    The audit table only when the study records test accuracy per epoch (audit.test_every_epoch)."""
    if ANALYSIS_FROM_REFERENCE:
        return []
    names = _available_outputs(ANALYSIS_LOGIT_READS, analysis_parts())
    audit = bool((config.get("audit") or {}).get("test_every_epoch", False))
    return [name for name in names if name != "audit" or audit]


def logit_table_inputs(name: str) -> dict[str, list[str]]:
    """Named inputs of a logit table: the runs.csv (and for the audit the history.csv) of the parts it reads."""
    reads = ANALYSIS_LOGIT_READS[name]
    inputs = {"runs": [part_table(p, "runs") for p in reads.runs]}
    if reads.history:
        inputs["history"] = [part_table(p, "history") for p in reads.runs]
    return inputs


def analysis_targets(wildcards=None) -> list[str]:
    """Every output of the results stage this study has: the whole-study run table and summary, the
    statistics tables, figures and LaTeX tables of its parts, the comparison when a reference is set."""
    out = [f"{ANALYSIS_TABLES}/runs.csv", f"{ANALYSIS_TABLES}/summary.json"]
    out += [f"{ANALYSIS_TABLES}/{name}.csv" for name in analysis_stat_tables()]
    out += [f"{ANALYSIS_FIGURES}/{name}.{ext}" for name in analysis_figures() for ext in ("pdf", "png")]
    out += [f"{ANALYSIS_TABLES}/{name}.tex" for name in analysis_tex_tables()]
    out += [f"{ANALYSIS_TABLES}/{name}.{ext}" for name in analysis_logit_tables() for ext in ("csv", "tex")]
    if reference_zip() and not ANALYSIS_FROM_REFERENCE:
        out += [f"{ANALYSIS_TABLES}/comparison.csv", f"{ANALYSIS_TABLES}/comparison.tex"]
    return out


# An analysis-only study trains nothing: its default target is the analysis outputs alone, not the runs
# and winners that study_targets() (common.smk) adds for a trained study.
if ANALYSIS_FROM_REFERENCE:
    study_targets = analysis_targets


def method_catalog() -> dict | None:
    """Labels of the study's methods and the run table's hyper-parameter columns (those its grids and fixed
    settings set), read from the method declarations for the analysis jobs, which run without torch
    (kdcore.analysis.methods)."""
    from kdcore.methods import describe_methods

    if "methods" not in config:  # an analysis-only Snakefile without a study: jobs use kdcore.methods itself
        return None
    if "catalog" not in _METHOD_CATALOG:
        shown = {
            m: list(dict.fromkeys([*spec["grid"], *(spec.get("fixed") or {})])) for m, spec in config["methods"].items()
        }
        _METHOD_CATALOG["catalog"] = describe_methods(shown)
    return _METHOD_CATALOG["catalog"]


_METHOD_CATALOG: dict = {}
