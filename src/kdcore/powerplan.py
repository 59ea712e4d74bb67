"""``kdcore plan CONFIG --power PILOT``: can a study answer the moderation question, and what does it cost?

For each (teacher, method) family of the config with two or more students, the moderation test of
:mod:`kdcore.analysis.moderation` (slope of the KD gain on log2 student parameters, paired by seed) is planned
a priori from a pilot's run-to-run SD:

* the pilot is a finished study (its ``runs.csv``, or a results folder holding ``tables/runs.csv``) or the
  paper's per-run results zip (imported into a temporary folder);
* the SD is the pooled SD of the pilot's per-seed KD gains (KD minus the same student's baseline of the same
  seed) over its final cells of the same method (all methods when the pilot lacks it), with its degrees of
  freedom and its one-sided 95 % upper confidence limit (chi-square);
* at the config's final seeds: the smallest change of the gain across the family's capacity range detectable
  with 80 % power; and the seeds per group needed to detect ``analysis.min_effect_pp`` (at the SD's point
  estimate and at its upper limit), as :func:`kdcore.analysis.moderation.seeds_for_slope` computes them
  (paired design, equal SDs and seeds per cell);
* the cost of those seeds: the config's baseline and final work scales with its final seeds, the rest
  (teachers, selection, ablations) does not; runs and GPU-hours come from :mod:`kdcore.plan`'s estimate.

Parameter counts are those of the config's networks (built on the CPU, as :mod:`kdcore.plan` does for FLOPs).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kdcore.errors import ConfigError
from kdcore.plan import StudyPlan

PER_SEED_STAGES = ("baseline", "final")


@dataclass(frozen=True)
class PilotSD:
    """Run-to-run SD (pp) of the per-seed KD gains of a pilot, its df and upper confidence limit."""

    sd: float
    df: int
    upper: float
    cells: int
    source: str


@dataclass(frozen=True)
class FamilyPower:
    """The a priori plan of one family's moderation test."""

    teacher: str
    method: str
    students: tuple[str, ...]
    span_doublings: float
    seeds: int
    pilot: PilotSD
    mde_change: float
    mde_change_upper: float
    seeds_needed: int | None
    seeds_needed_upper: int | None


@dataclass(frozen=True)
class PowerPlan:
    """The power plan of a study: its families and the cost of its seeds."""

    min_effect_pp: float
    families: list[FamilyPower]
    seeds: int
    runs: int
    runs_per_seed: int
    gpu_hours: float
    gpu_hours_per_seed: float

    def cost(self, seeds: int | None) -> dict[str, float] | None:
        """Runs and GPU-hours of the study with ``seeds`` final seeds (None when ``seeds`` is)."""
        if seeds is None:
            return None
        extra = seeds - self.seeds
        return {
            "seeds": seeds,
            "runs": self.runs + extra * self.runs_per_seed,
            "gpu_hours": self.gpu_hours + extra * self.gpu_hours_per_seed,
        }


def pilot_runs(path: str | Path) -> Any:
    """The run table of a pilot: a runs.csv, a results folder (``tables/runs.csv`` or ``runs.csv``) or the
    paper's results zip (imported into a temporary folder)."""
    from kdcore.analysis.imported import write_imported_run_tables
    from kdcore.analysis.table import read_table

    path = Path(path)
    if path.suffix == ".zip":
        with tempfile.TemporaryDirectory() as tmp:
            outputs = {kind: Path(tmp) / f"{kind}.csv" for kind in ("runs", "fidelity", "history")}
            write_imported_run_tables(path, Path(tmp) / "runs", outputs)
            return read_table(outputs["runs"])
    for candidate in (path, path / "tables" / "runs.csv", path / "runs.csv"):
        if candidate.is_file():
            return read_table(candidate)
    raise ConfigError(f"pilot {path}: not a runs.csv, a results folder with tables/runs.csv, or a results zip")


