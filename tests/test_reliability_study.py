"""A finished smoke study whose upstream files are damaged: the workflow stops before it schedules (and
deletes) anything, and ``kdcore status`` names the damage. Each test changes a copy of the shared study."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _smoke_study import CONFIGS
from _workflow_tools import snakemake

from kdcore.cli import main

pytestmark = pytest.mark.slow


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def teacher_checkpoint(root: Path) -> Path:
    found = sorted((root / "results" / "runs" / "teachers").glob("*/seed*/best.pt"))
    assert found, "the smoke study has no teacher run"
    return found[0]


def rerun_fails_naming(root: Path, needle: str) -> None:
    """``snakemake`` (a real run) on the damaged copy: one error naming the file, no job, nothing deleted."""
    before = snapshot(root / "results")
    proc = snakemake(root, "--cores", "1", *CONFIGS, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert needle in output and "Traceback" not in output
    assert "rule " not in proc.stdout  # nothing was scheduled
    assert snapshot(root / "results") == before


def test_a_truncated_teacher_checkpoint_stops_the_rerun_before_any_job(smoke_study, tmp_path):
    root = smoke_study.copy(tmp_path / "wf")
    best = teacher_checkpoint(root)
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    rerun_fails_naming(root, f"{best.relative_to(root)} changed after its run finished")


def test_a_dataset_with_one_label_edited_stops_the_rerun_before_any_job(smoke_study, tmp_path):
    root = smoke_study.copy(tmp_path / "wf")
    dataset = root / "results" / "data" / "dataset.pt"
    obj = torch.load(dataset, weights_only=True)
    obj["train_labels"][0] = (obj["train_labels"][0] + 1) % len(obj["classes"])
    torch.save(obj, dataset)
    rerun_fails_naming(root, "results/data/dataset.pt: fingerprint mismatch")


def test_a_deleted_teacher_checkpoint_is_named_by_the_workflow_and_by_status(smoke_study, tmp_path, capsys):
    root = smoke_study.copy(tmp_path / "wf")
    best = teacher_checkpoint(root)
    best.unlink()
    rerun_fails_naming(root, f"{best.relative_to(root)} is missing, but its run finished")
    assert main(["-q", "status", str(root / "results")]) == 0
    out = capsys.readouterr().out
    assert f"{best.parent.relative_to(root / 'results' / 'runs').as_posix()}  best.pt missing" in out
