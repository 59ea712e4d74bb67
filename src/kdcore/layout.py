"""Where a study's runs live: the run folders a study config implies, under ``results/runs``.

The layout is the workflow's (workflow/rules/common.smk): ``teachers/<arch>/seed<s>``,
``baselines/<student>/seed<s>``, ``select/<teacher>-<student>/<method>/<hp>/seed<s>``,
``final/<teacher>-<student>/<method>/seed<s>``, ``stem/<arch>-imagenet/seed<s>``,
``clip/<teacher>-<student>/<method>/seed<s>``; each run's log is ``results/logs/<same path>.log``. A
selection grid point's folder ``<hp>`` is named by :func:`kdcore.methods.grid_points`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdcore.labels import split_chain
from kdcore.methods import grid_points

STAGES = ("teachers", "baselines", "select", "final", "stem", "clip")


@dataclass(frozen=True)
class ExpectedRun:
    """One training run of a study: its folder under ``runs/``, its length in epochs and what it trains
    (network labels as in the study config; ``teacher`` is None for runs without one)."""

    stage: str
    path: str
    epochs: int
    student: str
    teacher: str | None = None
    method: str = "baseline"
    stem: str = "cifar"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def expected_runs(study: Mapping[str, Any]) -> list[ExpectedRun]:
    """Every training run of a (validated, defaults filled) study config, without duplicates."""
    pairs = [(p["teacher"], p["student"]) for p in study["pairs"]]
    teachers = _unique([t for t, _ in pairs if split_chain(t) is None])  # a chain teacher is a final run
    students = _unique([s for _, s in pairs])
    e_teacher, e_student = study["epochs"]["teacher"], study["epochs"]["student"]
    final_seeds, methods = study["final"]["seeds"], list(study["methods"])
    runs = [
        ExpectedRun("teachers", f"teachers/{a}/seed{s}", e_teacher, a)
        for a in teachers
        for s in study["teachers"]["seeds"]
    ]
    runs += [ExpectedRun("baselines", f"baselines/{a}/seed{s}", e_student, a) for a in students for s in final_seeds]
    if study["selection"]["enabled"]:
        runs += [
            ExpectedRun("select", f"select/{t}-{s}/{m}/{hp}/seed{seed}", e_student, s, t, m)
            for t, s in pairs
            for m in methods
            for hp, _ in grid_points(m, study["methods"][m]["grid"])
            for seed in study["selection"]["seeds"]
        ]
    runs += [
        ExpectedRun("final", f"final/{t}-{s}/{m}/seed{seed}", e_student, s, t, m)
        for t, s in pairs
        for m in methods
        for seed in final_seeds
    ]
    stem = study["ablations"]["stem"]
    for run in stem["runs"] if stem["enabled"] else []:
        epochs = e_teacher if run["epochs"] == "teacher" else e_student
        cifar_arm = "teachers" if run["epochs"] == "teacher" else "baselines"
        for seed in run["seeds"]:
            runs.append(
                ExpectedRun("stem", f"stem/{run['arch']}-imagenet/seed{seed}", epochs, run["arch"], stem="imagenet")
            )
            runs.append(ExpectedRun(cifar_arm, f"{cifar_arm}/{run['arch']}/seed{seed}", epochs, run["arch"]))
    clip = study["ablations"]["clip"]
    if clip["enabled"]:
        runs += [
            ExpectedRun(
                "clip",
                f"clip/{p['teacher']}-{p['student']}/{clip['method']}/seed{seed}",
                e_student,
                p["student"],
                p["teacher"],
                clip["method"],
            )
            for p in clip["pairs"]
            for seed in clip["seeds"]
        ]
    return list({run.path: run for run in runs}.values())
