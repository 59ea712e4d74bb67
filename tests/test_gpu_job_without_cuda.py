"""A workflow GPU job (gpu: 1) that finds no CUDA device fails at once with torch's reason; CPU studies say
`compute.device: cpu` and so never ask for a GPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from _workflow_tools import copy_workflow, snakemake

from kdcore.devices import REQUIRE_GPU_ENV, gpu_jobs_refusal

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
    # --no-hooks: past the refusal at the start of the run (below), to the job's own check
    proc = snakemake(
        root, "--configfile", "config/smoke.yaml", "gpu.yaml", "--cores", "1", "--until", "train_teacher",
        "--no-hooks", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    logs = sorted((root / "results" / "logs" / "teachers").rglob("*.log"))
    text = logs[0].read_text(encoding="utf-8")
    assert (
        "NoCudaError: this job asked for a GPU (KDCORE_REQUIRE_GPU=a GPU job of the workflow, compute.device auto; "
        "device 'auto') but torch sees no CUDA device" in text
    )
    assert f"torch {torch.__version__}" in text and "torch's CUDA initialisation:" in text
    assert not list((root / "results" / "runs").rglob("metrics.json"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_local_run_of_gpu_jobs_without_cuda_is_refused_before_any_job(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    (root / "gpu.yaml").write_text("compute: {device: auto}\n", encoding="utf-8")
    proc = snakemake(root, "--configfile", "config/smoke.yaml", "gpu.yaml", "--cores", "1", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(
        r"\d+ GPU job\(s\) to run on this machine \(runtime limits adding up to \d+\.\d GPU-hours", output
    ), output
    assert "torch sees no CUDA device" in output and "compute.device: cpu" in output
    assert "KDCORE_REQUIRE_GPU=0" in output
    assert not (root / "results" / "data" / "dataset.pt").exists()  # not even the CPU job that comes first
    assert not (root / "results" / "logs").exists()


@pytest.mark.parametrize(
    ("device", "jobs", "cuda", "require", "refused"),
    [
        ("auto", 3, False, None, True),
        ("cuda", 1, False, "", True),
        ("auto", 3, True, None, False),  # CUDA is there
        ("cpu", 3, False, None, False),  # a CPU study
        ("auto", 0, False, None, False),  # nothing that asks for a GPU
        ("auto", 3, False, "0", False),  # the CPU fallback, asked for
    ],
)
def test_gpu_jobs_refusal(monkeypatch, device, jobs, cuda, require, refused):
    if require is None:
        monkeypatch.delenv(REQUIRE_GPU_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_GPU_ENV, require)
    refusal = gpu_jobs_refusal(device, jobs, 90.0, cuda)
    assert (refusal is not None) == refused
    if refused:
        assert refusal.startswith(
            f"{jobs} GPU job(s) to run on this machine (runtime limits adding up to 1.5 GPU-hours"
        )
