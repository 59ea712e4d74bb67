"""The command line (one-line errors, exit codes, outputs) and the benchmark's quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_prepare_train_fidelity_end_to_end(tmp_path):
    spec = {"source": "synthetic", "synthetic": {"n_train": 300, "n_test": 100, "seed": 1}, "val_size": 60}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(spec))
    done = run_cli("prepare-data", "--config", "data.yaml", "--out", "data.pt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = {
        "data": "data.pt",
        "model": {"arch": "resnet18", "width": 4},
        "train": {"epochs": 1, "batch_size": 64},
        "runtime": {"device": "cpu", "threads": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    done = run_cli("train", "--config", "run.yaml", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/1" in done.stderr and "ETA" in done.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["results"]["epochs"] == 1
    done = run_cli("fidelity", "--student", "run", "--teacher", "run/test_logits.npz", "--at", "final",
                   "--out", "fid.json", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "fid.json").read_text())
    assert 0 <= record["top1_agreement"] <= 1 and set(record["per_class_acc_student"]) == set(
        record["per_class_acc_teacher"]
    )
    assert record["student"]["at"] == "final" and record["teacher_arch"] == "resnet18"
    done = run_cli("fidelity", "--student", "run", "--teacher", "run", "--out", "self.json", cwd=tmp_path)
    itself = json.loads((tmp_path / "self.json").read_text())  # a run against itself: full agreement, no divergence
    assert itself["top1_agreement"] == 1.0 and abs(itself["kl_t1"]) < 1e-12 and abs(itself["kl_t4"]) < 1e-12


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"data": "data.pt", "model": {"arch": "vgg11"}}, "'model.arch': unknown architecture 'vgg11'"),
        ({"data": "missing.pt", "model": {"arch": "resnet18", "width": 4}}, "prepared dataset not found: missing.pt"),
        (
            {"data": "data.pt", "model": {"arch": "resnet18"}, "method": {"name": "logit", "alpha": 0.5}},
            "config key 'teacher' is required by method 'logit'",
        ),
    ],
)
def test_bad_input_gives_one_error_line_and_exit_2(tmp_path, run, message):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    done = run_cli("train", "--config", "run.yaml", "--out", "run", cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 NVL", "tf32", 418e12),
        ("NVIDIA H200", "fp32", 67e12),
        ("NVIDIA H200 NVL", "bf16", 835e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("Intel(R) Xeon(R)", "bf16", None),
    ],
)
def test_bench_peak_depends_on_the_gpu_variant(name, precision, peak):
    from kdcore.bench import device_peak

    assert device_peak(name, precision) == peak


def test_bench_names_tf32_for_what_it_is(monkeypatch):
    from kdcore.bench import compute_precision

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert compute_precision(torch.float32, cuda) == "tf32"
    assert compute_precision(torch.float32, cpu) == "fp32"
    assert compute_precision(torch.bfloat16, cuda) == "bf16"
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert compute_precision(torch.float32, cuda) == "fp32"
