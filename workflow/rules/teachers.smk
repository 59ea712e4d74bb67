# Teachers: every teacher architecture of the pairs, on teachers.seeds (CE training, teacher epochs).


use rule training_job as train_teacher with:
    input:
        data=DATASET,
    output:
        **run_outputs("teacher", arch="{arch}", seed="{seed}"),
    log:
        job_log("teachers/{arch}/seed{seed}"),
    benchmark:
        job_benchmark("teachers/{arch}/seed{seed}")
    # teachers gate every KD job: start them first so that no core idles waiting on them at the end
    priority: 10
    resources:
        **train_resources(lambda w: train_runtime(w.arch, "teacher")),
    params:
        run_config=teacher_run_config,
        code=lambda w: training_code("baseline", w.arch),
