"""Faults around one training run: stale or corrupt resume state, finished and busy run folders, failing
writes, and checkpoints or datasets that do not fit the run. Tiny synthetic data, width 4, CPU."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdcore import atomic, cli, engine
from kdcore.checkpoint import save_model_checkpoint, save_weights
from kdcore.data import prepare_dataset
from kdcore.errors import CheckpointError, DataError
from kdcore.models import build_model
from kdcore.runfolder import LOCK_FILE, RunFolderError, lock_run_folder

WIDTH = 4
SRC = Path(__file__).resolve().parents[1] / "src"


def make_dataset(path: Path, seed: int = 3) -> Path:
    spec = {"source": "synthetic", "synthetic": {"n_train": 192, "n_test": 64, "seed": seed}, "val_size": 64}
    prepare_dataset(spec, path)
    return path


def make_teacher(path: Path, seed: int = 11) -> Path:
    torch.manual_seed(seed)
    model = build_model("resnet18", width=WIDTH)
    save_model_checkpoint(path, model, {"arch": "resnet18", "width": WIDTH, "stem": "cifar", "num_classes": 10})
    return path


def run_config(data: Path, teacher: Path | None = None, epochs: int = 3) -> dict:
    config = {
        "data": str(data),
        "model": {"arch": "resnet18", "width": WIDTH},
        "method": {"name": "logit"} if teacher else {"name": "baseline"},
        "train": {"epochs": epochs, "batch_size": 64, "seed": 5},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32"},
    }
    if teacher is not None:
        config["teacher"] = {"arch": "resnet18", "width": WIDTH, "checkpoint": str(teacher)}
    return config


class Interrupted(Exception):
    """Stands in for a crash after some epochs."""


def interrupted_run(monkeypatch, config: dict, out: Path, after_epochs: int = 1) -> None:
    """Train until ``after_epochs`` epochs are saved in last.pt, then crash (no metrics.json)."""
    original = engine.train_one_epoch

    def crash_at(epoch, *args, **kwargs):
        if epoch == after_epochs:
            raise Interrupted
        return original(epoch, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train_one_epoch", crash_at)
        with pytest.raises(Interrupted):
            engine.train_run(config, out)
    assert torch.load(out / "last.pt", weights_only=True)["epochs_done"] == after_epochs
    assert not (out / "metrics.json").exists()


def histories_equal(a: dict, b: dict) -> bool:
    keys = ("loss", "train_acc", "val_acc")
    return [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data" / "dataset.pt")


# ----------------------------------------------------------------------------- stale resume (issue item 1)
def test_resume_restarts_from_scratch_when_the_dataset_content_changed(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    interrupted_run(monkeypatch, run_config(data), out)
    make_dataset(data, seed=4)  # same path, other images
    caplog.set_level(logging.INFO, logger="kdcore.train")
    resumed = engine.train_run(run_config(data), out)
    assert "different dataset; starting from epoch 0" in caplog.text and "resuming" not in caplog.text
    straight = engine.train_run(run_config(data), tmp_path / "straight")
    assert histories_equal(resumed, straight) and resumed["results"] == {
        **straight["results"],
        "train_seconds": resumed["results"]["train_seconds"],
    }


def test_resume_restarts_from_scratch_when_the_teacher_file_changed(tmp_path, data, monkeypatch, caplog):
    teacher = make_teacher(tmp_path / "teacher.pt")
    out = tmp_path / "run"
    interrupted_run(monkeypatch, run_config(data, teacher), out)
    make_teacher(teacher, seed=12)  # retrained teacher at the same path
    caplog.set_level(logging.INFO, logger="kdcore.train")
    resumed = engine.train_run(run_config(data, teacher), out)
    assert "different teacher checkpoint; starting from epoch 0" in caplog.text and "resuming" not in caplog.text
    assert histories_equal(resumed, engine.train_run(run_config(data, teacher), tmp_path / "straight"))
    assert len(resumed["teacher"]["sha256"]) == 64


def test_resume_restarts_from_scratch_when_the_code_changed(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    interrupted_run(monkeypatch, run_config(data), out)
    monkeypatch.setattr(engine, "run_code_digest", lambda method, **_: "0" * 16)
    caplog.set_level(logging.INFO, logger="kdcore.train")
    metrics = engine.train_run(run_config(data), out)
    assert "different kdcore code; starting from epoch 0" in caplog.text and "resuming" not in caplog.text
    assert metrics["environment"]["code_digest"] == "0" * 16


def test_resume_of_an_unchanged_run_still_resumes(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    interrupted_run(monkeypatch, run_config(data), out, after_epochs=2)
    caplog.set_level(logging.INFO, logger="kdcore.train")
    resumed = engine.train_run(run_config(data), out)
    assert "resuming from epoch 2" in caplog.text and "starting from epoch 0" not in caplog.text
    assert histories_equal(resumed, engine.train_run(run_config(data), tmp_path / "straight"))


def _cli_train(src: Path, cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.Popen(
        [sys.executable, "-m", "kdcore", "train", "--config", "run.yaml", "--out", "run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_cli_run_killed_then_rerun_after_a_loss_edit_restarts_from_epoch_0(tmp_path, data):
    """The 'code fix after an interrupted study' case, end to end on a copy of the source tree."""
    src = tmp_path / "src"
    shutil.copytree(SRC / "kdcore", src / "kdcore", ignore=shutil.ignore_patterns("__pycache__"))
    config = run_config(data, epochs=12)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    first = _cli_train(src, tmp_path)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "last.pt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "metrics.json").exists()

    loss_file = src / "kdcore" / "methods" / "baseline.py"
    code = loss_file.read_text()
    edited = code.replace(
        "ce = cross_entropy(outputs.student_logits, outputs.targets)",
        "ce = 1.0 * cross_entropy(outputs.student_logits, outputs.targets)",
    )
    assert edited != code
    loss_file.write_text(edited)
    second = _cli_train(src, tmp_path)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert "different kdcore code; starting from epoch 0" in stderr and "resuming" not in stderr
    assert "epoch 1/12" in stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, 13))


# ----------------------------------------------------------------------------- finished run folders (item 2)
def test_finished_run_folder_is_refused_and_left_untouched(tmp_path, data):
    out = tmp_path / "run"
    engine.train_run(run_config(data, epochs=1), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunFolderError, match=r"already holds a finished run \(metrics.json\); use --force"):
        engine.train_run(run_config(data, epochs=2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_force_removes_the_old_results_before_training(tmp_path, data, monkeypatch):
    out = tmp_path / "run"
    engine.train_run(run_config(data, epochs=1), out)
    seen = []
    original = engine.train_one_epoch

    def spy(epoch, *args, **kwargs):
        seen.append(sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE))
        return original(epoch, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    metrics = engine.train_run(run_config(data, epochs=2), out, force=True)
    assert seen[0] == []  # nothing of the old run is left while the new one trains
    assert metrics["results"]["epochs"] == 2
    assert json.loads((out / "metrics.json").read_text())["results"]["epochs"] == 2


def test_cli_refuses_a_finished_run_and_force_retrains(tmp_path, data, capsys):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(data, epochs=1)))
    args = ["-q", "train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a finished run" in err[0] and "--force" in err[0]
    assert cli.main([*args, "--force"]) == 0


def test_a_fresh_start_removes_stale_outputs_and_temporaries_of_an_older_run(tmp_path, data):
    out = tmp_path / "run"
    out.mkdir()
    make_teacher(out / "final.pt", seed=1)  # checkpoints of an older kdcore run in this folder
    make_teacher(out / "best.pt", seed=2)
    old = {name: (out / name).read_bytes() for name in ("best.pt", "final.pt")}
    (out / ".last.pt.x1y2z3.tmp").write_bytes(b"half a file from a write killed mid-way")
    engine.train_run(run_config(data, epochs=1), out)
    assert all((out / name).read_bytes() != old[name] for name in old)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "final.pt", "metrics.json", "test_logits.npz"]


# ----------------------------------------------------------------------------- one process per run folder (item 3)
def _hold_lock(folder: str, ready) -> None:
    with lock_run_folder(folder):
        ready.set()
        time.sleep(60)


def test_second_process_on_a_run_folder_fails_at_once_naming_the_holder(tmp_path, data):
    out = tmp_path / "run"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), ready))
    holder.start()
    try:
        assert ready.wait(30)
        started = time.monotonic()
        with pytest.raises(RunFolderError, match=rf"in use by pid {holder.pid} on host {socket.gethostname()}"):
            engine.train_run(run_config(data, epochs=1), out)
        assert time.monotonic() - started < 5
        assert not (out / "metrics.json").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    # kill -9 of the holder releases the lock: the next run proceeds
    engine.train_run(run_config(data, epochs=1), out)
    assert (out / "metrics.json").exists() and not (out / LOCK_FILE).exists()


# ----------------------------------------------------------------------------- corrupt last.pt (item 12)
def test_truncated_last_pt_is_moved_aside_and_the_run_starts_over(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    interrupted_run(monkeypatch, run_config(data), out, after_epochs=2)
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    caplog.set_level(logging.INFO, logger="kdcore.train")
    metrics = engine.train_run(run_config(data), out)
    moved = list(out.glob("last.pt.corrupt-*"))
    assert len(moved) == 1 and f"moved it to {moved[0].name} and starting from epoch 0" in caplog.text
    assert histories_equal(metrics, engine.train_run(run_config(data), tmp_path / "straight"))


# ----------------------------------------------------------------------------- failing writes (item 11)
def test_full_disk_while_writing_last_pt_is_one_line_and_keeps_the_previous_file(tmp_path, data, monkeypatch, capsys):
    calls = {"last": 0}
    original = atomic.open_for_writing

    def full_disk_on_second_last_pt(path: Path):
        if path.name.startswith(".last.pt."):
            calls["last"] += 1
            if calls["last"] == 2:
                return open("/dev/full", "wb")  # the kernel's own ENOSPC
        return original(path)

    monkeypatch.setattr(atomic, "open_for_writing", full_disk_on_second_last_pt)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(data)))
    out = tmp_path / "run"
    assert cli.main(["-q", "train", "--config", str(tmp_path / "run.yaml"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no space left on device while writing {out / 'last.pt'}; the previous last.pt is intact"]
    assert torch.load(out / "last.pt", weights_only=True)["epochs_done"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_output_path_that_is_a_folder_is_one_line(tmp_path, data, capsys):
    out = tmp_path / "run"
    (out / "final.pt").mkdir(parents=True)
    (out / "final.pt" / "x").write_text("x")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(data, epochs=1)))
    assert cli.main(["-q", "train", "--config", str(tmp_path / "run.yaml"), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out / "final.pt") in err[0] and "is a folder" in err[0], err


def test_out_that_is_a_file_is_one_line(tmp_path, data, capsys):
    (tmp_path / "run").write_text("not a folder")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(data, epochs=1)))
    assert cli.main(["-q", "train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: file exists") and str(tmp_path / "run") in err[0]


# ----------------------------------------------------------------------------- teacher and classes (items 13, 5)
def test_teacher_whose_header_lies_about_its_shapes_is_one_line(tmp_path, data):
    lying = tmp_path / "teacher.pt"
    model = build_model("resnet18", width=WIDTH)
    save_weights(lying, model.state_dict(), {"arch": "resnet18", "width": 8, "stem": "cifar", "num_classes": 10})
    config = run_config(data, lying)
    config["teacher"]["width"] = 8
    with pytest.raises(CheckpointError) as info:
        engine.train_run(config, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert f"checkpoint {lying} says it holds" in message
    assert "tensor(s) of the wrong shape (first: conv1.weight is 4x3x3x3 in the file, 8x3x3x3 in the model)" in message


def test_model_outputs_must_match_the_dataset_classes(tmp_path, data):
    config = run_config(data, epochs=1)
    config["model"]["num_classes"] = 9
    with pytest.raises(DataError, match=r"the dataset has 10 classes \(class0, .*\), but model.num_classes is 9"):
        engine.train_run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
