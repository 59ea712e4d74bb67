"""End-to-end workflow tests on the finished smoke study (config/smoke.yaml with the teacher-output cache on,
synthetic data; trained once per session, tests/_smoke_study.py): its outputs, then reruns and code-aware
invalidation, checked with dry runs on copies of the finished folder (with its .snakemake metadata)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from _smoke_study import CONFIGS, SMOKE, SmokeStudy
from _workflow_tools import append_code, dry_run, snakemake

from kdcore.analysis import outputs
from kdcore.analysis.table import read_table

pytestmark = pytest.mark.slow

TRAINING_RULES = {"train_teacher", "train_baseline", "train_select", "train_final", "train_stem", "train_clip"}
FEATURE = "src/kdcore/methods/feature.py"
ENGINE = "src/kdcore/engine.py"
FIGURES = "src/kdcore/analysis/figures.py"
CACHE_LOG_LINE = "teacher logits read from the cache"


@pytest.fixture
def smoke(smoke_study: SmokeStudy) -> SmokeStudy:
    return smoke_study


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def without(counts, *rules: str) -> dict[str, int]:
    return {r: n for r, n in counts.items() if r not in rules}


def test_smoke_exercises_every_rule_kind(smoke: SmokeStudy) -> None:
    counts = smoke.plan.counts
    for rule in (*TRAINING_RULES, "prepare_data", "select_winner"):
        assert counts[rule] >= 1, rule
    assert smoke.analysis_counts()


def test_outputs_exist_and_carry_their_settings(smoke: SmokeStudy) -> None:
    root, cfg = smoke.root, smoke.config
    runs = root / "results/runs"
    winner = read_json(root / "results/selection/resnet34-resnet18/feature.json")
    assert winner["winner"]["hp"] in {"a0.5", "a0.7"} and len(winner["candidates"]) == 2

    final = read_json(runs / "final/resnet34-resnet18/feature/seed1/metrics.json")
    assert final["labels"]["stage"] == "final"
    assert final["labels"]["run_id"] == "final/resnet34-resnet18/feature/seed1"
    assert final["labels"]["hp"] == winner["winner"]["hp"]
    assert final["config"]["method"]["alpha"] == winner["winner"]["params"]["alpha"]
    assert final["config"]["teacher"]["checkpoint"] == "results/runs/teachers/resnet34/seed0/best.pt"
    assert final["config"]["train"]["seed"] == 1
    assert final["results"]["epochs"] == cfg["epochs"]["student"]

    clip = read_json(runs / "clip/resnet34-resnet18/feature/seed0/metrics.json")
    assert clip["config"]["train"]["clip_scope"] == "student_only"
    assert clip["config"]["method"]["alpha"] == winner["winner"]["params"]["alpha"]
    assert clip["labels"]["stage"] == "clip"

    stem = read_json(runs / "stem/resnet34-imagenet/seed0/metrics.json")
    assert stem["config"]["model"]["stem"] == "imagenet"
    assert stem["results"]["epochs"] == cfg["epochs"]["teacher"]
    teacher = read_json(runs / "teachers/resnet34/seed0/metrics.json")
    assert teacher["config"]["model"]["stem"] == "cifar" and teacher["labels"]["stage"] == "teacher"

    fidelity = read_table(root / "results/tables/fidelity.csv").set_index(["run_id", "teacher"])
    kd = fidelity.loc[("final/resnet34-resnet18/logit/seed0", "resnet34")]
    assert 0.0 <= kd["agreement"] <= 100.0 and not kd["control"]
    control = fidelity.loc[("baselines/resnet18/seed1", "resnet34")]
    assert control["control"] and control["method"] == "baseline"
    assert not list(runs.rglob("fidelity*.json"))  # measured by the analysis from stored logits, no file per run

    log = (root / "results/logs/final/resnet34-resnet18/feature/seed1.log").read_text()
    leased = re.search(r"device lease: (cpu|cuda:\d+)", log)
    assert leased and str(final["environment"]["device"]).startswith(leased.group(1).split(":")[0])
    assert (root / "results/benchmarks/final/resnet34-resnet18/feature/seed1.tsv").is_file()
    assert not list(runs.rglob("last.pt"))


def test_teacher_cache_feeds_the_logit_runs_only(smoke: SmokeStudy, tmp_path: Path) -> None:
    """teacher_cache on (CACHE_ON): resnet34's logits are cached and read by its 4 logit runs; feature
    runs forward the teacher themselves."""
    root = smoke.root
    assert [w["teacher"] for w in smoke.plan.of("teacher_cache")] == ["resnet34"]
    cache_log = (root / "results/logs/cache/resnet34.log").read_text(encoding="utf-8")
    assert "wrote results/cache/resnet34/logits.pt" in cache_log and "precision fp32" in cache_log
    runs = sorted((root / "results/runs").glob("*/resnet34-resnet18/*/**/metrics.json"))
    logit = [p for p in runs if "/logit/" in str(p)]
    feature = [p for p in runs if "/feature/" in str(p)]
    assert len(logit) == 4 and len(feature) == 5  # 2 grid + 2 final; 2 grid + 2 final + 1 clip
    for path in logit + feature:
        config = read_json(path)["config"]
        run_log = (root / "results/logs" / f"{config['labels']['run_id']}.log").read_text(encoding="utf-8")
        if path in logit:
            assert config["runtime"]["teacher_cache"] == "results/cache/resnet34/logits.pt", path
            assert CACHE_LOG_LINE in run_log, path
        else:
            assert not config["runtime"].get("teacher_cache") and CACHE_LOG_LINE not in run_log, path
    # the cache path is an input only: without it, nothing reruns for a change of params or code
    copy = smoke.copy(tmp_path / "wf")
    (copy / "config/cache-off.yaml").write_text("teacher_cache: {enabled: false}\n", encoding="utf-8")
    plan = dry_run(copy, "--configfile", SMOKE, "config/cache-off.yaml", "--rerun-triggers", "params", "code", "mtime")
    assert plan.counts == {}


def test_second_run_does_nothing(smoke: SmokeStudy) -> None:
    assert dry_run(smoke.root, *CONFIGS).counts == {}


def test_deleting_one_final_run_reruns_only_it_and_dependents(smoke: SmokeStudy, tmp_path: Path) -> None:
    root = smoke.copy(tmp_path / "wf")
    (root / "results/runs/final/resnet34-resnet18/feature/seed1/metrics.json").unlink()
    plan = dry_run(root, *CONFIGS)
    assert without(plan.counts, *smoke.analysis_counts()) == {"train_final": 1, "all": 1}
    wanted = {"teacher": "resnet34", "student": "resnet18", "method": "feature", "seed": "1"}
    assert plan.of("train_final") == [wanted]
    assert plan.counts["analysis_run_table"] == 1
    # and a real run does exactly that: the run is back, untouched runs keep their files
    untouched = [
        root / "results/runs/final/resnet34-resnet18/feature/seed0/best.pt",
        root / "results/runs/teachers/resnet34/seed0/best.pt",
        root / "results/runs/baselines/resnet18/seed1/test_logits.npz",
    ]
    before = {p: p.stat().st_mtime_ns for p in untouched}
    # the run's own jobs only (tests/test_workflow_module.py reruns the run table and the statistics after one)
    run = "results/runs/final/resnet34-resnet18/feature/seed1"
    snakemake(root, *CONFIGS, "--cores", "2", f"{run}/metrics.json", timeout=600)
    assert (root / run / "metrics.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in untouched} == before
    left = dry_run(root, *CONFIGS).counts
    assert left == {r: n for r, n in plan.counts.items() if r != "train_final"}


def reads_feature_runs(rule: str, wildcards: dict[str, str]) -> bool:
    """Whether an analysis job of the smoke study reads runs that a feature-KD edit reruns: every part but the
    teachers and the stem ablation has feature runs (kdcore.analysis.outputs lists what each output reads)."""
    without_feature = {"teachers", "stem"}
    parts = {
        "analysis_part_table": lambda w: {w["part"]},
        "analysis_stat_table": lambda w: set(outputs.STAT_TABLES[w["stat"]]),
        "analysis_figure": lambda w: set(outputs.FIGURES[w["figure"]].parts()),
        "analysis_latex": lambda w: set(outputs.TEX_TABLES[w["table"]].parts()),
    }
    return rule not in parts or not parts[rule](wildcards) <= without_feature


def test_feature_kd_edit_reruns_exactly_feature_kd_branches(smoke: SmokeStudy, tmp_path: Path) -> None:
    root = smoke.copy(tmp_path / "wf")
    append_code(root / FEATURE, "FEATURE_KD_REVISION = 2")
    plan = dry_run(root, *CONFIGS)
    full = smoke.plan
    expected = {
        "train_select": len(full.of("train_select", method="feature")),
        "select_winner": len(full.of("select_winner", method="feature")),
        "train_final": len(full.of("train_final", method="feature")),
        "train_clip": len(full.of("train_clip", method="feature")),
        **Counter(rule for rule, w in full.jobs if rule.startswith("analysis_") and reads_feature_runs(rule, w)),
        "all": 1,
    }
    assert all(expected.values())
    assert dict(plan.counts) == expected
    assert all(w["method"] == "feature" for rule, w in plan.jobs if "method" in w)


def test_training_loop_edit_reruns_every_training_job(smoke: SmokeStudy, tmp_path: Path) -> None:
    root = smoke.copy(tmp_path / "wf")
    append_code(root / ENGINE, "ENGINE_REVISION = 2")
    plan = dry_run(root, *CONFIGS)
    for rule in TRAINING_RULES:
        assert plan.counts[rule] == smoke.plan.counts[rule], rule
    assert plan.counts == without(smoke.plan.counts, "prepare_data")
    # the teacher-output cache does not run the training loop (its code digest stays): it is rebuilt only
    # because the teacher it reads is retrained
    block = next(
        b
        for b in re.split(r"\n(?=(?:local)?rule \w+:)", plan.text)
        if b.startswith(("rule teacher_cache:", "localrule teacher_cache:"))
    )
    reason = re.search(r"reason: (.*)", block).group(1)
    assert "updated by another job" in reason and "teachers/resnet34/seed0/best.pt" in reason, reason
    assert "Code" not in reason and "params" not in reason.lower(), reason


def test_plotting_edit_reruns_only_figures(smoke: SmokeStudy, tmp_path: Path) -> None:
    root = smoke.copy(tmp_path / "wf")
    append_code(root / FIGURES, "FIGURES_REVISION = 2")
    plan = dry_run(root, *CONFIGS)
    figure_rules = {r for r in smoke.analysis_counts() if "figure" in r}
    assert figure_rules
    assert dict(plan.counts) == {**{r: smoke.plan.counts[r] for r in figure_rules}, "all": 1}


def test_comment_and_format_changes_rerun_nothing(smoke: SmokeStudy, tmp_path: Path) -> None:
    root = smoke.copy(tmp_path / "wf")
    for rel in (FEATURE, ENGINE, FIGURES):
        path = root / rel
        text = path.read_text(encoding="utf-8")
        path.write_text("# reviewed\n\n" + text.replace("\n\n\n", "\n\n\n\n") + "\n# end of file\n", encoding="utf-8")
    assert dry_run(root, *CONFIGS).counts == {}


def test_placement_settings_rerun_nothing(smoke: SmokeStudy, tmp_path: Path) -> None:
    root = smoke.copy(tmp_path / "wf")
    overlay = {
        "compute": {
            "device": "cpu",
            "slots_per_gpu": 2,
            "lock_dir": str(tmp_path / "locks"),
            "threads": {"train": 2, "light": 2},
            "mem_mb": {"train": 3000, "light": 3000},
        }
    }
    (root / "config/placement.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    assert dry_run(root, *CONFIGS, "config/placement.yaml").counts == {}
