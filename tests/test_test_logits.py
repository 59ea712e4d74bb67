"""Every run stores its test logits (kdcore.predictions); fidelity from them (kdcore.fidelity) equals fidelity
from the checkpoints' own float32 logits within float16 rounding, and its formulas equal torch's; the
protocol audit (runtime.audit_test_every_epoch) changes nothing that a run selects, checkpoints or reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore import engine
from kdcore.checkpoint import load_model, read_checkpoint
from kdcore.config import RUNTIME_DEFAULTS
from kdcore.data import load_dataset, prepare_dataset
from kdcore.devices import make_placement
from kdcore.errors import DataError
from kdcore.fidelity import ECE_BINS, fidelity_from_stored, fidelity_measures
from kdcore.predictions import labels_fingerprint, read_test_logits, to_float16
from kdcore.runfolder import TEST_LOGITS_FILE, verify_run_file

WIDTH = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.pt"
    spec = {"source": "synthetic", "synthetic": {"n_train": 320, "n_test": 300, "seed": 3}, "val_size": 64}
    prepare_dataset(spec, path)
    return path


def run_config(dataset: Path, arch: str, method: dict | None = None, teacher: Path | None = None, **runtime) -> dict:
    config = {
        "data": str(dataset),
        "model": {"arch": arch, "width": WIDTH},
        "method": method or {"name": "baseline"},
        "train": {"epochs": 2, "batch_size": 64, "seed": 5},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32", "eval_batch_size": 128, **runtime},
        "labels": {"stage": "test"},
    }
    if teacher is not None:
        config["teacher"] = {"arch": "resnet34", "width": WIDTH, "checkpoint": str(teacher)}
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dataset) -> dict[str, Path]:
    """A teacher run and a logit-KD student run distilled from its best.pt."""
    root = tmp_path_factory.mktemp("runs")
    engine.train_run(run_config(dataset, "resnet34"), root / "teacher")
    method = {"name": "logit", "alpha": 0.5, "temperature": 4.0}
    engine.train_run(run_config(dataset, "resnet18", method, root / "teacher" / "best.pt"), root / "student")
    return {"teacher": root / "teacher", "student": root / "student"}


def test_a_run_stores_its_test_logits_and_their_argmax_gives_its_test_accuracies(runs, dataset):
    folder = runs["student"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {p.name for p in folder.iterdir()} == {"metrics.json", "best.pt", "final.pt", TEST_LOGITS_FILE}
    stored = read_test_logits(folder / TEST_LOGITS_FILE)
    test_labels = load_dataset(dataset).test_labels.numpy()
    assert stored.logits_best.dtype == np.float16 and stored.logits_best.shape == (300, 10)
    assert stored.logits_final.dtype == np.float16 and stored.logits_final.shape == (300, 10)
    assert stored.labels_fingerprint == labels_fingerprint(test_labels) and np.array_equal(stored.labels, test_labels)
    results = metrics["results"]
    for which in ("best", "final"):  # the engine's float32 mean of the same per-image correctness
        correct = stored.correct(which)
        assert float(np.mean(correct, dtype=np.float32)) == results[f"test_acc_{which}"]
        assert int(correct.sum()) == round(results[f"test_acc_{which}"] * 300)
    assert (stored.best_epoch, stored.final_epoch) == (results["best_epoch"], 2)
    assert TEST_LOGITS_FILE in metrics["integrity"]["files"]
    verify_run_file(folder / TEST_LOGITS_FILE)


def test_a_changed_logits_file_is_refused_by_its_run_record(runs, tmp_path):
    import shutil

    folder = shutil.copytree(runs["student"], tmp_path / "run")
    stored = read_test_logits(folder / TEST_LOGITS_FILE)
    with open(folder / TEST_LOGITS_FILE, "wb") as fh:
        np.savez(fh, format=np.array("kdcore-test-logits/1"), logits_best=stored.logits_final)
    with pytest.raises(DataError, match="changed after its run finished"):
        verify_run_file(folder / TEST_LOGITS_FILE)
    with pytest.raises(DataError, match="fingerprint"):
        read_test_logits(runs["student"] / TEST_LOGITS_FILE, fingerprint="0" * 64)


def test_float16_storage_keeps_every_top_class_within_one_and_a_half_float16_steps():
    rng = np.random.default_rng(7)
    logits = (3 * rng.standard_normal((20000, 10))).astype(np.float32)
    logits[:, 3] = logits[:, 7] + (1e-3 * rng.standard_normal(20000)).astype(np.float32)  # near ties
    plain = logits.astype(np.float16)
    assert (plain.argmax(1) != logits.argmax(1)).sum() > 100  # rounding alone would change top classes
    half = to_float16(logits)
    assert np.array_equal(half.argmax(1), logits.argmax(1))
    step = np.spacing(np.abs(logits).astype(np.float16)).astype(np.float32)
    error = np.abs(half.astype(np.float32) - logits) / step
    assert error.max() <= 1.5 and np.mean(error > 0.5) < 0.01  # only raised top classes exceed half a step


def checkpoint_logits(checkpoint: Path, dataset: Path) -> np.ndarray:
    """The float32 test logits of a checkpoint, computed afresh (the model loaded, the test set run)."""
    data = load_dataset(dataset)
    placement = make_placement({**RUNTIME_DEFAULTS, "device": "cpu", "precision": "fp32"})
    model, _ = load_model(checkpoint)
    return engine.predict_logits(model, data.test_images, placement, 100, data.normalisation).numpy()


def torch_ece(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """ECE written independently of kdcore.fidelity: a loop over the bins with torch."""
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    total = 0.0
    for b in range(ECE_BINS):
        low, high = b / ECE_BINS, (b + 1) / ECE_BINS
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = (predicted[inside] == labels[inside]).double().mean() - confidence[inside].double().mean()
            total += inside.sum().item() / labels.numel() * abs(gap.item())
    return total


def test_fidelity_from_stored_logits_equals_fidelity_from_the_checkpoints_within_float16_rounding(runs, dataset):
    data = load_dataset(dataset)
    student = read_test_logits(runs["student"] / TEST_LOGITS_FILE)
    teacher = read_test_logits(runs["teacher"] / TEST_LOGITS_FILE)
    ours = fidelity_from_stored(student, teacher, list(data.classes))
    s32 = checkpoint_logits(runs["student"] / "best.pt", dataset)
    t32 = checkpoint_logits(runs["teacher"] / "best.pt", dataset)
    assert np.array_equal(student.labels, data.test_labels.numpy())
    full = fidelity_measures(s32, t32, student.labels, list(data.classes))
    for key in ("student_test_acc", "teacher_test_acc", "top1_agreement"):  # the same image counts
        assert round(ours[key] * 300) == round(full[key] * 300) and ours[key] == full[key]
    for role in ("student", "teacher"):
        assert ours[f"per_class_acc_{role}"] == full[f"per_class_acc_{role}"]
    for key in ("kl_t1", "kl_t4", "ece_student", "ece_teacher"):
        assert ours[key] == pytest.approx(full[key], rel=2e-3, abs=2e-4), key
    # kdcore.fidelity's formulas against torch's KL and an independent ECE, on the same float32 logits
    s, t, y = torch.from_numpy(s32).double(), torch.from_numpy(t32).double(), torch.from_numpy(student.labels)
    for temperature, key in ((1.0, "kl_t1"), (4.0, "kl_t4")):
        kl = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), reduction="batchmean",
                      log_target=True)  # fmt: skip
        assert full[key] == pytest.approx(kl.item(), rel=1e-9, abs=1e-12), key
    assert full["ece_student"] == pytest.approx(torch_ece(s, y), rel=1e-9, abs=1e-12)
    assert full["ece_teacher"] == pytest.approx(torch_ece(t, y), rel=1e-9, abs=1e-12)
    assert full["top1_agreement"] == (s.argmax(1) == t.argmax(1)).double().mean().item()


def state_dicts_equal(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_audit_flag_records_test_accuracy_per_epoch_and_changes_nothing_else(dataset, tmp_path):
    config = run_config(dataset, "resnet18")
    config["train"]["epochs"] = 3
    off = engine.train_run(config, tmp_path / "off")
    on = engine.train_run({**config, "runtime": {**config["runtime"], "audit_test_every_epoch": True}}, tmp_path / "on")
    audit = [h.pop("audit_test_acc") for h in on["history"]]
    assert len(audit) == 3 and all(0.0 <= a <= 1.0 for a in audit)
    assert audit[-1] == on["results"]["test_acc_final"]
    assert all("audit_test_acc" not in h for h in off["history"])
    timing = ("seconds", "images_per_s", "train_seconds")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(on["history"]) == strip(off["history"])
    assert strip([on["results"]]) == strip([off["results"]])
    for name in ("best.pt", "final.pt"):
        assert state_dicts_equal(tmp_path / "on" / name, tmp_path / "off" / name), name
    a, b = (read_test_logits(tmp_path / d / TEST_LOGITS_FILE) for d in ("on", "off"))
    assert np.array_equal(a.logits_best, b.logits_best) and np.array_equal(a.logits_final, b.logits_final)


def test_the_run_table_names_the_logits_files_of_the_run_and_of_its_teacher(runs):
    from kdcore.analysis.table import logits_path, teacher_logits_path

    metrics = runs["student"] / "metrics.json"
    data = json.loads(metrics.read_text())
    assert logits_path(data, metrics) == str(runs["student"] / TEST_LOGITS_FILE)
    assert teacher_logits_path(data, metrics) == str(runs["teacher"] / TEST_LOGITS_FILE)
    teacher = runs["teacher"] / "metrics.json"
    assert teacher_logits_path(json.loads(teacher.read_text()), teacher) == ""
    unsealed = {k: v for k, v in data.items() if k != "integrity"}  # e.g. a run finished before runs kept logits
    assert logits_path(unsealed, metrics) == ""


def test_the_run_table_records_where_and_how_each_run_computed(runs):
    from kdcore.analysis.table import compute_kind

    for role in ("teacher", "student"):  # runtime.precision fp32 on the CPU
        environment = json.loads((runs[role] / "metrics.json").read_text())["environment"]
        assert compute_kind(environment) == "cpu/float32"
    assert compute_kind({"device": "cuda:1", "precision": "bfloat16"}) == "cuda/bfloat16"
    assert compute_kind({"device": "cpu"}) == ""
