"""The case the workflow's code-aware reruns exist for: a study is interrupted part-way through a run, the
loss is fixed, and the study is rerun. The interrupted run must start again from epoch 0 with the fixed
code, not resume from the weights that the old code trained (its last.pt)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _workflow_tools import append_code, copy_workflow, dry_run, snakemake

pytestmark = pytest.mark.slow

RUN = "results/runs/final/resnet34-resnet18/feature/seed0"
LOG = "results/logs/final/resnet34-resnet18/feature/seed0.log"
STUDY = {
    "pairs": [{"teacher": "resnet34", "student": "resnet18"}],
    "epochs": {"teacher": 1, "student": 4},
    "methods": {
        "logit": {"grid": {"alpha": [0.5], "temperature": [4]}, "fixed": {"alpha": 0.5, "temperature": 4}},
        "feature": {"grid": {"alpha": [0.5], "beta": [0.5]}, "fixed": {"alpha": 0.5, "beta": 0.5}},
    },
    "selection": {"enabled": False},
    "final": {"seeds": [0]},
    "fidelity": {"final": False, "baseline_controls": False},
    "ablations": {"stem": {"enabled": False}, "clip": {"enabled": False}},
}
ARGS = ("--cores", "1", "--configfile", "config/smoke.yaml", "config/resume.yaml")


def interrupt_after_first_epoch(root: Path, timeout: float = 600) -> None:
    """Run the study and kill -9 Snakemake and its jobs as soon as the KD run has saved an epoch
    (its last.pt exists)."""
    env = {**os.environ, "KDCORE_LOCK_DIR": str(root / ".locks")}
    cmd = [sys.executable, "-m", "snakemake", f"{RUN}/metrics.json", *ARGS]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while not (root / RUN / "last.pt").exists():
            assert proc.poll() is None, "the study ended before the KD run saved an epoch"
            assert time.monotonic() < deadline, "no epoch of the KD run within the timeout"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rerun(root: Path) -> str:
    """Rerun the study; the log of the KD run's new attempt (the interrupted attempt's log is set aside)."""
    (root / LOG).rename(root / f"{LOG}.interrupted")
    snakemake(root, f"{RUN}/metrics.json", *ARGS)
    return (root / LOG).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def interrupted_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study killed after the KD run's first epoch (made once; each test reruns a copy of it)."""
    root = copy_workflow(tmp_path_factory.mktemp("interrupted") / "wf")
    (root / "config/resume.yaml").write_text(yaml.safe_dump(STUDY), encoding="utf-8")
    interrupt_after_first_epoch(root)
    snakemake(root, "--unlock", *ARGS)  # what Snakemake asks for after a kill -9
    assert (root / RUN / "last.pt").is_file() and not (root / RUN / "metrics.json").exists()
    return root


@pytest.fixture
def interrupted(interrupted_study: Path, tmp_path: Path) -> Path:
    """A copy of the interrupted study (mtimes, last.pt and .snakemake metadata kept)."""
    return Path(shutil.copytree(interrupted_study, tmp_path / "wf", symlinks=True))


class ResumedStaleRun(AssertionError):
    """The rerun resumed from the last.pt that the old code wrote."""


def test_interrupted_run_restarts_from_epoch_0_after_a_loss_fix(interrupted: Path) -> None:
    root = interrupted
    # the fix: any change to the feature-KD code (here an added statement) changes the code digest
    append_code(root / "src/kdcore/methods/feature.py", "FEATURE_KD_REVISION = 2")
    plan = dry_run(root, f"{RUN}/metrics.json", *ARGS)
    assert plan.counts["train_final"] == 1 and plan.counts.get("train_teacher", 0) == 0

    rerun_log = rerun(root)
    if "resuming from epoch" in rerun_log:
        raise ResumedStaleRun(rerun_log[-2000:])
    assert "epoch 1/4" in rerun_log, rerun_log[-2000:]
    metrics = json.loads((root / RUN / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["results"]["epochs"] == 4 and len(metrics["history"]) == 4
    assert not (root / RUN / "last.pt").exists()


def test_interrupted_run_resumes_when_nothing_changed(interrupted: Path) -> None:
    """The control: without a change, the rerun continues from last.pt (it does not lose the epoch)."""
    root = interrupted
    rerun_log = rerun(root)
    assert "resuming from epoch" in rerun_log and "epoch 1/4" not in rerun_log, rerun_log[-2000:]
