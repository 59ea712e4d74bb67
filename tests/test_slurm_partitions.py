"""The SLURM profile puts each kind of job in its own partition: GPU jobs in KD_SLURM_GPU_PARTITION, CPU-only
jobs (data preparation, winner selection, the analysis group) in KD_SLURM_CPU_PARTITION (dry run, no cluster)."""

from __future__ import annotations

from pathlib import Path

from test_slurm import GPU_RULE, base_env, dry_run_with_profile, needs_smoke


@needs_smoke
def test_gpu_and_cpu_jobs_go_to_their_own_partitions(tmp_path: Path) -> None:
    env = base_env(KD_SLURM_GPU_PARTITION="gpu-p", KD_SLURM_CPU_PARTITION="cpu-p", SBATCH_PARTITION="fallback")
    jobs = dry_run_with_profile(tmp_path, env)
    kinds = {GPU_RULE.match(rule) is not None for rule, _ in jobs}
    assert kinds == {True, False}, jobs
    for rule, res in jobs:
        wanted = "gpu-p" if GPU_RULE.match(rule) else "cpu-p"
        assert res.get("slurm_partition") == wanted, (rule, res)


@needs_smoke
def test_a_kind_without_its_own_partition_falls_back_to_sbatch_partition(tmp_path: Path) -> None:
    jobs = dry_run_with_profile(tmp_path, base_env(KD_SLURM_GPU_PARTITION="gpu-p", SBATCH_PARTITION="fallback"))
    for rule, res in jobs:
        wanted = "gpu-p" if GPU_RULE.match(rule) else "fallback"
        assert res.get("slurm_partition") == wanted, (rule, res)
