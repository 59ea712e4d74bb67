"""``kdcore plan``: the study's jobs (as the workflow schedules them), model-epochs, and GPU-hours from FLOPs
at a stated throughput or from a benchmark's measured epoch times, each checked by hand on a tiny study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from _workflow_tools import REPO, copy_workflow, dry_run
from test_workflow_static import FULL_STUDY_COUNTS

from kdcore import bench
from kdcore.cli import main
from kdcore.config import load_config_file, merge_config, validate_study_config
from kdcore.errors import ConfigError
from kdcore.models import build_model, count_flops_per_image
from kdcore.plan import (
    BENCH_EPOCH_IMAGES,
    DataSizes,
    data_sizes,
    plan_study,
    training_jobs,
)

STAGE_RULES = {
    "teacher": "train_teacher",
    "baseline": "train_baseline",
    "select": "train_select",
    "final": "train_final",
    "stem": "train_stem",
    "clip": "train_clip",
}

#: A tiny study: synthetic data (600 train, 100 val, 300 test), width 8, R34 teacher -> R18 student, both
#: methods with fixed hyper-parameters, one seed: 1 teacher, 1 baseline, 2 final runs.
TINY: dict[str, Any] = {
    "data": {"source": "synthetic", "path": None, "download": False, "synthetic": {"n_train": 700, "n_test": 300}},
    "model": {"width": 8},
    "epochs": {"teacher": 2, "student": 1},
    "teachers": {"seeds": [0], "distill_seed": 0},
    "pairs": [{"teacher": "resnet34", "student": "resnet18"}],
    "methods": {
        "logit": {"grid": {"alpha": [0.5], "temperature": [4]}, "fixed": {"alpha": 0.5, "temperature": 4}},
        "feature": {"grid": {"alpha": [0.5]}, "fixed": {"alpha": 0.5, "beta": 0.5}},
    },
    "selection": {"enabled": False},
    "final": {"seeds": [0]},
    "ablations": {"stem": {"enabled": False}, "clip": {"enabled": False}},
}
TINY["data"]["val_size"] = 100


def study_of(*configs: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for config in configs:
        merged = merge_config(merged, config)
    return validate_study_config(merged)


def stage_counts(study: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in training_jobs(study):
        counts[STAGE_RULES[job.stage]] = counts.get(STAGE_RULES[job.stage], 0) + 1
    return counts


def test_full_study_jobs_are_the_workflows() -> None:
    study = study_of(load_config_file(REPO / "config.yaml"))
    expected = {rule: n for rule, n in FULL_STUDY_COUNTS.items() if rule.startswith("train_")}
    assert stage_counts(study) == expected
    jobs = {job.path: job for job in training_jobs(study)}
    job = jobs["select/resnet101-resnet34/logit/a0.7-T4/seed0"]
    assert (job.stage, job.student, job.teacher, job.method, job.epochs) == (
        "select",
        "resnet34",
        "resnet101",
        "logit",
        100,
    )
    stem = jobs["stem/resnet50-imagenet/seed0"]
    assert (stem.student, stem.teacher, stem.stem, stem.epochs) == ("resnet50", None, "imagenet", 200)
    assert sum(job.epochs for job in jobs.values()) == 9 * 200 + 10 * 100 + 48 * 100 + 40 * 100 + 6 * 100 + 200 + 500


def test_jobs_match_a_snakemake_dry_run(tmp_path: Path) -> None:
    """An overlay with a stem run of an architecture that is no student (its CIFAR arm is a new baseline)."""
    overlay = {
        "pairs": [{"teacher": "resnet50", "student": "resnet18"}, {"teacher": "resnet34", "student": "resnet18"}],
        "final": {"seeds": [0, 1]},
        "selection": {"seeds": [0, 1]},
        "methods": {"logit": {"grid": {"alpha": [0.5, 0.7], "temperature": [4]}}},
        "ablations": {
            "stem": {"runs": [{"arch": "resnet101", "seeds": [0], "epochs": "student"}]},
            "clip": {"enabled": False},
        },
    }
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "config" / "plan.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    counts = dry_run(workdir, "--configfile", "config/plan.yaml").counts
    study = study_of(load_config_file(REPO / "config.yaml"), overlay)
    assert stage_counts(study) == {rule: n for rule, n in counts.items() if rule.startswith("train_")}
    assert not [rule for rule in counts if rule.startswith("fidelity")]  # fidelity is measured by the analysis


def test_data_sizes_full_split_subset_and_synthetic() -> None:
    assert data_sizes(study_of(load_config_file(REPO / "config.yaml"))["data"]) == DataSizes(45_000, 5_000, 10_000)
    quick = study_of(load_config_file(REPO / "config.yaml"), load_config_file(REPO / "config" / "quick.yaml"))
    assert data_sizes(quick["data"]) == DataSizes(1280, 500, 1000)
    assert data_sizes(study_of(TINY)["data"]) == DataSizes(600, 100, 300)
    with pytest.raises(ConfigError, match="data.val_size"):
        data_sizes({**study_of(TINY)["data"], "val_size": 700})


def test_flops_estimate_by_hand() -> None:
    f18 = count_flops_per_image(build_model("resnet18", 8))
    f34 = count_flops_per_image(build_model("resnet34", 8))
    assert f34 > f18 > 0
    # each run: epochs x 600 training images (3 student forwards + 1 teacher forward), 100 validation
    # images per epoch and the 300 test images twice, all forward passes of the student
    teacher = 2 * 600 * 3 * f34 + 2 * 100 * f34 + 2 * 300 * f34
    baseline = 600 * 3 * f18 + 100 * f18 + 600 * f18
    final = 600 * (3 * f18 + f34) + 100 * f18 + 600 * f18
    plan = plan_study(study_of(TINY), throughput_tflops=2.0)
    hours = {e.job.path: e.gpu_hours for e in plan.jobs}
    assert hours == pytest.approx(
        {
            "teachers/resnet34/seed0": teacher / 2e12 / 3600,
            "baselines/resnet18/seed0": baseline / 2e12 / 3600,
            "final/resnet34-resnet18/logit/seed0": final / 2e12 / 3600,
            "final/resnet34-resnet18/feature/seed0": final / 2e12 / 3600,
        }
    )
    totals = plan.totals()
    assert totals["model_epochs"] == 5 and totals["images"] == 5 * 600
    assert totals["gpu_hours"] == pytest.approx((teacher + baseline + 2 * final) / 2e12 / 3600)
    assert "2 TFLOP/s" in plan.basis
    assert plan_study(study_of(TINY), throughput_tflops=1.0).totals()["gpu_hours"] == pytest.approx(
        2 * totals["gpu_hours"]
    )
    with pytest.raises(ConfigError, match="--throughput"):
        plan_study(study_of(TINY), throughput_tflops=0.0)


def hand_bench(width: int = 8) -> dict[str, Any]:
    """A bench.json as kdcore.bench writes it (the keys plan reads): per-image times 1, 2, 1.5 and 1.8 ms."""
    rows = [
        ("resnet18", None, "baseline", 45.0),
        ("resnet34", None, "baseline", 90.0),
        ("resnet18", "resnet34", "logit", 67.5),
        ("resnet18", "resnet34", "feature", 81.0),
    ]
    return {
        "schema_version": 1,
        "kind": "bench",
        "device_name": "Test GPU",
        "width": width,
        "batch_size": 128,
        "rows": [{"student": s, "teacher": t, "method": m, "fast_epoch_s": e, "speedup": 5.0} for s, t, m, e in rows],
    }


def test_bench_estimate_by_hand() -> None:
    assert BENCH_EPOCH_IMAGES == bench.EPOCH_IMAGES
    plan = plan_study(study_of(TINY), bench=hand_bench(), throughput_tflops=1e-9)  # FLOPs would be absurd
    ms = 1e-3
    # training images at the case's measured time; 100 val/epoch + 2 x 300 test at a third of the baseline's
    expected = {
        "teachers/resnet34/seed0": 2 * 600 * 2 * ms + (2 * 100 + 600) * 2 * ms / 3,
        "baselines/resnet18/seed0": 600 * 1 * ms + 700 * 1 * ms / 3,
        "final/resnet34-resnet18/logit/seed0": 600 * 1.5 * ms + 700 * 1 * ms / 3,
        "final/resnet34-resnet18/feature/seed0": 600 * 1.8 * ms + 700 * 1 * ms / 3,
    }
    assert {e.job.path: e.gpu_hours * 3600 for e in plan.jobs} == pytest.approx(expected)
    assert {e.source for e in plan.jobs} == {"bench"} and plan.flops_fallbacks == []
    assert plan.totals()["gpu_hours"] * 3600 == pytest.approx(sum(expected.values()))
    assert "Test GPU" in plan.basis and "width 8" in plan.basis


def test_bench_missing_case_falls_back_to_flops_and_says_so() -> None:
    partial = hand_bench()
    partial["rows"] = [r for r in partial["rows"] if r["method"] != "feature"]
    plan = plan_study(study_of(TINY), bench=partial, throughput_tflops=2.0)
    sources = {e.job.path: e.source for e in plan.jobs}
    assert sources["final/resnet34-resnet18/feature/seed0"] == "flops"
    assert sources["final/resnet34-resnet18/logit/seed0"] == "bench"
    assert plan.flops_fallbacks == ["final/resnet34-resnet18/feature/seed0"]
    assert "1 job(s) not in the benchmark" in plan.basis and "2 TFLOP/s" in plan.basis
    flops_only = plan_study(study_of(TINY), throughput_tflops=2.0)
    feature = "final/resnet34-resnet18/feature/seed0"
    by_path = {e.job.path: e for e in flops_only.jobs}
    # training from FLOPs, its evaluations still from the benchmark's R18 baseline
    fallback = next(e for e in plan.jobs if e.job.path == feature)
    train_flops_s = by_path[feature].gpu_hours * 3600 - 700 * count_flops_per_image(build_model("resnet18", 8)) / 2e12
    assert fallback.gpu_hours * 3600 == pytest.approx(train_flops_s + 700 * 1e-3 / 3)


def test_bench_missing_case_priced_at_the_benchmarks_median_throughput() -> None:
    partial = hand_bench()
    partial["rows"] = [r for r in partial["rows"] if r["method"] != "feature"]
    for row, tflops in zip(partial["rows"], (1.0, 2.0, 9.0), strict=True):
        row["achieved_tflops"] = tflops
    measured = plan_study(study_of(TINY), bench=partial)
    stated = plan_study(study_of(TINY), bench=partial, throughput_tflops=2.0)
    assert "the benchmark's median achieved 2 TFLOP/s" in measured.basis and "stated" not in measured.basis
    assert [e.gpu_hours for e in measured.jobs] == pytest.approx([e.gpu_hours for e in stated.jobs])
    assert (
        plan_study(study_of(TINY), bench=partial, throughput_tflops=4.0).totals()["gpu_hours"]
        < (measured.totals()["gpu_hours"])
    )


def test_bench_of_another_width_is_refused() -> None:
    with pytest.raises(ConfigError, match="width 64.*width 8"):
        plan_study(study_of(TINY), bench=hand_bench(width=64), bench_source="b.json")


def write_tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return path


def test_cli_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny(tmp_path)
    assert main(["-q", "plan", str(config), "--throughput", "2"]) == 0
    text = capsys.readouterr().out
    assert "FLOPs at a sustained 2 TFLOP/s (stated, not measured)" in text
    assert "total: 4 training jobs, 5 model-epochs:" in text and "no GPU job" in text
    assert main(["-q", "plan", str(config), "--throughput", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    expected = plan_study(study_of(TINY), throughput_tflops=2.0).totals()
    assert record["totals"] == pytest.approx(expected)
    assert record["stages"]["final"]["jobs"] == 2 and len(record["jobs"]) == 4
    bench_file = tmp_path / "bench.json"
    bench_file.write_text(json.dumps(hand_bench()), encoding="utf-8")
    assert main(["-q", "plan", str(config), "--bench", str(bench_file), "--json"]) == 0
    assert {job["source"] for job in json.loads(capsys.readouterr().out)["jobs"]} == {"bench"}


def test_cli_bad_bench_is_one_line_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tiny(tmp_path)
    broken = hand_bench()
    del broken["rows"][2]["fast_epoch_s"]
    bench_file = tmp_path / "bench.json"
    bench_file.write_text(json.dumps(broken), encoding="utf-8")
    assert main(["-q", "plan", str(config), "--bench", str(bench_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bench_file) in err and "rows/2" in err and "fast_epoch_s" in err
    bench_file.write_text("{not json", encoding="utf-8")
    assert main(["-q", "plan", str(config), "--bench", str(bench_file)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["-q", "plan", str(config), "--throughput", "-1"]) == 2
    assert "--throughput" in capsys.readouterr().err
