"""Faults in files and inputs outside a training run: durable atomic writes, class folders that do not match
num_classes, the split's provenance, incomplete paper zips, and provenance without git."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore import cli, provenance
from kdcore.atomic import WriteError, atomic_path, atomic_write_json, atomic_write_text
from kdcore.data import load_dataset, prepare_dataset, split_name
from kdcore.devices import make_placement
from kdcore.errors import DataError
from kdcore.reference import classify_member, expected_members, import_reference


# ----------------------------------------------------------------------------- atomic writes (items 14, 11)
def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync
    target = tmp_path / "out.json"

    def spy(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_json(target, {"a": 1})
    assert len(synced) == 2
    (tmp_file, target_existed), (folder, _) = synced
    assert Path(tmp_file).name.startswith(".out.json.") and not target_existed  # data durable before the rename
    assert folder == str(tmp_path)  # the rename itself made durable


def test_full_disk_is_one_write_error_naming_the_file_and_keeping_the_old_one(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(WriteError) as info, atomic_path(target) as tmp, open("/dev/full", "w") as full:
        tmp.write_text("new")
        full.write("x" * 10000)
        full.flush()
    assert str(info.value) == f"no space left on device while writing {target}; the previous metrics.json is intact"
    assert isinstance(info.value, OSError)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(WriteError, match=r"new.json was not written"), atomic_path(tmp_path / "new.json"):
        raise OSError(28, "No space left on device")
    assert not (tmp_path / "new.json").exists()


def test_writing_onto_a_folder_or_under_a_file_is_one_line(tmp_path):
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(WriteError, match=r"cannot write .*folder.json: it is a folder, not a file"):
        atomic_write_text(tmp_path / "folder.json", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=r"while writing .*file/out.json; out.json was not written") as info:
        atomic_write_text(tmp_path / "file" / "out.json", "x")
    assert "\n" not in str(info.value)


def test_cli_prints_an_os_error_as_one_line_and_exits_1(tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    out = tmp_path / "blocker" / "dataset.pt"
    spec = tmp_path / "data.yaml"
    spec.write_text("source: synthetic\nsynthetic: {n_train: 40, n_test: 10, seed: 0}\nval_size: 10\n")
    assert cli.main(["-q", "prepare-data", "--config", str(spec), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(out) in err[0], err
    assert cli.describe_os_error(FileNotFoundError(2, "No such file or directory", "x/y.pt")) == (
        "no such file or directory: x/y.pt"
    )
    assert cli.describe_os_error(OSError(28, "No space left on device")) == "no space left on device"


# ----------------------------------------------------------------------------- classes (item 5)
def _write_tree(root: Path, classes: dict[str, tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    for cls, counts in classes.items():
        for split, n in zip(("train", "test"), counts, strict=True):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize(("n_classes", "needle"), [(9, "found 9 classes"), (11, "found 11 classes")])
def test_class_folders_must_number_num_classes_at_prepare_time(tmp_path, n_classes, needle):
    root = tmp_path / "tree"
    _write_tree(root, {f"c{i:02d}": (2, 1) for i in range(n_classes)})
    out = tmp_path / "dataset.pt"
    with pytest.raises(
        DataError, match=rf"{needle} \(c00, c01, .*\), but the data spec asks for 10 \(dataset cifar10\)"
    ):
        prepare_dataset({"source": "folder", "path": str(root), "val_size": 2}, out)
    assert not out.exists()
    summary = prepare_dataset({"source": "folder", "path": str(root), "val_size": 2, "num_classes": n_classes}, out)
    assert len(summary["classes"]) == n_classes == torch.load(out, weights_only=True)["num_classes"]


def test_artefact_whose_class_count_contradicts_its_names_is_refused(tmp_path, synthetic_dataset):
    raw = torch.load(synthetic_dataset, weights_only=True)
    raw["num_classes"] = 11
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=r"records num_classes 11 but 10 class names"):
        load_dataset(tmp_path / "bad.pt")


# ----------------------------------------------------------------------------- split provenance (issue 12, item 3)
def test_split_name_is_paper_only_for_the_papers_torchvision_split():
    paper = {"val_size": 5000, "seed": 1234}
    assert split_name("torchvision", paper, None) == "paper"
    assert split_name("folder", paper, None) == "other"  # a class-sorted order permuted: other images
    assert split_name("torchvision", {**paper, "seed": 1}, None) == "other"
    assert split_name("torchvision", {**paper, "val_size": 1000}, None) == "other"
    assert split_name("torchvision", paper, {"train": 100, "val": None, "test": None, "seed": 0}) == "other"


def test_split_name_is_stored_in_the_artefact_and_reported_by_the_dataset(synthetic_dataset):
    assert torch.load(synthetic_dataset, weights_only=True)["split"]["name"] == "other"
    assert load_dataset(synthetic_dataset).summary()["split"] == "other"


# ----------------------------------------------------------------------------- importer (item 6)
def paper_member(member: str) -> dict:
    """A minimal valid paper results.json / fidelity.json for ``member``, consistent with its path."""
    stage, f = classify_member(member.replace("fidelity.json", "results.json"))
    student, teacher = f["student"], f.get("teacher")
    if member.endswith("fidelity.json"):
        fields = ("student_test_acc", "teacher_test_acc", "top1_agreement", "kl_t1", "kl_t4")
        return {"student_arch": student, "teacher_arch": teacher, **dict.fromkeys(fields, 0.5)}
    kd = {"teacher": "none", "baseline": "none", "stem": "none"}.get(stage, f.get("method", "none"))
    history = [{"epoch": 1, "val_acc": 0.5, "loss_ce": 1.0, "train_acc": 0.5, "grad_norm_max": 1.0}]
    result = {
        "model": student,
        "teacher": teacher,
        "kd_type": kd,
        "alpha": float(f.get("alpha", 0.5)),
        "temperature": float(f.get("temp", 4)),
        "feat_beta": 0.5,
        "stem": f.get("stem", "cifar"),
        "seed": int(f["seed"]),
        "epochs": 1,
        "best_val_acc": 0.5,
        "best_val_epoch": 1,
        "test_acc_best": 0.5,
        "test_acc_final": 0.5,
        "history": history,
    }
    if stage == "clip":
        result.update(no_proj_clip=True, grad_norm_max_overall=1.0, proj_grad_norm_max_overall=0.2)
    return result


def _zip_without(tmp_path: Path, *left_out: str) -> Path:
    """A zip with every member of the paper's layout (a minimal valid result each) except ``left_out``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    zip_path = tmp_path / "paper.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for member in expected_members():
            if member not in left_out:
                zf.writestr(member, json.dumps(paper_member(member)))
    return zip_path