def pilot_sd(runs: Any, method: str | None = None) -> PilotSD:
    """Pooled SD of the per-seed KD gains of the pilot's final cells of ``method`` (every method when the
    pilot has none of it). Assumes one run-to-run SD shared by the cells and normal gains."""
    from kdcore.analysis.moderation import gain_points
    from kdcore.analysis.stats import sd_upper_limit

    points = gain_points(runs)
    source = f"{method} cells"
    if method is None or not (points["method"] == method).any():
        source = "all final cells"
    else:
        points = points[points["method"] == method]
    groups = [g["gain"] for _, g in points.groupby(["teacher", "method", "student"]) if len(g) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if df == 0:
        raise ConfigError("pilot: no final KD cell with 2 or more seeds paired with its student's baseline")
    sd = math.sqrt(sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / df)
    return PilotSD(sd, df, sd_upper_limit(sd, df), len(groups), source)


@cache
def student_log2_params(label: str, width: int) -> float:
    """log2 of the parameter count of network ``label`` of a study whose ``model.width`` is ``width``."""
    from kdcore.config import network_spec
    from kdcore.models import build_model, count_parameters

    spec = network_spec(label, "cifar", width)
    return math.log2(count_parameters(build_model(spec["arch"], spec.get("width"), spec["stem"])))


def families(study: Mapping[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(teacher, method) -> its students, for the config's pairs and methods."""
    out: dict[tuple[str, str], list[str]] = {}
    for pair in study["pairs"]:
        for method in study["methods"]:
            out.setdefault((pair["teacher"], method), []).append(pair["student"])
    return out


def family_power(
    teacher: str, method: str, x: list[float], students: list[str], seeds: int, sd: PilotSD, effect: float
) -> FamilyPower:
    """The plan of one family with capacities ``x`` (log2 parameters) at ``seeds`` seeds per group."""
    from kdcore.analysis.moderation import detectable_slope, seeds_for_slope

    span = max(x) - min(x)
    return FamilyPower(
        teacher,
        method,
        tuple(students),
        span,
        seeds,
        sd,
        detectable_slope(sd.sd, x, seeds, paired=True) * span,
        detectable_slope(sd.upper, x, seeds, paired=True) * span,
        seeds_for_slope(effect / span, sd.sd, x, paired=True),
        seeds_for_slope(effect / span, sd.upper, x, paired=True),
    )


def power_plan(study: Mapping[str, Any], runs: Any, plan: StudyPlan, min_effect_pp: float | None = None) -> PowerPlan:
    """The moderation power plan of a validated study config from a pilot's run table and the study's cost
    plan (:func:`kdcore.plan.plan_study`)."""
    effect = float(min_effect_pp or study.get("analysis", {}).get("min_effect_pp", 0.2))
    seeds = len(study["final"]["seeds"])
    width = study["model"]["width"]
    out = []
    for (teacher, method), students in families(study).items():
        x = [student_log2_params(s, width) for s in students]
        if len(set(x)) >= 2:
            out.append(family_power(teacher, method, x, students, seeds, pilot_sd(runs, method), effect))
    if not out:
        raise ConfigError("plan --power: no teacher and method with two or more students of different size")
    per_seed = [e for e in plan.jobs if e.job.stage in PER_SEED_STAGES]
    totals = plan.totals()
    return PowerPlan(
        effect,
        out,
        seeds,
        int(totals["jobs"]),
        len(per_seed) // seeds,
        float(totals["gpu_hours"]),
        sum(e.gpu_hours for e in per_seed) / seeds,
    )


def _n(value: int | None) -> str:
    return f"{value}" if value is not None else "> 100000"


def render_power(power: PowerPlan) -> str:
    """The power plan as text: per family, then the study's cost at the seeds the plan needs."""
    lines = [
        f"Moderation power (paired by seed, 80% power, alpha 0.05; change of the KD gain across each family's "
        f"capacity range; min effect {power.min_effect_pp:g} pp)",
        f"{'teacher':<12}{'method':<9}{'students':>9}{'doublings':>10}{'pilot SD (df)':>16}{'SD upper':>9}"
        f"{'MDE now':>9}{'MDE upper':>10}{'seeds':>7}{'upper':>7}",
    ]
    for f in power.families:
        lines.append(
            f"{f.teacher:<12}{f.method:<9}{len(f.students):>9}{f.span_doublings:>10.2f}"
            f"{f'{f.pilot.sd:.3f} ({f.pilot.df})':>16}{f.pilot.upper:>9.3f}{f.mde_change:>9.3f}"
            f"{f.mde_change_upper:>10.3f}{_n(f.seeds_needed):>7}{_n(f.seeds_needed_upper):>7}"
        )
    lines.append(
        f"MDE now: smallest detectable change (pp) at the config's {power.seeds} seeds; seeds: per group for "
        f"{power.min_effect_pp:g} pp (upper: at the SD's one-sided 95% upper confidence limit)"
    )
    lines.append(f"config: {power.seeds} seeds, {power.runs} runs, {power.gpu_hours:.1f} GPU-hours")
    for label, key in (("point SD", "seeds_needed"), ("upper SD", "seeds_needed_upper")):
        needed = [getattr(f, key) for f in power.families]
        cost = power.cost(None if None in needed else max(needed))
        if cost is None:
            lines.append(f"needed at the {label}: more than 100000 seeds")
            continue
        verdict = "enough" if cost["seeds"] <= power.seeds else "more seeds needed"
        lines.append(
            f"needed at the {label}: {cost['seeds']} seeds, {cost['runs']} runs, {cost['gpu_hours']:.1f} GPU-hours "
            f"({verdict})"
        )
    return "\n".join(lines) + "\n"


def power_json(power: PowerPlan) -> dict[str, Any]:
    """The power plan as a JSON-ready dict."""
    needed = {
        key: power.cost(None if None in (v := [getattr(f, key) for f in power.families]) else max(v))
        for key in ("seeds_needed", "seeds_needed_upper")
    }
    return {**asdict(power), "cost_needed": needed}
