# Teachers: every teacher architecture of the pairs, on teachers.seeds (CE training, teacher epochs).


use rule training_job as train_teacher with:
    input:
        data=DATASET,
    output:
        **run_outputs("teacher", arch="{arch}", seed="{seed}"),
    log:
        job_log(FOLDER_PATTERNS["teacher"]),
    benchmark:
        job_benchmark(FOLDER_PATTERNS["teacher"])
    # teachers gate every KD job: start them first so that no core idles waiting on them at the end
    priority: 10
    resources:
        **train_resources(lambda w: train_runtime(w.arch, "teacher")),
    params:
        run_config=teacher_run_config,
        code=lambda w: training_code("baseline", w.arch),


# The teacher-output cache of each cached teacher (config key teacher_cache, cached_teachers): its logits for
# every augmentation view of every training image, read by the teacher's logit-based runs.
use rule cache_job as teacher_cache with:
    input:
        data=DATASET,
        teacher=lambda w: teacher_checkpoint(w.teacher),
    output:
        teacher_cache_file("{teacher}"),
    log:
        job_log("cache/{teacher}"),
    benchmark:
        job_benchmark("cache/{teacher}")
    resources:
        **train_resources(lambda w: teacher_cache_runtime(w.teacher)),
    params:
        precision=config["runtime"]["precision"],
        code=code_digest("kdcore.teacher_cache", scripts=("teacher_cache.py", "_common.py")),
