"""The capacity axis: registry architectures and width variants (`<arch>-w<width>`) in the study config,
per-variant baselines in the run table and the KD gain, code digests that cover the family modules, and the
job count of config/capacity.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _workflow_tools import REPO, copy_workflow, dry_run

from kdcore import provenance
from kdcore.analysis.latex import arch_sort_key, short, split_pair
from kdcore.analysis.stats import kd_comparisons
from kdcore.analysis.table import RUN_COLUMNS, run_record
from kdcore.config import check_network, merge_config, split_variant, validate_study_config
from kdcore.errors import ConfigError
from kdcore.models import architecture_module

CAPACITY_COUNTS = {
    "prepare_data": 1,
    "train_teacher": 1,  # resnet50 seed 0
    "train_baseline": 45,  # 9 students x seeds 0..4
    "train_final": 90,  # 9 students x 2 methods x 5 seeds
    "teacher_cache": 1,  # resnet50: 45 logit-KD final runs
    "all": 1,
}
QUICK_COUNTS = {
    "prepare_data": 1,
    "train_teacher": 1,  # resnet34-w16 on seed 0
    "train_baseline": 9,  # resnet18-w4, resnet18, resnet34 x seeds 0..2
    "train_final": 18,  # 3 pairs x 2 methods x 3 seeds
    "train_stem": 6,  # resnet18, resnet34 x seeds 0..2
    "train_clip": 3,
    "all": 1,  # no teacher_cache: 4-epoch runs would need 41 per teacher to repay a build (cache_worthwhile)
}


def study(overlay: dict) -> dict:
    base = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    return merge_config(base, overlay)


def test_capacity_study_job_count(tmp_path: Path) -> None:
    plan = dry_run(copy_workflow(tmp_path), "--configfile", "config/capacity.yaml")
    counts = {rule: n for rule, n in plan.counts.items() if not rule.startswith("analysis_")}
    assert counts == CAPACITY_COUNTS
    assert sum(CAPACITY_COUNTS.values()) == 139
    for path in (
        "results/runs/baselines/resnet18-w8/seed4/metrics.json",
        "results/runs/baselines/resnet110/seed0/metrics.json",
        "results/runs/final/resnet50-resnet18-w16/feature/seed2/metrics.json",
        "results/runs/baselines/resnet18-w32/seed1/test_logits.npz",
    ):
        assert path in plan.text, path


def test_capacity_study_spans_30x_in_one_family_and_a_depth_sweep() -> None:
    from kdcore.models import build_model, count_parameters

    cfg = validate_study_config(study(yaml.safe_load((REPO / "config/capacity.yaml").read_text())))
    assert {p["teacher"] for p in cfg["pairs"]} == {"resnet50"}
    students = [p["student"] for p in cfg["pairs"]]
    params = {}
    for label in students:
        arch, width = split_variant(label)
        params[label] = count_parameters(build_model(arch, width or cfg["model"]["width"] if width else None))
    resnet = [params[s] for s in students if split_variant(s)[0] in ("resnet18", "resnet34")]
    assert len(resnet) >= 5 and max(resnet) / min(resnet) >= 30
    assert {"resnet20", "resnet32", "resnet56", "resnet110"} <= set(students)
    assert set(cfg["methods"]) == {"logit", "feature"} and len(cfg["final"]["seeds"]) == 5


def test_split_variant() -> None:
    assert split_variant("resnet18-w16") == ("resnet18", 16)
    assert split_variant("resnet18") == ("resnet18", None)
    assert split_variant("wrn_40_2") == ("wrn_40_2", None)
    assert split_variant("resnet8x4") == ("resnet8x4", None)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("resnet19", "unknown architecture 'resnet19'"),
        ("resnet20-w16", "resnet20 has no width option"),
        ("resnet18-w64", "is resnet18 at the study's model.width"),
    ],
)
def test_bad_network_labels_name_key_and_value(label: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        check_network(label, "pairs[0].student", 64)
    with pytest.raises(ConfigError, match=r"config key 'pairs\[0\]\.student'.*" + expected.split("'")[0]):
        validate_study_config(study({"pairs": [{"teacher": "resnet50", "student": label}]}))


def test_every_registry_name_is_admitted_by_the_schema() -> None:
    from kdcore.models import available_architectures

    no_clip = {"ablations": {"clip": {"enabled": False}}}  # config.yaml's clip pair is not among these pairs
    for arch in available_architectures():
        validate_study_config(study({"pairs": [{"teacher": "resnet50", "student": arch}], **no_clip}))


def test_run_config_arch_is_checked_against_the_registry() -> None:
    from kdcore.config import resolve_config

    with pytest.raises(ConfigError, match="config key 'model.arch': unknown architecture 'resnet7'"):
        resolve_config({"data": "d.pt", "model": {"arch": "resnet7"}})
    assert resolve_config({"data": "d.pt", "model": {"arch": "wrn_16_2"}})["model"]["arch"] == "wrn_16_2"


def test_training_modules_add_the_family_modules() -> None:
    modules = provenance.training_modules("logit", ["resnet20", "resnet50", "resnet32"])
    assert modules == (
        "kdcore.engine",
        "kdcore.methods",
        "kdcore.methods.logit",
        "kdcore.models.cifar_resnet",
        "kdcore.models.resnet",
    )
    assert architecture_module("wrn_16_2") in provenance.training_modules("baseline", ["wrn_16_2"])


def test_resume_digest_changes_with_the_family_module_of_its_archs(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(provenance.SRC_ROOT / "kdcore", copy / "kdcore", ignore=shutil.ignore_patterns("__pycache__"))
    wrn = provenance.run_code_digest("logit", copy, archs=["wrn_16_2", "resnet50"])
    cifar = provenance.run_code_digest("logit", copy, archs=["resnet20", "resnet50"])
    family = copy / "kdcore" / "models" / "wrn.py"
    family.write_text(family.read_text() + "\nEDITED = 1\n")
    assert provenance.run_code_digest("logit", copy, archs=["wrn_16_2", "resnet50"]) != wrn
    assert provenance.run_code_digest("logit", copy, archs=["resnet20", "resnet50"]) == cifar


def test_labels_short_sort_and_pairs() -> None:
    assert [short(a) for a in ("resnet50", "resnet8x4", "resnet18-w16", "wrn_40_2")] == [
        "R50",
        "R8x4",
        "R18-w16",
        "WRN-40-2",
    ]
    names = ["wrn_16_2", "resnet18", "resnet110", "resnet18-w16", "resnet8x4", "resnet20", "resnet18-w8", "resnet8"]
    assert sorted(names, key=arch_sort_key) == [
        "resnet8",
        "resnet8x4",
        "resnet18-w8",
        "resnet18-w16",
        "resnet18",
        "resnet20",
        "resnet110",
        "wrn_16_2",
    ]
    assert split_pair("resnet50-resnet18-w16") == ("resnet50", "resnet18-w16")
    assert split_pair("resnet50-w16-wrn_16_2") == ("resnet50-w16", "wrn_16_2")
    assert split_pair("resnet32x4-resnet8x4") == ("resnet32x4", "resnet8x4")


def metrics(stage: str, arch: str, width: int, label: str, seed: int, acc: float, teacher: str | None = None) -> dict:
    labels = {"stage": stage, "run_id": f"{stage}/{label}/seed{seed}", "student": label}
    cfg = {"model": {"arch": arch, "width": width, "stem": "cifar"}, "train": {"seed": seed, "epochs": 1}}
    if teacher:
        labels.update(teacher=teacher, method="logit")
        cfg.update(teacher={"arch": teacher}, method={"name": "logit"})
    results = {"test_acc_best": acc, "test_acc_final": acc, "best_val_acc": acc, "epochs": 1}
    return {"kind": "metrics", "labels": labels, "config": cfg, "results": results, "model": {"params": width * 1000}}


def test_kd_gain_pairs_each_variant_with_its_own_baseline() -> None:
    """Two widths of one architecture are two students: each KD cell is compared with its own baselines."""
    rows = []
    for seed in range(3):
        noise = 0.001 * seed
        rows.append(run_record(metrics("baseline", "resnet18", 8, "resnet18-w8", seed, 0.50 + noise), "b8.json"))
        rows.append(run_record(metrics("baseline", "resnet18", 64, "resnet18", seed, 0.80 + noise), "b64.json"))
        rows.append(run_record(metrics("final", "resnet18", 8, "resnet18-w8", seed, 0.53 + noise, "resnet50"), "k8"))
        rows.append(run_record(metrics("final", "resnet18", 64, "resnet18", seed, 0.81 + noise, "resnet50"), "k64"))
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    assert set(runs["student"]) == {"resnet18-w8", "resnet18"}
    assert set(runs.loc[runs["stage"] == "final", "pair"]) == {"resnet50-resnet18-w8", "resnet50-resnet18"}
    gains = kd_comparisons(runs).set_index("student")["gain"]
    assert gains["resnet18-w8"] == pytest.approx(3.0) and gains["resnet18"] == pytest.approx(1.0)


def test_runs_without_network_labels_are_named_by_their_architecture() -> None:
    data = metrics("baseline", "resnet34", 64, "resnet34", 0, 0.7)
    del data["labels"]["student"]
    assert run_record(data, "m.json")["student"] == "resnet34"


def test_quick_study_has_three_capacities_under_one_teacher_and_stronger_teachers(tmp_path: Path) -> None:
    from kdcore.models import build_model, count_parameters

    cfg = validate_study_config(study(yaml.safe_load((REPO / "config/quick.yaml").read_text())))
    width = cfg["model"]["width"]

    def params(label: str) -> int:
        arch, w = split_variant(label)
        return count_parameters(build_model(arch, w or width))

    by_teacher: dict[str, set[int]] = {}
    for pair in cfg["pairs"]:
        by_teacher.setdefault(pair["teacher"], set()).add(params(pair["student"]))
        assert params(pair["teacher"]) > 2 * params(pair["student"]), pair
    assert max(len(sizes) for sizes in by_teacher.values()) >= 3
    assert cfg["epochs"]["teacher"] >= 2 * cfg["epochs"]["student"]

    workdir = copy_workflow(tmp_path)
    synthetic = {"data": {"source": "synthetic", "path": None, "subset": None}}
    (workdir / "config" / "synthetic.yaml").write_text(yaml.safe_dump(synthetic), encoding="utf-8")
    plan = dry_run(workdir, "--configfile", "config/quick.yaml", "config/synthetic.yaml")
    counts = {rule: n for rule, n in plan.counts.items() if not rule.startswith("analysis_")}
    assert counts == QUICK_COUNTS
    assert "results/runs/final/resnet34-w16-resnet18-w4/logit/seed2/metrics.json" in plan.text
