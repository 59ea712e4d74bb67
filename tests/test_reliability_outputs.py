"""Nothing finished is overwritten without being asked, and no edited result reaches the tables.

Every writing command (train, fidelity, prepare-data, import-reference) refuses an existing output that it
did not make (kdcore.atomic.claim_outputs) unless --force; a finished run's metrics.json carries the digests
of itself and its checkpoints (kdcore.runfolder), which the analysis checks.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from kdcore import cli, engine
from kdcore.analysis.table import build_run_table
from kdcore.atomic import OutputExistsError, claim_outputs, file_maker
from kdcore.checkpoint import save_model_checkpoint
from kdcore.data import prepare_dataset
from kdcore.errors import DataError
from kdcore.models import build_model
from kdcore.reference import import_reference
from kdcore.runfolder import INTEGRITY_KEY, file_digest, verify_run_file

WIDTH = 4


def run_config(data: Path, teacher: Path | None = None, epochs: int = 1) -> dict:
    config = {
        "data": str(data),
        "model": {"arch": "resnet18", "width": WIDTH},
        "method": {"name": "logit"} if teacher else {"name": "baseline"},
        "train": {"epochs": epochs, "batch_size": 64, "seed": 5},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32"},
        "labels": {"stage": "baseline", "run_id": "baselines/resnet18/seed5"},
    }
    if teacher is not None:
        config["teacher"] = {"arch": "resnet18", "width": WIDTH, "checkpoint": str(teacher)}
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, finished run folder) made once by the real engine; tests copy the folder before changing it."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "dataset.pt"
    prepare_dataset(
        {"source": "synthetic", "synthetic": {"n_train": 192, "n_test": 64, "seed": 3}, "val_size": 64}, data
    )
    engine.train_run(run_config(data), root / "runs" / "baselines" / "resnet18" / "seed5")
    return data, root / "runs"


def copy_runs(finished: tuple[Path, Path], dst: Path) -> Path:
    return Path(shutil.copytree(finished[1], dst))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def paper_zip(path: Path) -> Path:
    history = [{"epoch": e + 1, "val_acc": 0.9, "loss_ce": 1.0, "loss_kd": 0.0, "loss_total": 1.0} for e in range(2)]
    result = {
        "model": "resnet18",
        "teacher": None,
        "kd_type": "none",
        "seed": 0,
        "epochs": 2,
        "best_val_acc": 0.95,
        "best_val_epoch": 2,
        "test_acc_best": 0.95,
        "test_acc_final": 0.94,
        "history": history,
    }
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("runs/final/baseline/resnet18/seed0/results.json", json.dumps(result))
    return path


# ----------------------------------------------------------------------------- item 1: the importer
def test_importer_refuses_a_folder_that_holds_runs_of_ours_and_changes_nothing(tmp_path, finished, capsys):
    runs = copy_runs(finished, tmp_path / "runs")
    before = snapshot(runs)
    zip_path = paper_zip(tmp_path / "paper.zip")
    assert cli.main(["-q", "import-reference", str(zip_path), str(runs), "--allow-partial"]) == 2
    line = one_error_line(capsys)
    assert "holds files the importer did not make" in line and "made by `kdcore train`" in line
    assert str(runs / "baselines" / "resnet18" / "seed5") in line
    assert snapshot(runs) == before


def test_importer_writes_into_an_empty_folder_and_again_into_its_own(tmp_path):
    zip_path, out = paper_zip(tmp_path / "paper.zip"), tmp_path / "reference"
    assert import_reference(zip_path, out, allow_partial=True) == 1
    assert file_maker(out / "baseline" / "resnet18" / "seed0" / "metrics.json") == "import-reference"
    assert import_reference(zip_path, out, allow_partial=True) == 1  # an import-only folder: re-import is fine
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"notes.txt, not made by kdcore"):
        import_reference(zip_path, out, allow_partial=True)


# ----------------------------------------------------------------------------- item 3: train
def test_train_into_the_folder_of_its_own_teacher_checkpoint_is_refused(tmp_path, finished, capsys):
    data = finished[0]
    folder = tmp_path / "run"
    folder.mkdir()
    teacher = folder / "best.pt"
    torch.manual_seed(0)
    spec = {"arch": "resnet18", "width": WIDTH, "stem": "cifar", "num_classes": 10}
    save_model_checkpoint(teacher, build_model("resnet18", width=WIDTH), spec)
    before = teacher.read_bytes()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(data, teacher=teacher)))
    for extra in ([], ["--force"]):
        args = ["-q", "train", "--config", str(tmp_path / "run.yaml"), "--out", str(folder), *extra]
        assert cli.main(args) == 2
        line = one_error_line(capsys)
        assert "config key 'teacher.checkpoint'" in line and "overwrite its own input" in line
    assert teacher.read_bytes() == before


def test_train_refuses_a_best_pt_that_no_kdcore_run_made_unless_forced(tmp_path, finished, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "best.pt").write_bytes(b"someone else's file")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(finished[0])))
    args = ["-q", "train", "--config", str(tmp_path / "run.yaml"), "--out", str(folder)]
    assert cli.main(args) == 2
    line = one_error_line(capsys)
    assert f"{folder / 'best.pt'} exists and it is not a file that kdcore makes" in line and "--force" in line
    assert (folder / "best.pt").read_bytes() == b"someone else's file"
    assert cli.main([*args, "--force"]) == 0
    assert file_maker(folder / "best.pt") == "train"


# ----------------------------------------------------------------------------- item 4: fidelity, prepare-data
def test_fidelity_refuses_to_overwrite_a_metrics_json(tmp_path, finished, capsys):
    runs = copy_runs(finished, tmp_path / "runs")
    run = runs / "baselines" / "resnet18" / "seed5"
    before = (run / "metrics.json").read_bytes()
    args = ["-q", "fidelity", "--student", str(run), "--teacher", str(run), "--at", "final"]
    assert cli.main([*args, "--out", str(run / "metrics.json")]) == 2
    line = one_error_line(capsys)
    assert "metrics.json exists and it was made by `kdcore train`, not by `kdcore fidelity`" in line
    assert (run / "metrics.json").read_bytes() == before
    assert cli.main([*args, "--out", str(run / "fidelity.json")]) == 0
    assert cli.main([*args, "--out", str(run / "fidelity.json")]) == 0  # its own output: rewritten


def test_prepare_data_refuses_to_overwrite_a_checkpoint_and_force_overrides(tmp_path, finished, capsys):
    runs = copy_runs(finished, tmp_path / "runs")
    best = runs / "baselines" / "resnet18" / "seed5" / "best.pt"
    before = best.read_bytes()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({"source": "synthetic", "synthetic": {"n_train": 100, "n_test": 20}, "val_size": 20})
    )
    assert cli.main(["-q", "prepare-data", "--config", str(spec), "--out", str(best)]) == 2
    assert "made by `kdcore train`, not by `kdcore prepare-data`" in one_error_line(capsys)
    assert best.read_bytes() == before
    data = tmp_path / "dataset.pt"
    assert cli.main(["-q", "prepare-data", "--config", str(spec), "--out", str(data)]) == 0
    assert cli.main(["-q", "prepare-data", "--config", str(spec), "--out", str(data)]) == 0  # its own output
    assert cli.main(["-q", "prepare-data", "--config", str(spec), "--out", str(best), "--force"]) == 0
    assert file_maker(best) == "prepare-data"


def test_claim_outputs_names_what_made_the_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text(json.dumps({"kind": "fidelity"}))
    claim_outputs([target], "fidelity")
    with pytest.raises(OutputExistsError, match=r"made by `kdcore fidelity`, not by `kdcore train`"):
        claim_outputs([target], "train")
    claim_outputs([tmp_path / "missing.json"], "train")


# ----------------------------------------------------------------------------- item 5: digests
def test_finished_run_records_the_digests_of_its_metrics_and_checkpoints(finished):
    run = finished[1] / "baselines" / "resnet18" / "seed5"
    integrity = json.loads((run / "metrics.json").read_text())[INTEGRITY_KEY]
    assert integrity["files"] == {name: file_digest(run / name) for name in ("best.pt", "final.pt", "test_logits.npz")}
    verify_run_file(run / "best.pt")


def test_hand_edited_metrics_is_refused_by_the_analysis_naming_the_file(tmp_path, finished):
    runs = copy_runs(finished, tmp_path / "runs")
    metrics = runs / "baselines" / "resnet18" / "seed5" / "metrics.json"
    build_run_table([metrics])
    record = json.loads(metrics.read_text())
    record["results"]["test_acc_best"] = 0.95
    metrics.write_text(json.dumps(record, indent=2))
    with pytest.raises(DataError, match=r"metrics.json: edited after its run finished.*accept-edit"):
        build_run_table([metrics])
    record.pop(INTEGRITY_KEY)
    metrics.write_text(json.dumps(record, indent=2))
    with pytest.raises(DataError, match=r"written by kdcore's engine but has no integrity digest"):
        build_run_table([metrics])


def test_an_edit_accepted_explicitly_is_recorded_and_logged(tmp_path, finished, capsys, caplog):
    runs = copy_runs(finished, tmp_path / "runs")
    metrics = runs / "baselines" / "resnet18" / "seed5" / "metrics.json"
    record = json.loads(metrics.read_text())
    record["results"]["test_acc_best"] = 0.5
    metrics.write_text(json.dumps(record, indent=2))
    with pytest.raises(SystemExit):  # --reason is required
        cli.main(["-q", "accept-edit", str(metrics.parent)])
    capsys.readouterr()
    assert cli.main(["-q", "accept-edit", str(metrics), "--reason", "   "]) == 2
    assert "--reason" in one_error_line(capsys)
    assert cli.main(["-q", "accept-edit", str(metrics), "--reason", "test set relabelled"]) == 0
    override = json.loads(metrics.read_text())[INTEGRITY_KEY]["overrides"][-1]
    assert override["reason"] == "test set relabelled" and override["user"]
    with caplog.at_level(logging.WARNING, logger="kdcore.train"):
        table = build_run_table([metrics])
    assert table["test_best"].iloc[0] == pytest.approx(50.0)
    assert "edited by hand, accepted on" in caplog.text and "test set relabelled" in caplog.text
