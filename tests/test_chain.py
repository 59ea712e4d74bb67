"""Distillation chains (teacher assistants): a pair's teacher may be `<teacher>.<method>.<student>`, the final
run of another pair of the same study. Label parsing, config errors, the run layout, the analysis' teacher
rows and labels, and the workflow's plan (dry run) of config/smoke-chain.yaml."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _workflow_tools import REPO, copy_workflow, dry_run, snakemake

from kdcore.analysis.latex import pair_tex, short, split_pair, tex_short
from kdcore.analysis.stats import cell_summary, teacher_premise, teacher_runs
from kdcore.analysis.table import RUN_COLUMNS
from kdcore.config import load_study_config, merge_config, network_spec, validate_study_config
from kdcore.errors import ConfigError
from kdcore.labels import chain_network, split_chain
from kdcore.plan import plan_study, render_text
from kdcore.study import build_study

CHAIN = "resnet101.logit.resnet50"


def chain_study(**changes) -> dict:
    """config.yaml with config/smoke.yaml and config/smoke-chain.yaml on top, then ``changes`` (key: value)."""
    study = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    for overlay in ("config/smoke.yaml", "config/smoke-chain.yaml"):
        study = merge_config(study, yaml.safe_load((REPO / overlay).read_text(encoding="utf-8")))
    return merge_config(study, changes)


def test_split_chain_reads_nested_chains_from_the_right() -> None:
    assert split_chain("resnet50") is None and split_chain("resnet18-w16") is None
    assert split_chain(CHAIN) == ("resnet101", "logit", "resnet50")
    assert split_chain(f"{CHAIN}-w16.dkd.resnet18") == (f"{CHAIN}-w16", "dkd", "resnet18")
    assert chain_network(f"{CHAIN}.dkd.resnet18-w16") == "resnet18-w16" and chain_network("wrn_40_2") == "wrn_40_2"
    with pytest.raises(ConfigError, match="expected <network> or <teacher>.<method>.<student>"):
        split_chain("logit.resnet50")


def test_chain_teacher_builds_its_last_network() -> None:
    assert network_spec(f"{CHAIN}-w16", "cifar", 8) == {"arch": "resnet50", "stem": "cifar", "width": 16}


def test_chain_study_validates() -> None:
    study = validate_study_config(chain_study())
    assert study["pairs"][2]["teacher"] == CHAIN


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"pairs": [{"teacher": CHAIN, "student": "resnet18"}]},
            "config key 'pairs[0].teacher': chain teacher 'resnet101.logit.resnet50' needs the pair "
            "{teacher: resnet101, student: resnet50} in pairs",
        ),
        (
            {
                "pairs": [
                    {"teacher": "resnet101", "student": "resnet50"},
                    {"teacher": f"{CHAIN}.dkd.resnet34", "student": "resnet18"},
                ]
            },
            "needs the pair {teacher: resnet101.logit.resnet50, student: resnet34}",
        ),
        (
            {
                "pairs": [
                    {"teacher": "resnet101", "student": "resnet50"},
                    {"teacher": "resnet101.dkd.resnet50", "student": "resnet18"},
                ]
            },
            "config key 'pairs[1].teacher': chain teacher 'resnet101.dkd.resnet50': 'dkd' is not a key of methods",
        ),
        (
            {"teachers": {"seeds": [0, 3], "distill_seed": 3}},
            "config key 'teachers.distill_seed': 3 is not one of final.seeds, which chain teacher "
            "'resnet101.logit.resnet50' (pairs[2].teacher) distils from",
        ),
        (
            {
                "pairs": [
                    {"teacher": "resnet101", "student": "resnet50"},
                    {"teacher": "resnet101.logit.resnet77", "student": "resnet18"},
                ]
            },
            "config key 'pairs[1].teacher': unknown architecture 'resnet77'",
        ),
    ],
)
def test_chain_config_errors_name_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_study_config(chain_study(**changes))
    assert message in str(err.value)


def test_schema_rejects_a_malformed_chain() -> None:
    bad = chain_study(pairs=[{"teacher": "resnet101.logit", "student": "resnet18"}])
    with pytest.raises(ConfigError, match=r"config key .pairs\.0\.teacher.: .resnet101\.logit. is not allowed"):
        validate_study_config(bad)


def test_layout_trains_no_teacher_run_for_a_chain_teacher() -> None:
    runs = build_study(validate_study_config(chain_study())).runs
    assert [r.folder for r in runs if r.stage == "teacher"] == ["teachers/resnet101/seed0"]
    chained = [r for r in runs if r.stage == "final" and r.teacher == CHAIN]
    assert [r.folder for r in chained] == [f"final/{CHAIN}-resnet18/logit/seed{s}" for s in (0, 1)]
    assert {r.teacher_run for r in chained} == {"final/resnet101-resnet50/logit/seed0"}


def test_labels_show_the_chain() -> None:
    assert short(CHAIN) == "R101\u2192R50 (logit)"
    assert tex_short(f"{CHAIN}.my_kd.resnet34") == r"R101$\rightarrow$R50 (logit)$\rightarrow$R34 (my\_kd)"
    assert split_pair(f"{CHAIN}-w16-resnet18-w8") == (f"{CHAIN}-w16", "resnet18-w8")
    assert pair_tex(f"{CHAIN}-resnet18") == r"R101$\rightarrow$R50 (logit)$\rightarrow$R18"


def _row(stage: str, teacher: str, student: str, method: str, seed: int, acc: float) -> dict:
    row = {c: math.nan for c in RUN_COLUMNS}
    pair = f"{teacher}-{student}" if teacher else ""
    run_id = f"{stage}/{pair or student}/{method}/seed{seed}"
    row.update(stage=stage, run_id=run_id, teacher=teacher, student=student, pair=pair, method=method, seed=seed)
    row.update(stem="cifar", test_best=acc, val_acc=acc, params=1.0, epochs=1)
    return row


def test_a_chain_teacher_is_its_final_runs_in_the_analysis() -> None:
    runs = pd.DataFrame(
        [
            _row("teacher", "", "resnet101", "baseline", 0, 80.0),
            _row("final", "resnet101", "resnet50", "logit", 0, 78.0),
            _row("final", "resnet101", "resnet50", "logit", 1, 76.0),
            _row("final", "resnet101", "resnet50", "feature", 0, 50.0),  # another method: not the chain's
            _row("baseline", "", "resnet18", "baseline", 0, 70.0),
            _row("baseline", "", "resnet18", "baseline", 1, 72.0),
            _row("final", CHAIN, "resnet18", "logit", 0, 73.0),
            _row("final", CHAIN, "resnet18", "logit", 1, 74.0),
        ],
        columns=RUN_COLUMNS,
    )
    teachers = teacher_runs(runs)
    assert sorted(teachers["student"]) == ["resnet101", CHAIN, CHAIN]
    assert sorted(teachers.loc[teachers["student"] == CHAIN, "test_best"]) == [76.0, 78.0]
    cells = cell_summary(runs)
    chain_cell = cells[(cells["stage"] == "teacher") & (cells["student"] == CHAIN)]
    assert chain_cell["mean"].tolist() == [77.0] and chain_cell["n"].tolist() == [2]
    premise = teacher_premise(runs).set_index("pair")
    assert premise.loc[f"{CHAIN}-resnet18", "teacher_mean"] == 77.0
    assert premise.loc[f"{CHAIN}-resnet18", "margin"] == 6.0 and premise.loc[f"{CHAIN}-resnet18", "holds"]


def test_chain_study_plan_waits_on_the_final_run(tmp_path: Path) -> None:
    root = copy_workflow(tmp_path / "wf")
    plan = dry_run(root, "--configfile", "config/smoke.yaml", "config/smoke-chain.yaml")
    assert plan.of("train_teacher") == [{"arch": "resnet101", "seed": "0"}]
    assert len(plan.of("train_final", teacher=CHAIN)) == 2 and len(plan.of("train_select", teacher=CHAIN)) == 1
    assert not plan.of("teacher_cache")  # off in smoke-chain.yaml
    study = build_study(
        load_study_config([root / "config.yaml", root / "config/smoke.yaml", root / "config/smoke-chain.yaml"])
    )
    controls = {c.teacher: c.teacher_run for c in study.fidelity if c.stage == "baseline" and c.student == "resnet18"}
    assert controls == {CHAIN: "final/resnet101-resnet50/logit/seed0", "resnet101": "teachers/resnet101/seed0"}
    assert "results/runs/final/resnet101-resnet50/logit/seed0/test_logits.npz" in plan.text  # read by the analysis
    proc = snakemake(
        root, "-n", "--cores", "1", "--configfile", "config/smoke.yaml", "config/smoke-chain.yaml",
        "--forceall", f"results/runs/final/{CHAIN}-resnet18/logit/seed1/metrics.json", "-p",
    )  # fmt: skip
    assert "results/runs/final/resnet101-resnet50/logit/seed0/best.pt" in proc.stdout
    # with the cache on, the chain teacher's cache is built from the final run it names
    (root / "cache-on.yaml").write_text("teacher_cache: {enabled: true}\n", encoding="utf-8")
    cached = dry_run(root, "--configfile", "config/smoke.yaml", "config/smoke-chain.yaml", "cache-on.yaml")
    assert sorted(w["teacher"] for w in cached.of("teacher_cache")) == ["resnet101", CHAIN]
    proc = snakemake(
        root, "-n", "--cores", "1", "--configfile", "config/smoke.yaml", "config/smoke-chain.yaml", "cache-on.yaml",
        "--forceall", f"results/cache/{CHAIN}/logits.pt", "-p",
    )  # fmt: skip
    assert "results/runs/final/resnet101-resnet50/logit/seed0/best.pt" in proc.stdout


def test_a_chain_to_a_pair_the_study_lacks_fails_before_any_job(tmp_path: Path) -> None:
    root = copy_workflow(tmp_path / "wf")
    bad = root / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pairs": [{"teacher": CHAIN, "student": "resnet18"}]}), encoding="utf-8")
    proc = snakemake(root, "-n", "--cores", "1", "--configfile", "config/smoke.yaml", str(bad), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "pairs[0].teacher" in output and "needs the pair" in output
    assert "Job stats" not in output


def test_plan_costs_a_chain_teacher_as_its_network() -> None:
    study = validate_study_config(chain_study())
    plan = plan_study(study)
    chained = [e for e in plan.jobs if e.job.teacher == CHAIN]
    direct = {e.job.path: e for e in plan.jobs if e.job.teacher == "resnet101"}
    assert len(chained) == 3  # 1 grid point + 2 final seeds
    # the chain teacher forwards a ResNet-50, cheaper than the ResNet-101 teaching the same student directly
    chain_final = next(e for e in chained if e.job.stage == "final")
    direct_final = direct[chain_final.job.path.replace(CHAIN, "resnet101")]
    assert 0 < chain_final.gpu_hours < direct_final.gpu_hours
    assert any(CHAIN in line and "final" in line for line in render_text(plan).splitlines())
