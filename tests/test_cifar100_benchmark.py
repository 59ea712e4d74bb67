"""The CIFAR-100 KD benchmark: its config is the CRD protocol, the published reference loads, the
paper-vs-ours table matches runs to the right numbers, and the workflow plans the expected jobs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _workflow_tools import REPO, copy_workflow, dry_run

from kdcore.analysis.benchmark import COLUMNS, benchmark_table, load_reference
from kdcore.config import validate_study_config
from kdcore.errors import DataError

BENCHMARK = "config/cifar100-benchmark.yaml"
PAIRS = [
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
]


def overlay() -> dict:
    return yaml.safe_load((REPO / BENCHMARK).read_text(encoding="utf-8"))


def test_benchmark_config_is_the_crd_protocol() -> None:
    cfg = overlay()
    assert cfg["data"]["dataset"] == "cifar100" and cfg["data"]["source"] == "torchvision"
    assert cfg["epochs"] == {"teacher": 240, "student": 240}
    train = cfg["train"]
    assert (train["batch_size"], train["lr"], train["momentum"], train["weight_decay"]) == (64, 0.05, 0.9, 5e-4)
    assert train["schedule"] == "step" and train["lr_milestones"] == [150, 180, 210] and train["lr_gamma"] == 0.1
    assert [(p["teacher"], p["student"]) for p in cfg["pairs"]] == PAIRS
    assert {"logit", "dkd"} <= set(cfg["methods"])


def test_reference_holds_the_published_numbers() -> None:
    ref = load_reference()
    assert list(zip(ref["teacher"], ref["student"], strict=True)) == PAIRS
    row = ref[ref["student"] == "resnet8x4"].iloc[0]
    assert (row.teacher_acc, row.student_acc, row.kd_acc, row.dkd_acc) == (79.42, 72.50, 73.33, 76.32)
    assert ref["source"].str.contains("RepDistiller").all() and ref["source"].str.contains("mdistiller").all()


def test_reference_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "ref.csv"
    bad.write_text("teacher,student,teacher_acc\nresnet56,resnet20,72\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ref\.csv: benchmark reference lacks columns"):
        load_reference(bad)
    bad.write_text(load_reference().to_csv(index=False).replace("72.34", "n/a"), encoding="utf-8")
    with pytest.raises(DataError, match="teacher_acc must hold a number"):
        load_reference(bad)


def run(stage: str, student: str, teacher: str, method: str, acc: float) -> dict:
    return {"stage": stage, "student": student, "teacher": teacher, "method": method, "test_best": acc}


def test_table_puts_our_runs_beside_the_published_numbers() -> None:
    runs = pd.DataFrame(
        [
            run("teacher", "resnet56", "", "baseline", 72.0),
            run("baseline", "resnet20", "", "baseline", 69.0),
            run("baseline", "resnet20", "", "baseline", 68.0),
            run("final", "resnet20", "resnet56", "logit", 70.0),
            run("final", "resnet20", "resnet56", "logit", 71.0),
            run("final", "resnet20", "resnet56", "dkd", 72.5),
            run("final", "resnet20", "resnet110", "dkd", 10.0),  # another teacher: not this pair's cell
        ]
    )
    table = benchmark_table(runs)
    assert list(table.columns) == COLUMNS and len(table) == 5 * 4
    cell = table.set_index(["teacher", "student", "quantity"])
    kd = cell.loc[("resnet56", "resnet20", "kd_acc")]
    assert (kd.published, kd.ours_mean, kd.ours_n) == (70.66, 70.5, 2)
    assert kd.difference == pytest.approx(70.5 - 70.66) and kd.ours_std == pytest.approx(math.sqrt(0.5))
    dkd = cell.loc[("resnet56", "resnet20", "dkd_acc")]
    assert (dkd.ours_mean, dkd.ours_n) == (72.5, 1) and math.isnan(dkd.ours_std)
    assert cell.loc[("resnet56", "resnet20", "teacher_acc")].ours_mean == 72.0
    assert cell.loc[("resnet56", "resnet20", "student_acc")].ours_mean == 68.5
    empty = cell.loc[("wrn_40_2", "wrn_40_1", "dkd_acc")]
    assert empty.ours_n == 0 and math.isnan(empty.ours_mean) and empty.published == 74.81


def benchmark_study_config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    for key, value in overlay().items():  # Snakemake's merge: mappings key by key, lists replaced
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    return config


def test_benchmark_study_validates_and_plans_its_jobs(tmp_path: Path) -> None:
    validate_study_config(benchmark_study_config())
    plan = dry_run(copy_workflow(tmp_path / "wf"), "--configfile", BENCHMARK)
    expected = {
        "prepare_data": 1,
        "train_teacher": 4,  # resnet56, resnet110, resnet32x4, wrn_40_2, one seed
        "train_baseline": 15,  # 5 students x 3 seeds
        "train_select": 20,  # 5 pairs x (1 logit + 3 dkd grid points), seed 0
        "select_winner": 10,
        "train_final": 30,  # 5 pairs x 2 methods x 3 seeds
    }
    assert {rule: plan.counts.get(rule, 0) for rule in expected} == expected
    assert not [rule for rule in plan.counts if rule.startswith("fidelity")]  # measured from stored logits