def test_importer_fails_on_a_missing_run_or_fidelity_file_naming_it(tmp_path):
    run = "runs/teachers/r101/seed2/results.json"
    fid = "runs/final/resnet50_to_resnet34_feature/seed3/fidelity.json"
    zip_path = _zip_without(tmp_path, run, fid)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"holds 164 of the 166 files .*missing: .*fidelity.json, .*r101/seed2") as e:
        import_reference(zip_path, out)
    assert "--allow-partial" in str(e.value) and not out.exists()
    assert import_reference(_zip_without(tmp_path / "full"), tmp_path / "full-out") == 126


def test_importer_allow_partial_imports_the_rest_and_prints_the_list(tmp_path, capsys):
    run = "runs/stem_ablation/resnet50_imagenet/seed0/results.json"
    zip_path = _zip_without(tmp_path, run)
    out = tmp_path / "out"
    assert cli.main(["-q", "import-reference", str(zip_path), str(out)]) == 2
    assert "missing: " + run in capsys.readouterr().err
    assert cli.main(["-q", "import-reference", str(zip_path), str(out), "--allow-partial"]) == 0
    printed = capsys.readouterr().out
    assert "imported 125 runs" in printed and f"  {run}" in printed and "missing (1)" in printed
    imported = sorted(out.rglob("metrics.json"))
    assert len(imported) == 125
    assert json.loads(imported[0].read_text())["data"]["split"] == "paper"  # the paper's own runs


# ----------------------------------------------------------------------------- provenance (issue 13)
def test_provenance_without_git_or_outside_a_checkout_is_none(tmp_path, monkeypatch):
    assert provenance.git_commit(tmp_path) is None  # not a git checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert provenance.git_commit() is None
    info = provenance.environment_info(make_placement({"device": "cpu", "precision": "fp32", "channels_last": False}))
    assert info["git_commit"] is None and info["torch"] == torch.__version__


def test_run_code_digest_is_the_workflow_digest_of_the_training_modules(tmp_path):
    import shutil

    from kdcore.codehash import code_digest

    digest = provenance.run_code_digest("feature")
    assert digest == code_digest(("kdcore.engine", "kdcore.methods", "kdcore.methods.feature"), provenance.SRC_ROOT)
    copy = tmp_path / "src"
    shutil.copytree(provenance.SRC_ROOT / "kdcore", copy / "kdcore", ignore=shutil.ignore_patterns("__pycache__"))
    assert provenance.run_code_digest("feature", copy) == digest  # a copy elsewhere: same code, same digest
    loss = copy / "kdcore" / "methods" / "feature.py"
    loss.write_text(loss.read_text() + "\nEDITED = 1\n")
    assert provenance.run_code_digest("feature", copy) != digest
    assert provenance.run_code_digest("logit", copy) == provenance.run_code_digest("logit")  # other methods unaffected
