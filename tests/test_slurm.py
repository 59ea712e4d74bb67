"""Scale-out on SLURM: the study through ``profiles/slurm`` and snakemake-executor-plugin-slurm.

Two kinds of tests:

- profile tests (no cluster needed): a dry run of the smoke study with the profile shows every GPU rule
  with ``gpu=1`` and its SLURM settings, CPU rules without them, and partition/account/GPU model taken
  from the environment;
- cluster tests (marker ``slurm``, skipped unless ``sinfo`` reaches a cluster, e.g. the one-node cluster
  of ``.ci/slurm/start.sh``): a trimmed smoke study runs through the profile on the real cluster while
  the same study runs locally; one training job's SLURM job is cancelled after its first epoch. The
  tests check that every job was a SLURM job, that training jobs and only they asked for a GPU, that the
  cancelled run was resubmitted and resumed from its last epoch, and that every metrics.json, test-logits
  file and the fidelity table equal the local run's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _workflow_tools import LAUNCHER

from kdcore.predictions import read_test_logits

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
SMOKE = REPO / "config" / "smoke.yaml"

# Rules whose jobs need a GPU (they declare `gpu: 1`); every other rule is CPU-only.
GPU_RULE = re.compile(r"^(train_\w+|teacher_cache)$")

# The smoke study trimmed for the cluster test, to keep it within a few minutes on 2 cores: 6 SLURM jobs
# in 4 levels (data -> teacher + baseline -> 2 final KD runs -> analysis with their fidelity, as one group
# job) instead of ~25 jobs. One teacher seed, fixed KD hyper-parameters, one final seed, no ablations (the
# dry-run tests above cover the SLURM resources of every rule). The teacher trains 2 epochs (smoke),
# which gives the cancellation its window between epoch 1 and 2 (on 600 training images, not the smoke
# study's 150, so that the window is a few seconds long).
TRIM_OVERLAY = """\
data: {synthetic: {n_train: 700, n_test: 300, seed: 0}}
teachers: {seeds: [0], distill_seed: 0}
methods:
  logit: {fixed: {alpha: 0.5, temperature: 4}}
  feature: {fixed: {alpha: 0.5, beta: 0.5}}
selection: {enabled: false}
final: {seeds: [0]}
fidelity: {final: true, baseline_controls: false}
ablations:
  stem: {enabled: false}
  clip: {enabled: false}
"""
TARGETS = ("results/tables/summary.json",)  # every run, then the analysis tables (fidelity from the logits)
CANCEL_RUN = "results/runs/teachers/resnet34/seed0"  # the training run whose SLURM job is cancelled
CANCEL_RULE_LOGS = ".snakemake/slurm_logs/rule_train_teacher/resnet34_0"
SITE_ENV = (
    "SBATCH_PARTITION",
    "KD_SLURM_GPU_PARTITION",
    "KD_SLURM_CPU_PARTITION",
    "SBATCH_ACCOUNT",
    "KD_SLURM_GPU_MODEL",
    "KD_SLURM_EXTRA",
)
RUN_TIMEOUT_S = 420


def cluster_partition() -> str | None:
    """The default partition of a reachable SLURM cluster with a usable node, else None."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], check=False, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    for line in out.stdout.splitlines():
        name, _, state = line.partition(" ")
        if name.endswith("*") and state.strip() in ("idle", "mixed", "allocated"):
            return name.rstrip("*")
    return None


def base_env(**site: str) -> dict[str, str]:
    """The environment of a Snakemake run: ours without site settings, plus ``site``."""
    env = {k: v for k, v in os.environ.items() if k not in SITE_ENV}
    env.update(site)
    return env


def snakemake_cmd(workdir: Path, configfiles: list[Path], *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", *map(str, configfiles), *extra,
    ]  # fmt: skip


