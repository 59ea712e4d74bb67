"""Checkpoint cadence and resume safety: interval checkpoints, SIGUSR1/SIGTERM, the best weights stored once,
a resume key that includes the resolved device and precision, and last.pt files of unknown layout."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import torch

from kdcore import devices, engine
from kdcore.data import prepare_dataset
from kdcore.errors import ConfigError, TrainingError

WIDTH = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.pt"
    spec = {"source": "synthetic", "synthetic": {"n_train": 128, "n_test": 32, "seed": 3}, "val_size": 32}
    prepare_dataset(spec, path)
    return path


def run_config(data: Path, epochs: int = 3, precision: str = "fp32") -> dict:
    return {
        "data": str(data),
        "model": {"arch": "resnet18", "width": WIDTH},
        "train": {"epochs": epochs, "batch_size": 64, "seed": 5},
        "runtime": {"device": "cpu", "threads": 1, "precision": precision, "log_every_epoch": False},
        "labels": {"stage": "test"},
    }


class Crash(Exception):
    """Stands in for a crash at the start of an epoch."""


def train_with(monkeypatch, config: dict, out: Path, *, crash_at: int | None = None, signals: dict | None = None):
    """train_run with a crash at the start of epoch ``crash_at`` and ``{epoch: [signals]}`` sent to this process
    during those epochs."""
    original = engine.train_one_epoch

    def patched(epoch, *args, **kwargs):
        if epoch == crash_at:
            raise Crash
        for signum in (signals or {}).get(epoch, ()):
            os.kill(os.getpid(), signum)
        return original(epoch, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train_one_epoch", patched)
        return engine.train_run(config, out)


def epochs_done(out: Path) -> int | None:
    last = out / "last.pt"
    return torch.load(last, weights_only=True)["epochs_done"] if last.exists() else None


def history(metrics: dict) -> list[tuple]:
    return [(h["loss"], h["train_acc"], h["val_acc"]) for h in metrics["history"]]


# ----------------------------------------------------------------------------- cadence
def test_every_epoch_by_default_on_the_cpu(tmp_path, data, monkeypatch):
    monkeypatch.delenv(engine.CHECKPOINT_INTERVAL_ENV, raising=False)
    assert engine.checkpoint_interval(torch.device("cpu")) == 0
    assert engine.checkpoint_interval(torch.device("cuda")) == engine.CUDA_CHECKPOINT_INTERVAL_S
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), tmp_path / "run", crash_at=2)
    assert epochs_done(tmp_path / "run") == 2


def test_interval_checkpoints_skip_epochs_until_due(tmp_path, data, monkeypatch):
    monkeypatch.setenv(engine.CHECKPOINT_INTERVAL_ENV, "3600")
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), tmp_path / "run", crash_at=2)
    assert epochs_done(tmp_path / "run") is None  # nothing due within an hour
    assert not list((tmp_path / "run").glob("*.pt"))


def test_the_last_epoch_is_always_checkpointed_and_the_run_finishes(tmp_path, data, monkeypatch, caplog):
    monkeypatch.setenv(engine.CHECKPOINT_INTERVAL_ENV, "3600")
    caplog.set_level(logging.INFO, logger="kdcore.train")
    metrics = engine.train_run(run_config(data, epochs=2), tmp_path / "run")
    assert "checkpoints every 3600 s" in caplog.text
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"best.pt", "final.pt", "metrics.json"} <= names
    assert "last.pt" not in names and not [n for n in names if n.startswith(engine.RESUME_BEST_PREFIX)]
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == metrics["results"]["best_epoch"]


@pytest.mark.parametrize("value", ["soon", "-5", "nan"])
def test_bad_interval_is_one_line(tmp_path, data, monkeypatch, value):
    monkeypatch.setenv(engine.CHECKPOINT_INTERVAL_ENV, value)
    with pytest.raises(ConfigError, match=f"{engine.CHECKPOINT_INTERVAL_ENV}='{value}': expected a number"):
        engine.train_run(run_config(data, epochs=1), tmp_path / "run")


# ----------------------------------------------------------------------------- signals
def test_sigusr1_checkpoints_after_the_current_epoch_and_training_goes_on(tmp_path, data, monkeypatch, caplog):
    monkeypatch.setenv(engine.CHECKPOINT_INTERVAL_ENV, "3600")
    caplog.set_level(logging.INFO, logger="kdcore.train")
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), tmp_path / "run", crash_at=2, signals={0: [signal.SIGUSR1]})
    assert epochs_done(tmp_path / "run") == 1
    assert "SIGUSR1: checkpoint written after epoch 1" in caplog.text
    assert signal.getsignal(signal.SIGUSR1) == before  # handlers are restored


def test_sigterm_checkpoints_stops_and_the_resumed_run_is_exact(tmp_path, data, monkeypatch):
    """Under SLURM the scheduler and Snakemake may both send SIGTERM: the second changes nothing."""
    monkeypatch.setenv(engine.CHECKPOINT_INTERVAL_ENV, "3600")
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"stopped by SIGTERM after epoch 2; .*last.pt holds it"):
        train_with(monkeypatch, run_config(data), out, signals={1: [signal.SIGTERM, signal.SIGTERM]})
    assert epochs_done(out) == 2 and not (out / "metrics.json").exists()
    (out / "best.pt").unlink()  # a scheduler deletes the outputs of a failed job
    resumed = engine.train_run(run_config(data), out)
    straight = engine.train_run(run_config(data), tmp_path / "straight")
    assert history(resumed) == history(straight)
    assert resumed["results"]["test_acc_best"] == straight["results"]["test_acc_best"]
    a = torch.load(out / "best.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the best weights, once
def test_last_pt_does_not_duplicate_the_best_weights(tmp_path, data, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), out, crash_at=2)
    payload = torch.load(out / "last.pt", weights_only=True)
    assert "best_state" not in payload
    link = out / payload["best_file"]
    assert link.name == f"last-best-e{payload['best_epoch']:04d}.pt"
    assert os.stat(link).st_ino == os.stat(out / "best.pt").st_ino  # one copy on disk
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", link.name, "last.pt"]


def test_resume_without_its_best_file_starts_over(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), out, crash_at=2)
    for path in out.glob("last-best-e*.pt"):
        path.unlink()
    caplog.set_level(logging.INFO, logger="kdcore.train")
    metrics = engine.train_run(run_config(data), out)
    assert "its best weights cannot be restored" in caplog.text and "starting from epoch 0" in caplog.text
    assert len(list(out.glob("last.pt.corrupt-*"))) == 1
    assert len(metrics["history"]) == 3


# ----------------------------------------------------------------------------- resume key: device and precision
def test_resume_key_names_the_resolved_device_and_precision(tmp_path, data, monkeypatch):
    run = engine.build_run(engine.resolve_config(run_config(data)), tmp_path)
    assert run.resume_key["device"] == "cpu" and run.resume_key["precision"] == "fp32"


def test_resume_after_a_precision_change_restarts_from_epoch_0(tmp_path, data, monkeypatch, caplog):
    """``precision: auto`` resolves per machine: fp32 where the CPU has no native bf16, bf16 where it has."""
    out = tmp_path / "run"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data, precision="auto"), out, crash_at=2)
    assert torch.load(out / "last.pt", weights_only=True)["resume_key"]["precision"] == "fp32"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    caplog.set_level(logging.INFO, logger="kdcore.train")
    metrics = engine.train_run(run_config(data, precision="auto"), out)
    assert "was written with a different precision (fp32 -> bf16); starting from epoch 0" in caplog.text
    assert "resuming" not in caplog.text
    assert metrics["environment"]["precision"] == "bfloat16" and len(metrics["history"]) == 3


def test_resume_after_a_device_change_restarts_from_epoch_0(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), out, crash_at=2)
    payload = torch.load(out / "last.pt", weights_only=True)
    payload["resume_key"]["device"] = "cuda"  # as a run started on a GPU would have written it
    torch.save(payload, out / "last.pt")
    caplog.set_level(logging.INFO, logger="kdcore.train")
    metrics = engine.train_run(run_config(data), out)
    assert "was written with a different device (cuda -> cpu); starting from epoch 0" in caplog.text
    assert metrics["environment"]["device"] == "cpu" and len(metrics["history"]) == 3
    assert metrics["environment"]["torch_cuda"] == torch.version.cuda and metrics["environment"]["cudnn"] is None


def test_last_pt_without_device_and_precision_restarts(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), out, crash_at=1)
    payload = torch.load(out / "last.pt", weights_only=True)
    del payload["resume_key"]["device"], payload["resume_key"]["precision"]
    torch.save(payload, out / "last.pt")
    caplog.set_level(logging.INFO, logger="kdcore.train")
    engine.train_run(run_config(data), out)
    assert "different device (not recorded -> cpu) and precision (not recorded -> fp32)" in caplog.text


# ----------------------------------------------------------------------------- unknown layout (moved aside)
@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda p: p.pop("resume_key"), "it lacks resume_key"),
        (lambda p: p.update(history="not a list"), "its history has the wrong type"),
        (lambda p: p.update(best_file="../elsewhere.pt"), "its best_file '../elsewhere.pt'"),
    ],
    ids=["no-resume-key", "bad-history", "bad-best-file"],
)
def test_last_pt_of_unknown_layout_is_moved_aside_and_the_run_starts_over(
    tmp_path, data, monkeypatch, caplog, edit, why
):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train_with(monkeypatch, run_config(data), out, crash_at=1)
    payload = torch.load(out / "last.pt", weights_only=True)
    edit(payload)
    torch.save(payload, out / "last.pt")
    caplog.set_level(logging.INFO, logger="kdcore.train")
    metrics = engine.train_run(run_config(data), out)
    moved = list(out.glob("last.pt.corrupt-*"))
    assert len(moved) == 1
    assert f"layout is unknown: {why}" in caplog.text
    assert f"moved it to {moved[0].name} and starting from epoch 0" in caplog.text
    assert len(metrics["history"]) == 3 and not list(out.glob("last-best-e*.pt"))
