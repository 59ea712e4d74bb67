"""``kdcore plan --power``: the moderation power plan from a pilot's runs, checked by hand on a small study."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_moderation import paper_runs

from kdcore.analysis import moderation as M
from kdcore.cli import main
from kdcore.config import validate_study_config
from kdcore.plan import plan_study
from kdcore.powerplan import pilot_runs, pilot_sd, power_plan, render_power

STUDY = {
    "model": {"width": 8},
    "pairs": [{"teacher": "resnet50", "student": "resnet18-w4"}, {"teacher": "resnet50", "student": "resnet18"}],
    "methods": {"logit": {"grid": {"alpha": [0.5], "temperature": [4]}, "fixed": {"alpha": 0.5, "temperature": 4}}},
    "selection": {"enabled": False},
    "final": {"seeds": [0, 1, 2]},
    "teachers": {"seeds": [0], "distill_seed": 0},
    "ablations": {"stem": {"enabled": False}, "clip": {"enabled": False}},
    "analysis": {"min_effect_pp": 0.2},
}


@pytest.fixture
def flat_flops(monkeypatch):
    """Every network costs 1 GFLOP per image: the plan's GPU-hours without building models (not under test here)."""
    monkeypatch.setattr("kdcore.plan.flops_per_image", lambda label, width, stem: 10**9)


def test_pilot_sd_pools_the_per_seed_gains_of_the_methods_cells():
    runs = paper_runs()
    sd = pilot_sd(runs, "logit")
    base = runs[runs["stage"] == "baseline"].set_index(["student", "seed"])["test_best"]
    ss, df = 0.0, 0
    for _, g in runs[(runs["stage"] == "final") & (runs["method"] == "logit")].groupby("student"):
        kd = g.set_index(["student", "seed"])["test_best"]
        d = (kd - base.loc[kd.index]).to_numpy()
        ss, df = ss + float(((d - d.mean()) ** 2).sum()), df + len(d) - 1
    assert (sd.sd, sd.df, sd.cells) == (pytest.approx(math.sqrt(ss / df)), 8, 2)
    assert sd.upper > sd.sd and sd.source == "logit cells"
    assert pilot_sd(runs, "dkd").source == "all final cells" and pilot_sd(runs, "dkd").df == 16


def test_power_plan_seeds_and_cost(flat_flops):
    study = validate_study_config(STUDY)
    plan = plan_study(study)
    power = power_plan(study, paper_runs(), plan)
    (fam,) = power.families
    x = [math.log2(p) for p in (fam_params("resnet18-w4"), fam_params("resnet18"))]
    span = x[1] - x[0]
    assert fam.span_doublings == pytest.approx(span) and fam.seeds == 3
    n, sd = fam.seeds_needed, fam.pilot.sd
    assert (
        M.slope_power(0.2 / span, sd, x, n, paired=True) >= 0.8 > M.slope_power(0.2 / span, sd, x, n - 1, paired=True)
    )
    assert fam.seeds_needed_upper == M.seeds_for_slope(0.2 / span, fam.pilot.upper, x, paired=True) > n
    assert M.slope_power(fam.mde_change / span, sd, x, 3, paired=True) == pytest.approx(0.8)
    # per seed: a baseline of each of the 2 students and a final run of each pair; the teacher runs are fixed
    assert power.runs_per_seed == 4 and power.runs == len(plan.jobs)
    per_seed = sum(e.gpu_hours for e in plan.jobs if e.job.stage in ("baseline", "final"))
    cost = power.cost(n)
    assert cost["runs"] == len(plan.jobs) + (n - 3) * 4
    assert cost["gpu_hours"] == pytest.approx(plan.totals()["gpu_hours"] + (n - 3) * per_seed / 3)
    text = render_power(power)
    assert f"needed at the point SD: {n} seeds, {cost['runs']} runs" in text


def fam_params(label: str) -> int:
    from kdcore.config import network_spec
    from kdcore.models import build_model, count_parameters

    spec = network_spec(label, "cifar", 8)
    return count_parameters(build_model(spec["arch"], spec.get("width"), spec["stem"]))


def test_cli_plan_power_reads_a_runs_csv(tmp_path, capsys, flat_flops):
    import yaml

    runs = paper_runs()
    runs.to_csv(tmp_path / "runs.csv", index=False)
    assert isinstance(pilot_runs(tmp_path), pd.DataFrame)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    assert main(["plan", str(tmp_path / "study.yaml"), "--power", str(tmp_path / "runs.csv")]) == 0
    out = capsys.readouterr().out
    assert "Moderation power" in out and "needed at the upper SD" in out and np.isfinite(len(out))


def test_the_shipped_powered_capacity_config_detects_the_min_effect(flat_flops):
    from _workflow_tools import REPO

    from kdcore.config import load_config_file, merge_config

    merged: dict = {}
    for name in ("config.yaml", "config/capacity.yaml", "config/capacity-powered.yaml"):
        merged = merge_config(merged, load_config_file(REPO / name))
    study = validate_study_config(merged)
    power = power_plan(study, paper_runs(), plan_study(study))
    assert power.seeds == 15 and power.min_effect_pp == 0.2
    for fam in power.families:
        assert fam.seeds_needed <= 15 and fam.mde_change <= 0.2 and len(fam.students) == 9
