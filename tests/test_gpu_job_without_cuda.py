"""A workflow GPU job (gpu: 1) that finds no CUDA device fails at once with torch's reason; CPU studies say
`compute.device: cpu` and so never ask for a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from _workflow_tools import copy_workflow, snakemake

REPO = Path(__file__).resolve().parents[1]


def test_cpu_study_configs_say_cpu():
    for name in ("config/quick.yaml", "config/smoke.yaml", "config/smoke-cifar100.yaml"):
        study = yaml.safe_load((REPO / name).read_text(encoding="utf-8"))
        assert study["compute"]["device"] == "cpu", name


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_gpu_job_without_cuda_fails_with_the_reason(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    (root / "gpu.yaml").write_text("compute: {device: auto}\n", encoding="utf-8")
    proc = snakemake(
        root, "--configfile", "config/smoke.yaml", "gpu.yaml", "--cores", "1", "--until", "train_teacher", check=False
    )
    assert proc.returncode != 0
    logs = sorted((root / "results" / "logs" / "teachers").rglob("*.log"))
    text = logs[0].read_text(encoding="utf-8")
    assert (
        "NoCudaError: this job asked for a GPU (KDCORE_REQUIRE_GPU=a GPU job of the workflow, compute.device auto; "
        "device 'auto') but torch sees no CUDA device" in text
    )
    assert f"torch {torch.__version__}" in text and "torch's CUDA initialisation:" in text
    assert not list((root / "results" / "runs").rglob("metrics.json"))
