# Templates of the GPU jobs: what every training and teacher-cache job shares (environment, threads,
# memory, GPU resource, script). Each concrete rule takes one with `use rule ... with:` and states only
# what is its own: input, output, log, benchmark, runtime estimate and params. The templates have no
# output, so they never run themselves (their log is a placeholder that every rule replaces).
#
# Each of these jobs leases its device with compute.device (kdcore.devices.lease_device). Unless that is `cpu`,
# a job that finds no CUDA device fails at once with torch's reason instead of training on the CPU for days:
# KDCORE_REQUIRE_GPU, set here in Snakemake's environment (which every job inherits; only the GPU jobs lease a
# device), says so. A CPU study sets compute.device: cpu; KDCORE_REQUIRE_GPU=0 in the environment keeps the CPU
# fallback of `auto` (docs/performance.md).
import os as _os

if str(config["compute"]["device"]).strip().lower() != "cpu":
    _os.environ.setdefault(
        "KDCORE_REQUIRE_GPU", f"a GPU job of the workflow, compute.device {config['compute']['device']}"
    )


# A real run (not a dry run), after the DAG is built and before its first job: a run whose jobs execute on this
# machine (not through a cluster executor) and would start GPU jobs where torch sees no CUDA device stops,
# naming the jobs' GPU-hours (kdcore.devices.gpu_jobs_refusal). --no-hooks skips it.
onstart:
    if workflow.is_main_process and workflow.local_exec:
        import torch
        from kdcore.devices import gpu_jobs_refusal

        _gpu_jobs = [job for job in workflow.dag.needrun_jobs() if job.resources.get("gpu", 0)]
        _refusal = gpu_jobs_refusal(
            config["compute"]["device"],
            len(_gpu_jobs),
            sum(job.resources.get("runtime", 0) for job in _gpu_jobs),
            torch.cuda.is_available(),
        )
        if _refusal is not None:
            raise StudyConfigError(_refusal)


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
