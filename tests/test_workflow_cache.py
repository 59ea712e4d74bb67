"""The teacher-output cache in the workflow (config key teacher_cache, rule teacher_cache): which teachers are
cached, which runs read a cache, and the switch (the smoke study's cached teacher is checked end to end on the
finished smoke study, tests/test_workflow_e2e.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from _workflow_tools import Plan, copy_workflow, dry_run, snakemake

SMOKE = "config/smoke.yaml"
KD_RULES = ("train_select", "train_final", "train_clip")
CACHE_LOG_LINE = "teacher logits read from the cache"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("cache") / "wf")


def overlay_file(workdir: Path, name: str, overlay: dict) -> str:
    (workdir / "config" / name).write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return f"config/{name}"


def job_inputs(plan: Plan) -> list[tuple[str, dict[str, str], list[str]]]:
    """(rule, wildcards, input files) of every job of a dry run."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", plan.text):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue
        inputs = re.search(r"^\s+input: (.*)$", block, re.MULTILINE)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
        wild = dict(item.split("=", 1) for item in wildcards.group(1).split(", ")) if wildcards else {}
        jobs.append((rule.group(1), wild, inputs.group(1).split(", ") if inputs else []))
    return jobs


def cache_inputs_of_kd_runs(plan: Plan) -> dict[tuple[str, str], set[str]]:
    """(teacher, method) -> the cache files that the study's KD training jobs of that teacher and method read."""
    found: dict[tuple[str, str], set[str]] = {}
    for rule, wild, inputs in job_inputs(plan):
        if rule in KD_RULES:
            found.setdefault((wild["teacher"], wild["method"]), set()).update(i for i in inputs if "cache/" in i)
    return found


def test_full_study_caches_every_teacher_for_its_logit_runs_only(workdir: Path) -> None:
    plan = dry_run(workdir)
    # logit runs per teacher: R34 14, R50 28, R101 14 (9 grid points + 5 final seeds per pair): all >= 3
    assert sorted(w["teacher"] for w in plan.of("teacher_cache")) == ["resnet101", "resnet34", "resnet50"]
    found = cache_inputs_of_kd_runs(plan)
    for teacher in ("resnet34", "resnet50", "resnet101"):
        assert found[(teacher, "logit")] == {f"results/cache/{teacher}/logits.pt"}, teacher
        assert found[(teacher, "feature")] == set(), teacher  # feature KD never reads a cache
    cache_jobs = [inputs for rule, _, inputs in job_inputs(plan) if rule == "teacher_cache"]
    assert all(inputs[0] == "results/data/dataset.pt" and "teachers/" in inputs[1] for inputs in cache_jobs)
    assert "results/logs/cache/resnet50.log" in plan.text and "results/benchmarks/cache/resnet50.tsv" in plan.text


def test_auto_caches_only_teachers_with_min_runs(workdir: Path) -> None:
    plan = dry_run(workdir, "--configfile", overlay_file(workdir, "min15.yaml", {"teacher_cache": {"min_runs": 15}}))
    assert [w["teacher"] for w in plan.of("teacher_cache")] == ["resnet50"]  # 28 logit runs; R34, R101 have 14
    found = cache_inputs_of_kd_runs(plan)
    assert found[("resnet50", "logit")] == {"results/cache/resnet50/logits.pt"}
    assert found[("resnet34", "logit")] == set() and found[("resnet101", "logit")] == set()


def test_switch_off_plans_no_cache(workdir: Path) -> None:
    plan = dry_run(workdir, "--configfile", overlay_file(workdir, "off.yaml", {"teacher_cache": {"enabled": False}}))
    assert "teacher_cache" not in plan.counts
    assert "results/cache/" not in plan.text
    assert plan.counts["train_select"] == 48 and plan.counts["train_final"] == 40


def test_switch_on_caches_a_teacher_below_min_runs(workdir: Path) -> None:
    overlay = {"teacher_cache": {"enabled": True, "min_runs": 100}}
    plan = dry_run(workdir, "--configfile", overlay_file(workdir, "on.yaml", overlay))
    assert plan.counts["teacher_cache"] == 3


def test_bad_switch_value_fails_naming_the_key(workdir: Path) -> None:
    bad = overlay_file(workdir, "bad-cache.yaml", {"teacher_cache": {"enabled": "maybe"}})
    proc = snakemake(workdir, "-n", "--cores", "1", "--configfile", bad, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "teacher_cache" in output and "Job stats" not in output
