# Data: one prepared dataset artefact for the whole study.


rule prepare_data:
    input:
        source=data_source_files,
    output:
        dataset=DATASET,
    log:
        "results/logs/data/prepare_data.log",
    benchmark:
        "results/benchmarks/data/prepare_data.tsv"
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
