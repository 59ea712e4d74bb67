# Results stage: tidy run table -> statistics -> figures / LaTeX tables -> paper-vs-reproduction.
# Uses from common.smk: all_run_metrics(), all_fidelity_files(), code_digest(); from analysis_common.smk
# analysis_targets(), analysis_metric(), reference_zip() and the output names. Optional config keys
# (docs/design.md, "Analysis API"): analysis.metric (test_best | test_final | val_acc, default test_best),
# analysis.reference_zip (path of the paper's results zip; the comparison runs only when it is set).
# Every rule is CPU-only and light; plotting code is hashed apart from the statistics so that a plotting
# edit re-runs only figure jobs.


wildcard_constraints:
    figure="|".join(ANALYSIS_FIGURE_NAMES),


rule analysis_run_table:
    input:
        metrics=all_run_metrics,
        fidelity=all_fidelity_files,
    output:
        runs=report(f"{ANALYSIS_TABLES}/runs.csv", caption="../report/runs.rst", category="Tables"),
        fidelity=f"{ANALYSIS_TABLES}/fidelity.csv",
        history=f"{ANALYSIS_TABLES}/history.csv",
    log:
        "results/logs/analysis/run_table.log",
    benchmark:
        "results/benchmarks/analysis/run_table.tsv"
    conda:
        "../envs/kdcore.yaml"
    params:
        code=code_digest("kdcore.analysis.table", scripts=("analysis_table.py", "_common.py")),
    script:
        "../scripts/analysis_table.py"


rule analysis_stats:
    input:
        runs=f"{ANALYSIS_TABLES}/runs.csv",
    output:
        summary=f"{ANALYSIS_TABLES}/summary.json",
        cells=f"{ANALYSIS_TABLES}/cells.csv",
        comparisons=report(f"{ANALYSIS_TABLES}/comparisons.csv", caption="../report/comparisons.rst", category="Tables"),
        selection=report(f"{ANALYSIS_TABLES}/selection.csv", caption="../report/selection.rst", category="Tables"),
        stem_ablation=f"{ANALYSIS_TABLES}/stem_ablation.csv",
        clip_ablation=f"{ANALYSIS_TABLES}/clip_ablation.csv",
    log:
        "results/logs/analysis/stats.log",
    benchmark:
        "results/benchmarks/analysis/stats.tsv"
    conda:
        "../envs/kdcore.yaml"
    params:
        metric=analysis_metric(),
        code=code_digest("kdcore.analysis.stats", "kdcore.analysis.table", scripts=("analysis_stats.py", "_common.py")),
    script:
        "../scripts/analysis_stats.py"


rule analysis_figure:
    input:
        runs=f"{ANALYSIS_TABLES}/runs.csv",
        history=f"{ANALYSIS_TABLES}/history.csv",
        fidelity=f"{ANALYSIS_TABLES}/fidelity.csv",
        comparisons=f"{ANALYSIS_TABLES}/comparisons.csv",
        stem_ablation=f"{ANALYSIS_TABLES}/stem_ablation.csv",
        clip_ablation=f"{ANALYSIS_TABLES}/clip_ablation.csv",
    output:
        pdf=f"{ANALYSIS_FIGURES}/{{figure}}.pdf",
        png=report(
            f"{ANALYSIS_FIGURES}/{{figure}}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels=lambda w: {"figure": w.figure},
        ),
    log:
        "results/logs/analysis/figure-{figure}.log",
    benchmark:
        "results/benchmarks/analysis/figure-{figure}.tsv"
    conda:
        "../envs/kdcore.yaml"
    params:
        figure=lambda w: w.figure,
        metric=analysis_metric(),
        code=code_digest("kdcore.analysis.figures", scripts=("analysis_figure.py", "_common.py")),
    script:
        "../scripts/analysis_figure.py"


rule analysis_latex:
    input:
        runs=f"{ANALYSIS_TABLES}/runs.csv",
        fidelity=f"{ANALYSIS_TABLES}/fidelity.csv",
        cells=f"{ANALYSIS_TABLES}/cells.csv",
        comparisons=f"{ANALYSIS_TABLES}/comparisons.csv",
        selection=f"{ANALYSIS_TABLES}/selection.csv",
        stem_ablation=f"{ANALYSIS_TABLES}/stem_ablation.csv",
        clip_ablation=f"{ANALYSIS_TABLES}/clip_ablation.csv",
    output:
        [
            report(
                f"{ANALYSIS_TABLES}/{name}.tex",
                caption="../report/latex.rst",
                category="LaTeX tables",
                labels={"table": name},
            )
            for name in ANALYSIS_TEX_TABLES
        ],
    log:
        "results/logs/analysis/latex.log",
    benchmark:
        "results/benchmarks/analysis/latex.tsv"
    conda:
        "../envs/kdcore.yaml"
    params:
        metric=analysis_metric(),
        code=code_digest("kdcore.analysis.latex", "kdcore.analysis.stats", scripts=("analysis_latex.py", "_common.py")),
    script:
        "../scripts/analysis_latex.py"


rule analysis_reference:
    input:
        zip=lambda w: reference_zip() or [],
    output:
        runs_dir=directory(f"{ANALYSIS_REFERENCE}/runs"),
        runs=f"{ANALYSIS_REFERENCE}/tables/runs.csv",
        fidelity=f"{ANALYSIS_REFERENCE}/tables/fidelity.csv",
        history=f"{ANALYSIS_REFERENCE}/tables/history.csv",
    log:
        "results/logs/analysis/reference.log",
    benchmark:
        "results/benchmarks/analysis/reference.tsv"
    conda:
        "../envs/kdcore.yaml"
    params:
        code=code_digest("kdcore.reference", "kdcore.analysis.table", scripts=("analysis_reference.py", "_common.py")),
    script:
        "../scripts/analysis_reference.py"


rule analysis_comparison:
    input:
        ours=f"{ANALYSIS_TABLES}/runs.csv",
        paper=f"{ANALYSIS_REFERENCE}/tables/runs.csv",
    output:
        csv=report(f"{ANALYSIS_TABLES}/comparison.csv", caption="../report/comparison.rst", category="Tables"),
        tex=f"{ANALYSIS_TABLES}/comparison.tex",
    log:
        "results/logs/analysis/comparison.log",
    benchmark:
        "results/benchmarks/analysis/comparison.tsv"
    conda:
        "../envs/kdcore.yaml"
    params:
        metric=analysis_metric(),
        code=code_digest(
            "kdcore.analysis.compare", "kdcore.analysis.latex", scripts=("analysis_compare.py", "_common.py")
        ),
    script:
        "../scripts/analysis_compare.py"
