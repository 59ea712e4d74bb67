"""Workflow script: prepare the study's dataset artefact with kdcore.data.prepare_dataset.

Params: ``spec`` (canonical JSON of config["data"]). Output: ``dataset``.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
import json
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.data import prepare_dataset

    summary = prepare_dataset(json.loads(snakemake.params.spec), snakemake.output.dataset)
    log.info("prepared %s: %s", snakemake.output.dataset, json.dumps(summary, default=str))


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
