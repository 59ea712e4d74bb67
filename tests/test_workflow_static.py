"""Fast workflow tests (dry runs only, no training): job counts of the full study, a study without
selection, config validation, --lint, GPU resources, the conda env, the winner choice."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from _workflow_tools import REPO, Plan, copy_workflow, dry_run, snakemake

TRAINING_RULES = ("train_teacher", "train_baseline", "train_select", "train_final", "train_stem", "train_clip")
GPU_RULES = (*TRAINING_RULES, "teacher_cache")

FULL_STUDY_COUNTS = {
    "prepare_data": 1,
    "train_teacher": 9,  # R34, R50, R101 x seeds 0..2
    "train_baseline": 10,  # R18, R34 x seeds 0..4
    "train_select": 48,  # 4 pairs x (9 logit + 3 feature grid points) on seed 0
    "select_winner": 8,  # 4 pairs x 2 methods
    "train_final": 40,  # 4 pairs x 2 methods x seeds 0..4
    "train_stem": 7,  # R18, R34 seeds 0..2 (student epochs) + R50 seed 0 (teacher epochs)
    "train_clip": 5,  # R50->R18 feature, seeds 0..4
    "teacher_cache": 3,  # logit runs per teacher: R34 14, R50 28, R101 14 (9 grid + 5 final per pair), all >= 3
    "all": 1,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


@pytest.fixture(scope="module")
def full_plan(workdir: Path) -> Plan:
    return dry_run(workdir, "--printshellcmds")


def write_overlay(workdir: Path, name: str, overlay: dict) -> str:
    path = workdir / "config" / name
    path.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return f"config/{name}"


def test_full_study_job_counts(full_plan: Plan) -> None:
    counts = full_plan.counts
    analysis = {rule: n for rule, n in counts.items() if rule.startswith("analysis_")}
    assert {rule: n for rule, n in counts.items() if rule not in analysis} == FULL_STUDY_COUNTS
    assert analysis and all(n >= 1 for n in analysis.values())


def test_full_study_paths_are_literal(full_plan: Plan) -> None:
    text = full_plan.text
    for path in (
        "results/runs/teachers/resnet50/seed2/metrics.json",
        "results/runs/baselines/resnet34/seed4/metrics.json",
        "results/runs/select/resnet50-resnet18/logit/a0.5-T4/seed0/metrics.json",
        "results/runs/select/resnet101-resnet34/feature/a0.7/seed0/metrics.json",
        "results/selection/resnet50-resnet34/feature.json",
        "results/runs/final/resnet50-resnet34/feature/seed3/metrics.json",
        "results/runs/final/resnet50-resnet34/feature/seed3/test_logits.npz",
        "results/runs/baselines/resnet18/seed0/test_logits.npz",
        "results/runs/stem/resnet50-imagenet/seed0/metrics.json",
        "results/runs/clip/resnet50-resnet18/feature/seed4/metrics.json",
        "results/logs/final/resnet50-resnet34/feature/seed3.log",
        "results/benchmarks/final/resnet50-resnet34/feature/seed3.tsv",
    ):
        assert path in text, path
    # every KD job waits on the distillation teacher: best.pt of teacher seed 0
    assert re.search(r"input: results/data/dataset.pt, results/runs/teachers/resnet101/seed0/best.pt", text)
    inputs = [line for line in text.splitlines() if line.strip().startswith("input:")]
    assert not [line for line in inputs if re.search(r"teachers/resnet\d+/seed[12]/best.pt", line)]


def test_gpu_resources_only_on_training_and_cache_jobs(full_plan: Plan) -> None:
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", full_plan.text)
    seen = set()
    for block in blocks:
        match = re.match(r"(?:local)?rule (\w+):", block)
        if not match:
            continue
        rule = match.group(1)
        resources = re.search(r"resources: (.*)", block)
        has_gpu = bool(resources and re.search(r"\bgpu=1\b", resources.group(1)))
        assert has_gpu == (rule in GPU_RULES), rule
        if rule in GPU_RULES:
            assert re.search(r"\bruntime=\d+", resources.group(1)) and "mem_mb=" in resources.group(1), rule
        seen.add(rule)
    assert set(GPU_RULES) <= seen


def test_study_without_selection_v1_style(workdir: Path) -> None:
    overlay = {
        "pairs": [
            {"teacher": "resnet34", "student": "resnet18"},
            {"teacher": "resnet50", "student": "resnet18"},
            {"teacher": "resnet101", "student": "resnet34"},
        ],
        "teachers": {"seeds": [0, 1, 2], "distill_seed": 0},
        "final": {"seeds": [0, 1, 2]},
        "selection": {"enabled": False},
        "methods": {
            "logit": {"grid": {"alpha": [0.5], "temperature": [4]}, "fixed": {"alpha": 0.5, "temperature": 4}},
            "feature": {"grid": {"alpha": [0.5]}, "fixed": {"alpha": 0.5, "beta": 0.5}},
        },
        "ablations": {"stem": {"enabled": False}, "clip": {"enabled": False}},
    }
    plan = dry_run(workdir, "--configfile", write_overlay(workdir, "v1.yaml", overlay))
    counts = {r: n for r, n in plan.counts.items() if not r.startswith("analysis_")}
    assert counts == {
        "prepare_data": 1,
        "train_teacher": 9,
        "train_baseline": 6,
        "train_final": 18,
        "teacher_cache": 3,  # each teacher has 3 logit final runs (>= teacher_cache.min_runs)
        "all": 1,
    }
    assert "results/selection/" not in plan.text


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"train": {"learning_rate": 0.1}}, "learning_rate"),
        ({"ablations": {"stem": {"enabled": True, "runz": []}}}, "runz"),
        ({"pairs": [{"teacher": "resnet152", "student": "resnet18"}]}, "resnet152"),
        ({"selection": {"enabled": False}}, "methods.logit.fixed"),
        ({"teachers": {"seeds": [1, 2], "distill_seed": 0}}, "teachers.distill_seed"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(workdir: Path, overlay: dict, expected: str) -> None:
    proc = snakemake(
        workdir, "-n", "--cores", "1", "--configfile", write_overlay(workdir, "bad.yaml", overlay), check=False
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert expected in output
    assert "Job stats" not in output


def test_lint_is_clean(workdir: Path) -> None:
    proc = snakemake(workdir, "--lint", check=False)
    output = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in output, output[-3000:]
    assert proc.returncode == 0


def _lower_bound(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9.]+)", text.strip())
    assert match, text
    return match.group(1).lower(), match.group(2)


def _pins(env_file: str) -> dict[str, str]:
    """package -> exact version of a workflow/envs file (conda's pytorch named torch); every entry pinned."""
    env = yaml.safe_load((REPO / "workflow/envs" / env_file).read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    pins = {}
    for dep in env["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+) ==([0-9][0-9.]*)", str(dep))
        assert match, f"{env_file}: {dep!r} is not pinned to an exact version"
        pins[{"pytorch": "torch"}.get(match.group(1), match.group(1))] = match.group(2)
    return pins


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_conda_envs_pin_versions_inside_pyproject_bounds() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    kdcore = _pins("kdcore.yaml")
    analysis = _pins("analysis.yaml")
    wanted = dict(_lower_bound(dep) for dep in project["dependencies"])
    wanted["python"] = project["requires-python"].removeprefix(">=")
    for name, bound in wanted.items():
        assert name in kdcore, f"kdcore.yaml lacks {name}"
        assert _version(kdcore[name]) >= _version(bound), (name, kdcore[name], bound)
    # the analysis environment: no torch, and the same version of everything it shares with kdcore.yaml
    assert not {"torch", "torchvision"} & set(analysis)
    assert {"pandas", "scipy", "matplotlib", "seaborn", "jinja2", "pyyaml", "numpy"} <= set(analysis)
    assert {name: kdcore[name] for name in analysis} == analysis


def test_analysis_code_runs_without_torch() -> None:
    """What analysis.yaml promises: kdcore.analysis and the reference importer never import torch."""
    code = (
        "import sys, pkgutil, kdcore.analysis, kdcore.reference\n"
        "for m in pkgutil.iter_modules(kdcore.analysis.__path__): __import__('kdcore.analysis.' + m.name)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_license_is_mit() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "kd-capacity contributors" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}


def test_gpu_rules_share_one_template() -> None:
    """Each GPU rule is a `use rule` of a template: the shared block is written once."""
    rules = "".join((REPO / "workflow/rules" / f).read_text() for f in ("teachers.smk", "students.smk"))
    for rule in GPU_RULES:
        template = {"teacher_cache": "cache_job"}.get(rule, "training_job")
        assert f"use rule {template} as {rule} with:" in rules, rule
    assert "conda:" not in rules.split("rule select_winner:")[0]


def _load_script(name: str):
    scripts = REPO / "workflow" / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        spec = importlib.util.spec_from_file_location(f"wf_{name}", scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(scripts))
    return module


def test_winner_is_best_mean_with_grid_order_ties(tmp_path: Path) -> None:
    import json

    from kdcore import selection as select  # the rule lives in kdcore; the script only calls it

    def metrics(name: str, value: float) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"results": {"best_val_acc": value}}))
        return str(path)

    candidates = [
        {"hp": "a0.3", "params": {"alpha": 0.3}, "metrics": [metrics("a", 0.80), metrics("b", 0.90)]},  # mean 0.85
        {"hp": "a0.5", "params": {"alpha": 0.5}, "metrics": [metrics("c", 0.86), metrics("d", 0.84)]},  # mean 0.85
        {"hp": "a0.7", "params": {"alpha": 0.7}, "metrics": [metrics("e", 0.84), metrics("f", 0.85)]},
    ]
    scored = select.score_candidates(candidates, "best_val_acc")
    assert [round(c["score"], 6) for c in scored] == [0.85, 0.85, 0.845]
    assert select.choose_winner(scored)["hp"] == "a0.3"
    assert select.choose_winner(scored[1:])["hp"] == "a0.5"
    from kdcore.errors import KDCoreError

    with pytest.raises(KDCoreError, match="test_acc"):
        select.score_candidates(candidates, "test_acc")
