# Templates of the GPU jobs: what every training, teacher-cache and fidelity job shares (environment, threads,
# memory, GPU resource, script). Each concrete rule takes one with `use rule ... with:` and states only
# what is its own: input, output, log, benchmark, runtime estimate and params. The templates have no
# output, so they never run themselves (their log is a placeholder that every rule replaces).


rule training_job:
    log:
        job_log("templates/training_job"),
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        **train_resources(),
    script:
        "../scripts/train.py"


rule fidelity_job:
    log:
        job_log("templates/fidelity_job"),
    conda:
        "../envs/kdcore.yaml"
    threads: config["compute"]["threads"]["fidelity"]
    resources:
        gpu=1,
        mem_mb=config["compute"]["mem_mb"]["fidelity"],
        runtime=config["compute"]["fidelity_runtime"],
    script:
        "../scripts/fidelity.py"


rule cache_job:
    log:
        job_log("templates/cache_job"),
    conda:
        "../envs/kdcore.yaml"
    threads: train_threads()
    resources:
        **train_resources(),
    script:
        "../scripts/teacher_cache.py"
