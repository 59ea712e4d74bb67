"""Faults of a real file system: a full tmpfs and a read-only results/ folder.

These mount file systems, which needs root with the right to mount (CI runs as root); elsewhere they are
skipped with the reason. Nothing is faked: the kernel's own ENOSPC and EROFS reach kdcore.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from _workflow_tools import copy_workflow, snakemake

from kdcore import cli
from kdcore.data import prepare_dataset

SMOKE = "config/smoke.yaml"


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting is not permitted here ({proc.stderr.strip() or proc.returncode}); CI runs it as root")


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` re-mounted read-only onto itself for the block (root ignores permission bits, not this)."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_tmpfs_under_kdcore_train_is_one_line_naming_the_file(tmp_path, capsys):
    data = tmp_path / "dataset.pt"
    prepare_dataset(
        {"source": "synthetic", "synthetic": {"n_train": 192, "n_test": 64, "seed": 3}, "val_size": 64}, data
    )
    config = {
        "data": str(data),
        "model": {"arch": "resnet18", "width": 4},
        "train": {"epochs": 2, "batch_size": 64, "seed": 5},
        "runtime": {"device": "cpu", "threads": 1, "precision": "fp32"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with tmpfs(tmp_path / "disk", "300k") as disk:
        out = disk / "run"
        assert cli.main(["-q", "train", "--config", str(tmp_path / "run.yaml"), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"error: no space left on device while writing {out}/")
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


@pytest.mark.slow
def test_full_tmpfs_under_a_snakemake_study_names_the_disk_full_in_the_job_log(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    teacher = "results/runs/teachers/resnet34/seed0"
    with tmpfs(root / "results", "2200k"):  # room for the smoke dataset (1.5 MB), not for the teacher's files
        proc = snakemake(root, f"{teacher}/metrics.json", "--cores", "1", "--configfile", SMOKE, check=False)
        assert proc.returncode != 0
        assert (root / "results" / "data" / "dataset.pt").is_file()
        log = (root / "results" / "logs" / "teachers" / "resnet34" / "seed0.log").read_text(encoding="utf-8")
        last = log.strip().splitlines()[-1]
        assert re.fullmatch(
            rf"kdcore\.atomic\.WriteError: no space left on device while writing {teacher}/[\w.-]+\.pt; "
            r"(\S+ was not written|the previous \S+ is intact)",
            last,
        ), last
        assert "RuntimeError" not in log
        assert not list((root / "results").rglob(".*.tmp"))


@pytest.mark.slow
def test_read_only_results_dry_run_writes_nothing_and_a_real_run_is_one_line(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    stamp = root / "results" / "data" / "dataset.spec.json"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("{}\n")  # out of date: the parse would rewrite it
    with read_only(root / "results"):
        dry = snakemake(root, "-n", "--cores", "1", "--configfile", SMOKE, check=False)
        assert dry.returncode == 0, dry.stderr[-3000:]
        text = dry.stdout + dry.stderr
        assert "kd-capacity: dry run: read-only file system while writing results/data/dataset.spec.json" in text
        assert "Traceback" not in text
        real = snakemake(root, "results/data/dataset.pt", "--cores", "1", "--configfile", SMOKE, check=False)
        assert real.returncode != 0
        text = real.stdout + real.stderr
        assert "read-only file system while writing results/data/dataset.spec.json" in text
        assert "Traceback" not in text
    assert stamp.read_text() == "{}\n"
