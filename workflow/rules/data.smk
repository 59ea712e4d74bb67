# Data: one prepared dataset artefact for the whole study. An existing artefact that was not made from
# this config's data section is rebuilt: when the workflow is parsed, check_before_jobs (common.smk)
# compares the artefact's record with the config and, on a difference, logs it and renews the spec stamp,
# an input of prepare_data.


from kdcore.data import source_files


rule prepare_data:
    input:
        source=source_files(config["data"]),
        spec=DATA_SPEC_STAMP,
    output:
        dataset=DATASET,
    log:
        job_log("data/prepare_data"),
    benchmark:
        job_benchmark("data/prepare_data")
    conda:
        "../envs/kdcore.yaml"
    threads: config["compute"]["threads"]["light"]
    resources:
        mem_mb=config["compute"]["mem_mb"]["light"],
        runtime=30,
    params:
        spec=json.dumps(config["data"], sort_keys=True),
        code=code_digest("kdcore.data", scripts=("prepare_data.py", "_common.py")),
    script:
        "../scripts/prepare_data.py"
