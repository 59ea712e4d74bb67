"""`kdcore status` on a study interrupted part-way: run folders and logs made by the real engine."""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdcore import engine
from kdcore.checkpoint import read_checkpoint
from kdcore.cli import main
from kdcore.config import validate_study_config
from kdcore.data import prepare_dataset
from kdcore.status import format_duration, render_text, study_status

STUDY = {
    "data": {"source": "synthetic", "path": None, "download": False, "synthetic": {"n_train": 120, "n_test": 40}},
    "model": {"width": 4},
    "epochs": {"teacher": 1, "student": 2},
    "teachers": {"seeds": [0], "distill_seed": 0},
    "pairs": [{"teacher": "resnet34", "student": "resnet18"}],
    "methods": {"logit": {"grid": {"alpha": [0.5]}, "fixed": {"alpha": 0.5}}},
    "selection": {"enabled": False},
    "final": {"seeds": [0, 1]},
    "ablations": {"stem": {"enabled": False}, "clip": {"enabled": False}},
}


class Killed(Exception):
    """Stands in for kill -9: the process ends between two epochs and writes nothing more."""


def train(results: Path, path: str, arch: str, epochs: int, *, kill_after: int | None = None, **extra: Any) -> None:
    """One run as a workflow job makes it: run folder results/runs/<path>, log results/logs/<path>.log."""
    log = results / "logs" / f"{path}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("kdcore")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    config = {
        "data": str(results / "data" / "dataset.pt"),
        "model": {"arch": arch, "width": 4},
        "train": {"epochs": epochs, "batch_size": 50, "seed": 0},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32"},
        **extra,
    }
    real_epoch = engine.train_one_epoch
    calls = []

    def epoch_then_kill(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if kill_after is not None and len(calls) > kill_after:
            raise Killed
        return real_epoch(*args, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine, "train_one_epoch", epoch_then_kill)
            engine.train_run(config, results / "runs" / path)
    except Killed:
        pass
    except Exception:
        handler.stream.write(traceback.format_exc())  # the workflow sends stderr to the job's log
    finally:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """teacher done, baseline seed0 done, baseline seed1 killed after epoch 1 of 2, final seed0 failed,
    final seed1 not started."""
    results = tmp_path_factory.mktemp("study") / "results"
    prepare_dataset({**STUDY["data"], "val_size": 20}, results / "data" / "dataset.pt")
    train(results, "teachers/resnet34/seed0", "resnet34", 1)
    train(results, "baselines/resnet18/seed0", "resnet18", 2)
    train(results, "baselines/resnet18/seed1", "resnet18", 2, kill_after=1)
    missing = results / "runs" / "teachers" / "resnet34" / "seed9" / "best.pt"
    teacher = {"arch": "resnet34", "width": 4, "checkpoint": str(missing)}
    train(results, "final/resnet34-resnet18/logit/seed0", "resnet18", 2, method={"name": "logit"}, teacher=teacher)
    return results


def by_path(status) -> dict[str, Any]:
    return {run.path: run for run in status.runs}


def test_status_of_a_study_interrupted_part_way(results):
    status = study_status(results, validate_study_config(STUDY))
    assert status.counts == {
        "teacher": {"done": 1, "damaged": 0, "running": 0, "interrupted": 0, "failed": 0, "pending": 0},
        "baseline": {"done": 1, "damaged": 0, "running": 1, "interrupted": 0, "failed": 0, "pending": 0},
        "final": {"done": 0, "damaged": 0, "running": 0, "interrupted": 0, "failed": 1, "pending": 1},
    }
    runs = by_path(status)
    running = runs["baselines/resnet18/seed1"]
    resume = read_checkpoint(results / "runs" / "baselines" / "resnet18" / "seed1" / "last.pt")
    assert (running.epoch, running.epochs) == (resume["epochs_done"], 2) == (1, 2)
    assert running.val_acc == pytest.approx(resume["history"][-1]["val_acc"], abs=5e-5)  # the log's 2 decimals
    assert 0 <= running.eta_s <= 60
    failed = runs["final/resnet34-resnet18/logit/seed0"]
    assert failed.last_line.startswith("kdcore.errors.CheckpointError") and "seed9/best.pt" in failed.last_line
    done = runs["baselines/resnet18/seed0"]
    metrics = json.loads((results / "runs" / "baselines" / "resnet18" / "seed0" / "metrics.json").read_text())
    assert done.val_acc == metrics["results"]["best_val_acc"] and done.epoch == 2
    assert runs["final/resnet34-resnet18/logit/seed1"].epochs == 2  # pending, length from the config
    assert status.time_left_s is not None and status.time_left_s > running.eta_s  # pending work counts too


def test_a_run_without_progress_for_long_is_interrupted_and_the_time_left_assumes_no_worker(results):
    later = time.time() + 3600
    status = study_status(results, validate_study_config(STUDY), now=later)
    assert by_path(status)["baselines/resnet18/seed1"].state == "interrupted"
    assert status.counts["baseline"]["running"] == 0


def test_without_a_config_only_what_is_on_disk_is_listed(results):
    status = study_status(results)
    assert "final/resnet34-resnet18/logit/seed1" not in by_path(status)
    assert status.counts["final"] == {
        "done": 0,
        "damaged": 0,
        "running": 0,
        "interrupted": 0,
        "failed": 1,
        "pending": 0,
    }


def test_progress_from_last_pt_when_the_log_is_gone(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (copy / "logs" / "baselines" / "resnet18" / "seed1.log").unlink()
    run = by_path(study_status(copy, validate_study_config(STUDY)))["baselines/resnet18/seed1"]
    history = read_checkpoint(copy / "runs" / "baselines" / "resnet18" / "seed1" / "last.pt")["history"]
    assert (run.state, run.epoch, run.epochs) == ("running", 1, 2)
    assert run.val_acc == history[-1]["val_acc"]
    assert run.eta_s == pytest.approx(history[0]["seconds"])


def test_cli_text_and_json(results, tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(STUDY), encoding="utf-8")
    assert main(["-q", "status", str(results), "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "baselines/resnet18/seed1  epoch 1/2  val " in text
    assert "final/resnet34-resnet18/logit/seed0  kdcore.errors.CheckpointError" in text
    assert "estimated time left: 0:0" in text and "(1 running)" in text
    assert main(["-q", "status", str(results), "--config", str(config), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["counts"]["final"]["pending"] == 1
    assert {r["state"] for r in record["runs"]} == {"done", "running", "failed", "pending"}
    assert record["time_left"] == format_duration(record["time_left_s"])


def test_render_text_of_an_empty_results_folder(tmp_path):
    text = render_text(study_status(tmp_path))
    assert "no runs found" in text and "estimated time left: 0:00:00" in text


def test_format_duration_uses_timedelta():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(90061) == "1 day, 1:01:01"
    assert format_duration(None) == "?"


def test_a_finished_teacher_whose_checkpoint_was_deleted_is_damaged_not_done(results, tmp_path, capsys):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (copy / "runs" / "teachers" / "resnet34" / "seed0" / "best.pt").unlink()
    run = by_path(study_status(copy))["teachers/resnet34/seed0"]
    assert run.state == "damaged" and run.problem.startswith("best.pt missing")
    assert main(["-q", "status", str(copy)]) == 0
    text = capsys.readouterr().out
    assert "teachers/resnet34/seed0  best.pt missing (restore it, or remove metrics.json" in text


def test_an_edited_metrics_json_is_damaged(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    metrics = copy / "runs" / "baselines" / "resnet18" / "seed0" / "metrics.json"
    record = json.loads(metrics.read_text())
    record["results"]["test_acc_best"] = 0.99
    metrics.write_text(json.dumps(record))
    run = by_path(study_status(copy))["baselines/resnet18/seed0"]
    assert run.state == "damaged" and "edited after the run finished" in run.problem


def test_status_of_a_folder_that_does_not_exist_is_one_error_line(tmp_path, capsys):
    assert main(["-q", "status", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: results folder {tmp_path / 'nope'} does not exist (give the study's results folder)"]
