# Students: CE baselines, the selection grid and its winners, final KD runs, fidelity, and the ablations.


rule train_baseline:
    input:
        data=DATASET,
    output:
        **run_outputs("baseline", student="{student}", seed="{seed}"),
    log:
        "results/logs/baselines/{student}/seed{seed}.log",
    benchmark:
        "results/benchmarks/baselines/{student}/seed{seed}.tsv"
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["train"],
        runtime=lambda w: train_runtime(w.student, "student"),
    params:
        run_config=lambda w: run_config(
            "baseline",
            f"baselines/{w.student}/seed{w.seed}",
            w.student,
            w.seed,
            "student",
            extra_labels={"student": w.student, "method": "baseline"},
        ),
        code=training_code("baseline"),
    script:
        "../scripts/train.py"


rule train_select:
    input:
        data=DATASET,
        teacher=lambda w: teacher_checkpoint(w.teacher),
    output:
        **run_outputs("select", teacher="{teacher}", student="{student}", method="{method}", hp="{hp}", seed="{seed}"),
    log:
        "results/logs/select/{teacher}-{student}/{method}/{hp}/seed{seed}.log",
    benchmark:
        "results/benchmarks/select/{teacher}-{student}/{method}/{hp}/seed{seed}.tsv"
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["train"],
        runtime=lambda w: train_runtime(w.student, "student", w.teacher),
    params:
        run_config=lambda w: run_config(
            "select",
            f"select/{w.teacher}-{w.student}/{w.method}/{w.hp}/seed{w.seed}",
            w.student,
            w.seed,
            "student",
            teacher=w.teacher,
            method=w.method,
            method_params=grid_params(w.method, w.hp),
            extra_labels={**kd_labels(w.teacher, w.student, w.method), "hp": w.hp},
        ),
        code=lambda w: training_code(w.method),
    script:
        "../scripts/train.py"


rule select_winner:
    input:
        runs=lambda w: select_metrics(w.teacher, w.student, w.method),
    output:
        "results/selection/{teacher}-{student}/{method}.json",
    log:
        "results/logs/selection/{teacher}-{student}/{method}.log",
    benchmark:
        "results/benchmarks/selection/{teacher}-{student}/{method}.tsv"
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


rule train_final:
    input:
        data=DATASET,
        teacher=lambda w: teacher_checkpoint(w.teacher),
        winner=winner_input,
    output:
        **run_outputs("final", teacher="{teacher}", student="{student}", method="{method}", seed="{seed}"),
    log:
        "results/logs/final/{teacher}-{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/final/{teacher}-{student}/{method}/seed{seed}.tsv"
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["train"],
        runtime=lambda w: train_runtime(w.student, "student", w.teacher),
    params:
        run_config=lambda w: run_config(
            "final",
            f"final/{w.teacher}-{w.student}/{w.method}/seed{w.seed}",
            w.student,
            w.seed,
            "student",
            teacher=w.teacher,
            method=w.method,
            method_params=final_method_params(w.method),
            extra_labels=kd_labels(w.teacher, w.student, w.method),
        ),
        code=lambda w: training_code(w.method),
    script:
        "../scripts/train.py"


rule fidelity_final:
    input:
        data=DATASET,
        student=run_file("final", "best.pt", teacher="{teacher}", student="{student}", method="{method}", seed="{seed}"),
        teacher=lambda w: teacher_checkpoint(w.teacher),
    output:
        run_file("final", "fidelity.json", teacher="{teacher}", student="{student}", method="{method}", seed="{seed}"),
    log:
        "results/logs/fidelity/final/{teacher}-{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/fidelity/final/{teacher}-{student}/{method}/seed{seed}.tsv"
    conda:
        "../envs/kdcore.yaml"
    threads: config["compute"]["threads"]["fidelity"]
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["fidelity"],
        runtime=config["compute"]["fidelity_runtime"],
    params:
        labels=lambda w: json.dumps(
            {
                "stage": "final",
                "run_id": f"final/{w.teacher}-{w.student}/{w.method}/seed{w.seed}",
                **kd_labels(w.teacher, w.student, w.method),
                "seed": w.seed,
            },
            sort_keys=True,
        ),
        code=fidelity_code(),
    script:
        "../scripts/fidelity.py"


rule fidelity_baseline:
    input:
        data=DATASET,
        student=run_file("baseline", "best.pt", student="{student}", seed="{seed}"),
        teacher=lambda w: teacher_checkpoint(w.teacher),
    output:
        run_file("baseline", "fidelity-{teacher}.json", student="{student}", seed="{seed}"),
    log:
        "results/logs/fidelity/baselines/{student}/seed{seed}-{teacher}.log",
    benchmark:
        "results/benchmarks/fidelity/baselines/{student}/seed{seed}-{teacher}.tsv"
    conda:
        "../envs/kdcore.yaml"
    threads: config["compute"]["threads"]["fidelity"]
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["fidelity"],
        runtime=config["compute"]["fidelity_runtime"],
    params:
        labels=lambda w: json.dumps(
            {
                "stage": "baseline",
                "run_id": f"baselines/{w.student}/seed{w.seed}",
                **kd_labels(w.teacher, w.student, "baseline"),
                "seed": w.seed,
            },
            sort_keys=True,
        ),
        code=fidelity_code(),
    script:
        "../scripts/fidelity.py"


rule train_stem:
    input:
        data=DATASET,
    output:
        **run_outputs("stem", arch="{arch}", seed="{seed}"),
    log:
        "results/logs/stem/{arch}-imagenet/seed{seed}.log",
    benchmark:
        "results/benchmarks/stem/{arch}-imagenet/seed{seed}.tsv"
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["train"],
        runtime=lambda w: train_runtime(w.arch, stem_epochs_kind(w.arch, w.seed)),
    params:
        run_config=lambda w: run_config(
            "stem",
            f"stem/{w.arch}-imagenet/seed{w.seed}",
            w.arch,
            w.seed,
            stem_epochs_kind(w.arch, w.seed),
            stem="imagenet",
            extra_labels={"arch": w.arch, "method": "baseline", "stem": "imagenet"},
        ),
        code=training_code("baseline"),
    script:
        "../scripts/train.py"


rule train_clip:
    input:
        data=DATASET,
        teacher=lambda w: teacher_checkpoint(w.teacher),
        winner=winner_input,
    output:
        **run_outputs("clip", teacher="{teacher}", student="{student}", method="{method}", seed="{seed}"),
    log:
        "results/logs/clip/{teacher}-{student}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/clip/{teacher}-{student}/{method}/seed{seed}.tsv"
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["train"],
        runtime=lambda w: train_runtime(w.student, "student", w.teacher),
    params:
        run_config=lambda w: run_config(
            "clip",
            f"clip/{w.teacher}-{w.student}/{w.method}/seed{w.seed}",
            w.student,
            w.seed,
            "student",
            teacher=w.teacher,
            method=w.method,
            method_params=final_method_params(w.method),
            clip_scope=config["ablations"]["clip"]["clip_scope"],
            extra_labels=kd_labels(w.teacher, w.student, w.method),
        ),
        code=lambda w: training_code(w.method),
    script:
        "../scripts/train.py"
