"""Workflow script: fidelity of a student checkpoint against a teacher checkpoint on the test set.

Inputs: ``student``, ``teacher`` (best.pt files), ``data``. Params: ``labels``.
Device lease options: config["compute"] (not params: placement never reruns a job).
Output: one fidelity.json (kdcore.fidelity record, written atomically).
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
import json
from typing import Any

from _common import setup


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    from kdcore.devices import lease_device
    from kdcore.fidelity import evaluate_fidelity, write_fidelity

    lease = snakemake.config["compute"]
    labels = json.loads(snakemake.params.labels)
    with lease_device(lease["device"], lease["slots_per_gpu"], lease["lock_dir"]) as device:
        record = evaluate_fidelity(
            snakemake.input.student,
            snakemake.input.teacher,
            snakemake.input.data,
            device=device,
            labels=labels,
            precision=snakemake.config["runtime"]["precision"],  # the precision the runs were evaluated in
        )
    write_fidelity(record, snakemake.output[0])
    log.info(
        "fidelity %s: agreement %.4f, student %.4f, teacher %.4f",
        labels.get("run_id"),
        record["top1_agreement"],
        record["student_test_acc"],
        record["teacher_test_acc"],
    )


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
