# Results stage: a run table per part of the study -> statistics tables -> figures / LaTeX tables, plus the
# whole study's run table and summary.json and the paper-vs-reproduction comparison.
# Each figure and LaTeX table reads only the tables it is drawn from (kdcore.analysis.outputs), so asking for
# one plans only the runs behind it. Uses from common.smk: all_run_metrics(), fidelity_checks(),
# code_digest(); from analysis_common.smk the output names, analysis_part_files(), analysis_reads(),
# analysis_metric() and reference_zip(). Optional config keys (docs/design.md, "Analysis API"):
# analysis.metric (test_best | test_final | val_acc, default test_best), analysis.reference_zip (path of the
# paper's results zip; the comparison runs only when it is set), analysis.min_effect_pp (smallest effect of
# interest for the a priori design figures of the comparisons, the moderation test and summary.json),
# analysis.runs_from (train | reference: analyse the runs imported from the zip instead, no training,
# outputs under results/paper; config/paper-runs.yaml).
# Every rule is CPU-only and light; plotting code is hashed apart from the statistics so that a plotting
# edit re-runs only figure jobs.


# A trained study builds its run tables from its runs' files; an analysis-only study (analysis.runs_from:
# reference) selects them from the imported runs' tables (kdcore.analysis.parts), so it plans no training.
if not ANALYSIS_FROM_REFERENCE:

    # Fidelity to the teacher comes from the runs' stored test logits (kdcore.fidelity): the comparisons are a
    # param (a changed list reruns the table), the logits files they read are inputs.
    rule analysis_run_table:
        input:
            metrics=all_run_metrics,
            logits=lambda w: fidelity_logits(fidelity_checks()),
        output:
            runs=report(f"{ANALYSIS_TABLES}/runs.csv", caption="../report/runs.rst", category="Tables"),
            fidelity=f"{ANALYSIS_TABLES}/fidelity.csv",
            history=f"{ANALYSIS_TABLES}/history.csv",
        log:
            f"{ANALYSIS_LOGS}/run_table.log",
        benchmark:
            f"{ANALYSIS_BENCHMARKS}/run_table.tsv"
        conda:
            "../envs/analysis.yaml"
        params:
            methods=lambda w: method_catalog(),
            fidelity=lambda w: json.dumps(fidelity_checks()),
            code=code_digest("kdcore.analysis.table", scripts=("analysis_table.py", "_common.py")),
        script:
            "../scripts/analysis_table.py"

    use rule analysis_run_table as analysis_part_table with:
        input:
            metrics=lambda w: analysis_part_files(w.part)["metrics"],
            logits=lambda w: analysis_part_files(w.part)["logits"],
        output:
            runs=f"{ANALYSIS_PART_TABLES}/{{part}}/runs.csv",
            fidelity=f"{ANALYSIS_PART_TABLES}/{{part}}/fidelity.csv",
            history=f"{ANALYSIS_PART_TABLES}/{{part}}/history.csv",
        log:
            f"{ANALYSIS_LOGS}/part-{{part}}.log",
        benchmark:
            f"{ANALYSIS_BENCHMARKS}/part-{{part}}.tsv"
        wildcard_constraints:
            part="|".join(ANALYSIS_PARTS),
        params:
            methods=lambda w: method_catalog(),
            fidelity=lambda w: json.dumps(analysis_part_files(w.part)["checks"]),
            code=code_digest("kdcore.analysis.table", scripts=("analysis_table.py", "_common.py")),

