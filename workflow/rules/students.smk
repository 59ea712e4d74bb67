# Students: CE baselines, the selection grid and its winners, final KD runs and the ablations.
# Training rules take their shared part from the templates in gpu_jobs.smk. Fidelity to the teacher is
# measured by the analysis from the runs' stored test logits (analysis.smk), not by a job of its own.


use rule training_job as train_baseline with:
    input:
        data=DATASET,
    output:
        **run_outputs("baseline", student="{student}", seed="{seed}"),
    log:
        job_log(FOLDER_PATTERNS["baseline"]),
    benchmark:
        job_benchmark(FOLDER_PATTERNS["baseline"])
    resources:
        **train_resources(lambda w: train_runtime(w.student, "student")),
    params:
        run_config=baseline_run_config,
        code=lambda w: training_code("baseline", w.student),


use rule training_job as train_select with:
    input:
        data=DATASET,
        teacher=lambda w: teacher_checkpoint(w.teacher),
        teacher_cache=teacher_cache_input,
    output:
        **run_outputs("select", teacher="{teacher}", student="{student}", method="{method}", hp="{hp}", seed="{seed}"),
    log:
        job_log(FOLDER_PATTERNS["select"]),
    benchmark:
        job_benchmark(FOLDER_PATTERNS["select"])
    resources:
        **train_resources(lambda w: train_runtime(w.student, "student", w.teacher)),
    params:
        run_config=select_run_config,
        code=lambda w: training_code(w.method, w.student, w.teacher),


rule select_winner:
    input:
        runs=lambda w: select_metrics(w.teacher, w.student, w.method),
    output:
        winner_file("{teacher}", "{student}", "{method}"),
    log:
        job_log(WINNER_PATTERN.removesuffix(".json")),
    benchmark:
        job_benchmark(WINNER_PATTERN.removesuffix(".json"))
    conda:
        "../envs/kdcore.yaml"
    threads: config["compute"]["threads"]["light"]
    resources:
        mem_mb=config["compute"]["mem_mb"]["light"],
        runtime=5,
    params:
        candidates=selection_candidates,
        metric=config["selection"]["metric"],
        pair=lambda w: [w.teacher, w.student],
        method=lambda w: w.method,
        code=code_digest("kdcore.atomic", "kdcore.errors", scripts=("select_winner.py", "_common.py")),
    script:
        "../scripts/select_winner.py"


use rule training_job as train_final with:
    input:
        data=DATASET,
        teacher=lambda w: teacher_checkpoint(w.teacher),
        teacher_cache=teacher_cache_input,
        winner=winner_input,
    output:
        **run_outputs("final", teacher="{teacher}", student="{student}", method="{method}", seed="{seed}"),
    log:
        job_log(FOLDER_PATTERNS["final"]),
    benchmark:
        job_benchmark(FOLDER_PATTERNS["final"])
    resources:
        **train_resources(lambda w: train_runtime(w.student, "student", w.teacher)),
    params:
        run_config=final_run_config,
        code=lambda w: training_code(w.method, w.student, w.teacher),


use rule training_job as train_stem with:
    input:
        data=DATASET,
    output:
        **run_outputs("stem", arch="{arch}", seed="{seed}"),
    log:
        job_log(FOLDER_PATTERNS["stem"]),
    benchmark:
        job_benchmark(FOLDER_PATTERNS["stem"])
    resources:
        **train_resources(lambda w: train_runtime(w.arch, stem_epochs_kind(w.arch, w.seed))),
    params:
        run_config=stem_run_config,
        code=lambda w: training_code("baseline", w.arch),


use rule training_job as train_clip with:
    input:
        data=DATASET,
        teacher=lambda w: teacher_checkpoint(w.teacher),
        teacher_cache=teacher_cache_input,
        winner=winner_input,
    output:
        **run_outputs("clip", teacher="{teacher}", student="{student}", method="{method}", seed="{seed}"),
    log:
        job_log(FOLDER_PATTERNS["clip"]),
    benchmark:
        job_benchmark(FOLDER_PATTERNS["clip"])
    resources:
        **train_resources(lambda w: train_runtime(w.student, "student", w.teacher)),
    params:
        run_config=clip_run_config,
        code=lambda w: training_code(w.method, w.student, w.teacher),