def parse_dry_run_jobs(text: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job in a ``snakemake -n`` listing."""
    jobs: list[tuple[str, dict[str, str]]] = []
    rule: str | None = None
    for line in text.splitlines():
        head = re.match(r"^\s*(?:local)?rule (\w+):$", line)
        if head:
            rule = head.group(1)
            continue
        res = re.match(r"^\s*resources: (.*)$", line)
        if res and rule is not None:
            pairs = (item.split("=", 1) for item in res.group(1).split(", "))
            jobs.append((rule, {k: v for k, v in pairs}))
            rule = None
    return jobs


def dry_run_with_profile(tmp_path: Path, env: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    command = snakemake_cmd(tmp_path, [REPO / "config.yaml", SMOKE], "--profile", str(PROFILE), "-n")
    proc = LAUNCHER.run(REPO, command[3:], env, timeout=180)  # without `python -m snakemake`
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = parse_dry_run_jobs(proc.stdout + proc.stderr)
    assert jobs, "the dry run listed no jobs"
    return jobs


needs_smoke = pytest.mark.skipif(not SMOKE.exists(), reason="config/smoke.yaml is not there yet")


# ----------------------------------------------------------------------------- profile (no cluster)
@needs_smoke
def test_profile_resources_per_rule_and_site_settings_from_environment(tmp_path: Path) -> None:
    env = base_env(SBATCH_PARTITION="gpu-part", SBATCH_ACCOUNT="lab42", KD_SLURM_GPU_MODEL="a100")
    jobs = dry_run_with_profile(tmp_path, env)
    rules = {rule for rule, _ in jobs}
    assert {"prepare_data", "train_teacher", "train_final", "select_winner"} <= rules
    for rule, res in jobs:
        assert res.get("slurm_partition") == "gpu-part", (rule, res)
        assert res.get("slurm_account") == "lab42", (rule, res)
        assert "runtime" in res and int(res["runtime"]) > 0, (rule, res)
        if GPU_RULE.match(rule):
            assert res.get("gpu") == "1", (rule, res)
            assert res.get("gpu_model") == "a100", (rule, res)
            assert int(res["cpus_per_gpu"]) >= 1, (rule, res)
        else:
            assert "gpu" not in res and "gpu_model" not in res and "cpus_per_gpu" not in res, (rule, res)


@needs_smoke
def test_profile_without_site_settings_leaves_them_to_the_cluster(tmp_path: Path) -> None:
    jobs = dry_run_with_profile(tmp_path, base_env())
    for rule, res in jobs:
        # empty: the plugin then uses the cluster's default partition and guesses the account
        assert res.get("slurm_partition") == "" and res.get("slurm_account") == "", (rule, res)
        if GPU_RULE.match(rule):
            assert res.get("gpu_model") == "", (rule, res)


def test_profile_names_only_rules_of_the_workflow() -> None:
    import yaml

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text(encoding="utf-8"))
    proc = LAUNCHER.run(REPO, ["--list-rules"], dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workflow_rules = set(proc.stdout.split())
    named = set(profile.get("set-resources", {})) | set(profile.get("groups", {}))
    assert named - workflow_rules == set(), "profiles/slurm names rules the workflow does not have"
    templates = {"training_job", "cache_job"}  # workflow/rules/gpu_jobs.smk: no output, never run
    gpu_rules = {r for r in workflow_rules if GPU_RULE.match(r)} - templates
    assert gpu_rules <= set(profile["set-resources"]), "a GPU rule has no SLURM settings in the profile"


# ----------------------------------------------------------------------------- real cluster
PARTITION = cluster_partition()


@dataclass
class StudyRuns:
    """The trimmed smoke study run locally and through SLURM, with what the cancellation watcher saw."""

    local: Path
    slurm: Path
    slurm_log: str
    seconds: float
    cancelled_jobid: str | None = None
    cancel_note: str = ""
    submitted: dict[str, str] = field(default_factory=dict)  # SLURM job id -> rule or "group:<name>"


def scontrol_job(jobid: str) -> dict[str, str]:
    """``scontrol show job`` of one job as a key -> value dict."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", jobid], check=False, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, f"scontrol show job {jobid}: {out.stderr}"
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def cancel_after_first_epoch(run_dir: Path, logs_dir: Path, runs: StudyRuns, stop: threading.Event) -> None:
    """Wait for ``run_dir/last.pt`` (epoch 1 done) and scancel the SLURM job that is writing it."""
    while not stop.is_set():
        if (run_dir / "last.pt").exists() and logs_dir.is_dir():
            ids = sorted(p.stem for p in logs_dir.glob("*.log"))
            if ids:
                jobid = ids[0]
                subprocess.run(["scancel", jobid], check=True, timeout=30)
                runs.cancelled_jobid = jobid
                runs.cancel_note = f"cancelled SLURM job {jobid} with {run_dir / 'last.pt'} present"
                return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory: pytest.TempPathFactory) -> StudyRuns:
    base = tmp_path_factory.mktemp("slurm-study")
    overlay = base / "trim.yaml"
    overlay.write_text(TRIM_OVERLAY, encoding="utf-8")
    configs = [REPO / "config.yaml", SMOKE, overlay]
    runs = StudyRuns(local=base / "local", slurm=base / "slurm", slurm_log="", seconds=0.0)
    start = time.monotonic()
    # the local comparator through the tests' Snakemake launcher (its jobs forked from a warm process), in a
    # thread beside the SLURM run, whose jobs SLURM starts as processes of their own
    local_command = snakemake_cmd(runs.local, configs, "--cores", "1", *TARGETS)[3:]  # without python -m snakemake
    local_done: dict[str, subprocess.CompletedProcess] = {}
    local = threading.Thread(
        target=lambda: local_done.update(proc=LAUNCHER.run(REPO, local_command, base_env(), RUN_TIMEOUT_S)),
        daemon=True,
    )
    local.start()
    stop = threading.Event()
    watcher = threading.Thread(
        target=cancel_after_first_epoch,
        args=(runs.slurm / CANCEL_RUN, runs.slurm / CANCEL_RULE_LOGS, runs, stop),
        daemon=True,
    )
    watcher.start()
    try:
        slurm = subprocess.run(
            snakemake_cmd(
                runs.slurm, configs, "--profile", str(PROFILE),
                # the CI cluster has no accounting database: job states come from squeue, which keeps
                # finished jobs for MinJobAge (600 s) seconds; first status check after 2 s, not 40 s
                "--slurm-status-command", "squeue", "--slurm-no-account",
                "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
                "--slurm-keep-successful-logs",
                *TARGETS,
            ),
            check=False, capture_output=True, text=True, env=base_env(SBATCH_PARTITION=PARTITION or ""), cwd=REPO,
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join(timeout=5)
        local.join(timeout=RUN_TIMEOUT_S)
    runs.seconds = time.monotonic() - start
    runs.slurm_log = slurm.stdout + slurm.stderr
    (base / "slurm.log").write_text(runs.slurm_log, encoding="utf-8")
    assert slurm.returncode == 0, "SLURM run failed:\n" + runs.slurm_log[-6000:]
    local_run = local_done.get("proc")
    assert local_run is not None, "the local run did not end in time"
    (base / "local.log").write_text(local_run.stdout + local_run.stderr, encoding="utf-8")
    assert local_run.returncode == 0, "local run failed:\n" + (local_run.stdout + local_run.stderr)[-6000:]
    for jobid, logfile in re.findall(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", runs.slurm_log):
        part = next(part for part in Path(logfile).parts if part.startswith(("rule_", "group_")))
        runs.submitted[jobid] = part[len("rule_") :] if part.startswith("rule_") else "group:" + part[len("group_") :]
    return runs


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def relative_files(root: Path, pattern: str) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / "results").rglob(pattern))