else:

    rule analysis_reference_study_table:
        input:
            runs=f"{ANALYSIS_REFERENCE}/tables/runs.csv",
            fidelity=f"{ANALYSIS_REFERENCE}/tables/fidelity.csv",
            history=f"{ANALYSIS_REFERENCE}/tables/history.csv",
        output:
            runs=report(f"{ANALYSIS_TABLES}/runs.csv", caption="../report/runs.rst", category="Tables"),
            fidelity=f"{ANALYSIS_TABLES}/fidelity.csv",
            history=f"{ANALYSIS_TABLES}/history.csv",
        log:
            f"{ANALYSIS_LOGS}/run_table.log",
        benchmark:
            f"{ANALYSIS_BENCHMARKS}/run_table.tsv"
        conda:
            "../envs/analysis.yaml"
        params:
            methods=lambda w: method_catalog(),
            part="",
            code=code_digest(
                "kdcore.analysis.parts", "kdcore.analysis.table", scripts=("analysis_reference_table.py", "_common.py")
            ),
        script:
            "../scripts/analysis_reference_table.py"

    use rule analysis_reference_study_table as analysis_reference_part_table with:
        output:
            runs=f"{ANALYSIS_PART_TABLES}/{{part}}/runs.csv",
            fidelity=f"{ANALYSIS_PART_TABLES}/{{part}}/fidelity.csv",
            history=f"{ANALYSIS_PART_TABLES}/{{part}}/history.csv",
        log:
            f"{ANALYSIS_LOGS}/part-{{part}}.log",
        benchmark:
            f"{ANALYSIS_BENCHMARKS}/part-{{part}}.tsv"
        wildcard_constraints:
            part="|".join(ANALYSIS_PARTS),
        params:
            methods=lambda w: method_catalog(),
            part=lambda w: w.part,
            code=code_digest(
                "kdcore.analysis.parts", "kdcore.analysis.table", scripts=("analysis_reference_table.py", "_common.py")
            ),


rule analysis_stats:
    input:
        runs=f"{ANALYSIS_TABLES}/runs.csv",
    output:
        summary=report(
            f"{ANALYSIS_TABLES}/summary.json",
            caption="../report/summary.rst",
            category="Summary",
            labels=summary_report_labels,
        ),
        cells=f"{ANALYSIS_TABLES}/cells.csv",
    log:
        f"{ANALYSIS_LOGS}/stats.log",
    benchmark:
        f"{ANALYSIS_BENCHMARKS}/stats.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        methods=lambda w: method_catalog(),
        metric=analysis_metric(),
        min_effect_pp=analysis_min_effect_pp(),
        code=code_digest("kdcore.analysis.summary", scripts=("analysis_stats.py", "_common.py")),
    script:
        "../scripts/analysis_stats.py"


rule analysis_stat_table:
    input:
        runs=lambda w: [part_table(p, "runs") for p in ANALYSIS_STAT_PARTS[w.stat]],
    output:
        table=f"{ANALYSIS_TABLES}/{{stat,stem_ablation|clip_ablation}}.csv",
    log:
        f"{ANALYSIS_LOGS}/stat-{{stat}}.log",
    benchmark:
        f"{ANALYSIS_BENCHMARKS}/stat-{{stat}}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        methods=lambda w: method_catalog(),
        table=lambda w: w.stat,
        metric=analysis_metric(),
        min_effect_pp=analysis_min_effect_pp(),
        code=code_digest("kdcore.analysis.summary", scripts=("analysis_stat_table.py", "_common.py")),
    script:
        "../scripts/analysis_stat_table.py"


use rule analysis_stat_table as analysis_comparisons with:
    output:
        table=report(
            f"{ANALYSIS_TABLES}/{{stat,comparisons}}.csv", caption="../report/comparisons.rst", category="Tables"
        ),


use rule analysis_stat_table as analysis_moderation with:
    output:
        table=report(
            f"{ANALYSIS_TABLES}/{{stat,moderation}}.csv", caption="../report/moderation.rst", category="Tables"
        ),


use rule analysis_stat_table as analysis_moderation_sensitivity with:
    output:
        table=report(
            f"{ANALYSIS_TABLES}/{{stat,moderation_sensitivity}}.csv",
            caption="../report/moderation_sensitivity.rst",
            category="Tables",
        ),


use rule analysis_stat_table as analysis_selection with:
    output:
        table=report(f"{ANALYSIS_TABLES}/{{stat,selection}}.csv", caption="../report/selection.rst", category="Tables"),


rule analysis_figure:
    input:
        unpack(lambda w: analysis_reads("figure", w.figure)),
    output:
        pdf=f"{ANALYSIS_FIGURES}/{{figure}}.pdf",
        png=report(
            f"{ANALYSIS_FIGURES}/{{figure}}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels=lambda w: {"figure": w.figure},
        ),
    log:
        f"{ANALYSIS_LOGS}/figure-{{figure}}.log",
    benchmark:
        f"{ANALYSIS_BENCHMARKS}/figure-{{figure}}.tsv"
    wildcard_constraints:
        figure="|".join(ANALYSIS_FIGURE_NAMES),
    conda:
        "../envs/analysis.yaml"
    params:
        methods=lambda w: method_catalog(),
        figure=lambda w: w.figure,
        metric=analysis_metric(),
        code=code_digest(
            "kdcore.analysis.figures",
            "kdcore.analysis.moderation",
            "kdcore.analysis.table",
            scripts=("analysis_figure.py", "_common.py"),
        ),
    script:
        "../scripts/analysis_figure.py"


