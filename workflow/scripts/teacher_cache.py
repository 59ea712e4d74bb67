"""Workflow script: the teacher-output cache of one teacher via kdcore.teacher_cache.build_teacher_cache.

Inputs: ``teacher`` (the distillation teacher's best.pt), ``data`` (prepared dataset). Params: ``precision``
(the study's runtime.precision, resolved on the leased device exactly as the training runs resolve it, so
the cache's header matches the runs that read it), ``code`` (digest; unused here).
Output: the cache file.
"""

# (no `from __future__` import: Snakemake prepends a preamble to scripts)
from typing import Any

from _common import setup


def build_precision(requested: str, device: str) -> str:
    """The cache precision ('bf16' or 'fp32') of runs with runtime.precision ``requested`` on ``device``."""
    import torch

    from kdcore.devices import resolve_device, resolve_precision

    return "bf16" if resolve_precision(requested, resolve_device(device)) == torch.bfloat16 else "fp32"


def main(snakemake: Any) -> None:
    log = setup(snakemake)
    import torch

    from kdcore.devices import lease_device
    from kdcore.teacher_cache import build_teacher_cache

    torch.set_num_threads(int(snakemake.threads))
    lease = snakemake.config["compute"]
    with lease_device(lease["device"], lease["slots_per_gpu"], lease["lock_dir"]) as device:
        precision = build_precision(snakemake.params.precision, device)
        log.info("teacher cache of %s on %s, precision %s", snakemake.input.teacher, device, precision)
        header = build_teacher_cache(
            snakemake.input.teacher, snakemake.input.data, snakemake.output[0], device=device, precision=precision
        )
    log.info(
        "wrote %s: %d images x %d views x %d classes, %s, %.1f s",
        snakemake.output[0],
        header["n_images"],
        header["n_views"],
        header["num_classes"],
        header["storage_dtype"],
        header["seconds"],
    )


if __name__ == "__main__" and "snakemake" in globals():
    main(snakemake)
