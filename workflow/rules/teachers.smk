# Teachers: every teacher architecture of the pairs, on teachers.seeds (CE training, teacher epochs).


rule train_teacher:
    input:
        data=DATASET,
    output:
        **run_outputs("teacher", arch="{arch}", seed="{seed}"),
    log:
        "results/logs/teachers/{arch}/seed{seed}.log",
    benchmark:
        "results/benchmarks/teachers/{arch}/seed{seed}.tsv"
    # teachers gate every KD job: start them first so that no core idles waiting on them at the end
    priority: 10
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["train"],
        runtime=lambda w: train_runtime(w.arch, "teacher"),
    params:
        run_config=lambda w: run_config(
            "teacher", f"teachers/{w.arch}/seed{w.seed}", w.arch, w.seed, "teacher", extra_labels={"arch": w.arch}
        ),
        code=training_code("baseline"),
    script:
        "../scripts/train.py"