TIMING_KEYS = {"seconds", "images_per_s", "train_seconds"}


def without(record: Any, keys: set[str]) -> Any:
    """``record`` with the ``keys`` (timings) left out at every depth."""
    if isinstance(record, dict):
        return {k: without(v, keys) for k, v in record.items() if k not in keys}
    if isinstance(record, list):
        return [without(v, keys) for v in record]
    return record


@pytest.mark.slurm
@pytest.mark.slow
@needs_smoke
@pytest.mark.skipif(PARTITION is None, reason="no SLURM cluster reachable (sinfo); start one with .ci/slurm/start.sh")
class TestStudyOnSlurm:
    """The trimmed smoke study on the real cluster (one module-scoped run, several checks)."""

    def test_every_job_was_a_slurm_job_and_only_gpu_rules_asked_for_a_gpu(self, study_runs: StudyRuns) -> None:
        kinds = set(study_runs.submitted.values())
        assert {"prepare_data", "train_teacher", "train_baseline", "train_final"} <= kinds, kinds
        groups = [kind for kind in kinds if kind.startswith("group:")]
        assert len(groups) == 1 and groups[0].startswith("group:analysis"), kinds  # the analysis jobs, together
        finished = set(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", study_runs.slurm_log)) - {"all"}
        assert {"analysis_run_table", "analysis_stats"} <= finished
        for rule in finished:
            assert rule in kinds or rule in groups[0], f"{rule} ran but was never submitted to SLURM"
        gpu_jobs = 0
        for jobid, kind in study_runs.submitted.items():
            job = scontrol_job(jobid)
            assert job.get("Partition") == PARTITION, (jobid, kind, job.get("Partition"))
            if GPU_RULE.match(kind):
                gpu_jobs += 1
                assert job.get("TresPerJob") == "gres:gpu:1", (jobid, kind, job.get("TresPerJob"))
            else:
                assert "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", ""), (jobid, kind, job)
        trained = len(relative_files(study_runs.slurm, "metrics.json"))
        # one SLURM job per training job, plus the resubmission of the cancelled one
        assert gpu_jobs == trained + (1 if study_runs.cancelled_jobid else 0)

    def test_cancelled_training_job_was_resubmitted_and_resumed(self, study_runs: StudyRuns) -> None:
        assert study_runs.cancelled_jobid is not None, "the watcher never saw last.pt of " + CANCEL_RUN
        assert scontrol_job(study_runs.cancelled_jobid)["JobState"] == "CANCELLED", study_runs.cancel_note
        teacher_jobs = sorted(int(j) for j, kind in study_runs.submitted.items() if kind == "train_teacher")
        assert len(teacher_jobs) == 2 and teacher_jobs[0] == int(study_runs.cancelled_jobid), teacher_jobs
        assert scontrol_job(str(teacher_jobs[1]))["JobState"] == "COMPLETED"
        log = (study_runs.slurm / "results/logs/teachers/resnet34/seed0.log").read_text(encoding="utf-8")
        metrics = load_json(study_runs.slurm / CANCEL_RUN / "metrics.json")
        # the watcher cancels once last.pt exists (epoch 1 done); on a loaded machine the job may finish a
        # later epoch, or save on SLURM's SIGTERM, before it stops: any epoch it had finished is a resume
        resumed = re.search(r"resuming from epoch (\d+)\b", log)
        assert resumed and 1 <= int(resumed.group(1)) <= metrics["results"]["epochs"], log[-3000:]
        assert [h["epoch"] for h in metrics["history"]] == list(range(1, metrics["results"]["epochs"] + 1))
        assert not (study_runs.slurm / CANCEL_RUN / "last.pt").exists()

    def test_outputs_equal_the_local_run(self, study_runs: StudyRuns) -> None:
        metrics = relative_files(study_runs.local, "metrics.json")
        logits = relative_files(study_runs.local, "test_logits.npz")
        assert len(metrics) == 4 == len(logits), (metrics, logits)  # teacher, baseline, 2 KD runs
        assert relative_files(study_runs.slurm, "metrics.json") == metrics
        assert relative_files(study_runs.slurm, "test_logits.npz") == logits
        for rel in metrics:
            local, remote = load_json(study_runs.local / rel), load_json(study_runs.slurm / rel)
            for key in ("config", "labels", "data", "model", "teacher", "history", "results"):
                assert without(remote[key], TIMING_KEYS) == without(local[key], TIMING_KEYS), (rel, key)
        for rel in logits:
            remote, local = read_test_logits(study_runs.slurm / rel), read_test_logits(study_runs.local / rel)
            assert np.array_equal(remote.logits_best, local.logits_best), rel
            assert np.array_equal(remote.logits_final, local.logits_final), rel
        fidelity = "results/tables/fidelity.csv"
        assert (study_runs.slurm / fidelity).read_text() == (study_runs.local / fidelity).read_text()
        local_summary = load_json(study_runs.local / TARGETS[0])
        assert without(load_json(study_runs.slurm / TARGETS[0]), TIMING_KEYS) == without(local_summary, TIMING_KEYS)
