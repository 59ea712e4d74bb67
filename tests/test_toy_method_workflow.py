"""A method that is one module outside src/, and nothing else: a toy method written to a temporary folder,
made visible with KDCORE_METHOD_PATH, runs through selection, final runs, the run table, statistics, LaTeX
tables and figures of a smoke-sized study, under its own label and hyper-parameter. The study reuses the shared
smoke study's data, teacher and baselines (same settings and code), which the toy method leaves alone."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _smoke_study import SmokeStudy
from _workflow_tools import copy_workflow, dry_run, snakemake

pytestmark = pytest.mark.slow

TOY_METHOD = '''
"""Toy KD: cross-entropy plus ``weight`` times the mean squared difference of student and teacher logits."""

from typing import ClassVar

import torch.nn.functional as F

from kdcore.methods.base import ForwardOutputs, HyperParameter, Method, cross_entropy


class ToyKD(Method):
    name = "toykd"
    label = "Toy-KD"
    tex = "Toy-KD$^\\\\star$"
    needs_teacher = True
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = (
        HyperParameter("weight", "w", "number", 1.0, minimum=0, label="weight", tex=r"$\\lambda_{\\mathrm{toy}}$"),
    )

    def loss(self, outputs: ForwardOutputs, trainable):
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        kd = F.mse_loss(outputs.student_logits.float(), outputs.teacher_logits.float())
        return ce + self.params["weight"] * kd, {"ce": ce, "kd": kd}


METHOD = ToyKD
'''


# what the test reads: the run, selection and comparison tables, three LaTeX tables and two figures (the
# other outputs are drawn by the same method-agnostic code as in the smoke study)
TARGETS = (
    "results/tables/runs.csv",
    "results/tables/selection.csv",
    "results/tables/comparisons.csv",
    "results/tables/main_results.tex",
    "results/tables/selection.tex",
    "results/tables/kd_statistics.tex",
    "results/figures/gain_vs_capacity.png",
    "results/figures/fidelity.pdf",
)


def toy_study(smoke: dict) -> dict:
    """The smoke study with the toy method as its only KD method, no ablations and no teacher-output cache."""
    config = copy.deepcopy(smoke)
    config["teacher_cache"]["enabled"] = False
    config["methods"] = {"toykd": {"grid": {"weight": [0.5, 2.0]}, "fixed": None}}
    config["ablations"]["stem"]["enabled"] = False
    config["ablations"]["clip"]["enabled"] = False
    return config


def test_toy_method_runs_from_selection_to_report(
    smoke_study: SmokeStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "toykd.py").write_text(TOY_METHOD, encoding="utf-8")
    monkeypatch.setenv("KDCORE_METHOD_PATH", str(methods))
    work = copy_workflow(tmp_path / "wf")
    # the study is the whole config (an overlay would merge the toy method into config.yaml's methods)
    (work / "config.yaml").write_text(yaml.safe_dump(toy_study(smoke_study.config), sort_keys=False), encoding="utf-8")
    smoke_study.seed(work)  # its data, teacher and baselines: the same settings, so not trained again

    plan = dry_run(work)
    assert not {"prepare_data", "train_teacher", "train_baseline"} & set(plan.counts)
    assert {w["hp"] for w in plan.of("train_select", method="toykd")} == {"w0.5", "w2"}
    assert len(plan.of("train_final", method="toykd")) == 2
    snakemake(work, "--cores", "2", *TARGETS, timeout=1500)

    runs = work / "results/runs"
    assert (runs / "select/resnet34-resnet18/toykd/w2/seed0/metrics.json").is_file()
    assert (runs / "final/resnet34-resnet18/toykd/seed1/metrics.json").is_file()
    tables = work / "results/tables"
    run_table = pd.read_csv(tables / "runs.csv")
    assert "weight" in run_table.columns and not {"alpha", "temperature", "beta"} & set(run_table.columns)
    assert set(run_table.loc[run_table["stage"] == "select", "weight"]) == {0.5, 2.0}
    selection = pd.read_csv(tables / "selection.csv")
    assert set(selection["weight"]) == {0.5, 2.0} and selection["winner"].sum() == 1
    comparisons = pd.read_csv(tables / "comparisons.csv")
    assert list(comparisons["method"]) == ["toykd"]
    main = (tables / "main_results.tex").read_text(encoding="utf-8")
    assert "Toy-KD$^\\star$ gain" in main and "Logit-KD" not in main
    assert r"$\lambda_{\mathrm{toy}}$" in (tables / "selection.tex").read_text(encoding="utf-8")
    assert "Toy-KD$^\\star$" in (tables / "kd_statistics.tex").read_text(encoding="utf-8")
    figures = work / "results/figures"
    assert (figures / "gain_vs_capacity.png").stat().st_size > 0 and (figures / "fidelity.pdf").is_file()
    assert dry_run(work, *TARGETS).counts == {}

    # the toy module is part of its runs' code: an edit reruns the toy branch, not the teachers
    (methods / "toykd.py").write_text(TOY_METHOD.replace("ce + self", "1.0 * ce + self"), encoding="utf-8")
    counts = dry_run(work).counts
    assert counts["train_select"] == 2 and counts["train_final"] == 2 and "train_teacher" not in counts