rule analysis_latex:
    input:
        unpack(lambda w: analysis_reads("table", w.table)),
    output:
        tex=report(
            f"{ANALYSIS_TABLES}/{{table}}.tex",
            caption="../report/latex.rst",
            category="LaTeX tables",
            labels=lambda w: {"table": w.table},
        ),
    log:
        f"{ANALYSIS_LOGS}/latex-{{table}}.log",
    benchmark:
        f"{ANALYSIS_BENCHMARKS}/latex-{{table}}.tsv"
    wildcard_constraints:
        table="|".join(ANALYSIS_TEX_TABLES),
    conda:
        "../envs/analysis.yaml"
    params:
        methods=lambda w: method_catalog(),
        table=lambda w: w.table,
        metric=analysis_metric(),
        code=code_digest(
            "kdcore.analysis.latex",
            "kdcore.analysis.stats",
            "kdcore.analysis.table",
            scripts=("analysis_latex.py", "_common.py"),
        ),
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
        code=code_digest("kdcore.analysis.imported", scripts=("analysis_reference.py", "_common.py")),
    script:
        "../scripts/analysis_reference.py"


# The paper-vs-reproduction comparison needs a reproduction: a trained study only.
if not ANALYSIS_FROM_REFERENCE:

    rule analysis_comparison:
        input:
            ours=f"{ANALYSIS_TABLES}/runs.csv",
            paper=f"{ANALYSIS_REFERENCE}/tables/runs.csv",
        output:
            csv=report(f"{ANALYSIS_TABLES}/comparison.csv", caption="../report/comparison.rst", category="Tables"),
            tex=f"{ANALYSIS_TABLES}/comparison.tex",
        log:
            f"{ANALYSIS_LOGS}/comparison.log",
        benchmark:
            f"{ANALYSIS_BENCHMARKS}/comparison.tsv"
        conda:
            "../envs/analysis.yaml"
        params:
            methods=lambda w: method_catalog(),
            metric=analysis_metric(),
            code=code_digest(
                "kdcore.analysis.compare", "kdcore.analysis.latex", scripts=("analysis_compare.py", "_common.py")
            ),
        script:
            "../scripts/analysis_compare.py"


# Tables drawn from the runs' stored test logits (per-image paired tests, variance decomposition, ensembles)
# and from the audit history (protocol audit): CSV and LaTeX from one job each (kdcore.analysis.logit_outputs).
rule analysis_paired_images:
    input:
        unpack(lambda w: logit_table_inputs(w.logit)),
    output:
        csv=report(
            f"{ANALYSIS_TABLES}/{{logit,paired_images}}.csv",
            caption="../report/paired_images.rst",
            category="Tables",
        ),
        tex=f"{ANALYSIS_TABLES}/{{logit,paired_images}}.tex",
    log:
        f"{ANALYSIS_LOGS}/logit-{{logit}}.log",
    benchmark:
        f"{ANALYSIS_BENCHMARKS}/logit-{{logit}}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        methods=lambda w: method_catalog(),
        table=lambda w: w.logit,
        metric=analysis_metric(),
        code=code_digest("kdcore.analysis.logit_outputs", scripts=("analysis_logit_table.py", "_common.py")),
    script:
        "../scripts/analysis_logit_table.py"


use rule analysis_paired_images as analysis_variance with:
    output:
        csv=report(f"{ANALYSIS_TABLES}/{{logit,variance}}.csv", caption="../report/variance.rst", category="Tables"),
        tex=f"{ANALYSIS_TABLES}/{{logit,variance}}.tex",


use rule analysis_paired_images as analysis_ensembles with:
    output:
        csv=report(f"{ANALYSIS_TABLES}/{{logit,ensembles}}.csv", caption="../report/ensembles.rst", category="Tables"),
        tex=f"{ANALYSIS_TABLES}/{{logit,ensembles}}.tex",


use rule analysis_paired_images as analysis_audit with:
    output:
        csv=report(f"{ANALYSIS_TABLES}/{{logit,audit}}.csv", caption="../report/audit.rst", category="Tables"),
        tex=f"{ANALYSIS_TABLES}/{{logit,audit}}.tex",
