"""A study's runs, built once from its validated config: the one description of which runs a study has and
where they live, read by the workflow's input functions, ``kdcore plan`` and ``kdcore status``.

Each training run (:class:`Run`) has its stage, the network it trains, its teacher, method, hyper-parameter
point, seed and length, its folder under ``results/runs`` and its inputs (the teacher run it distils from,
the selection file whose winner it takes). Folders follow :data:`FOLDER_PATTERNS`, whose ``{placeholders}``
are the workflow's wildcards, so the workflow's rules use the same patterns as their outputs. A run's log is
``results/logs/<folder>.log``. A selection grid point's folder ``<hp>`` is named by
:func:`kdcore.methods.grid_points`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdcore.augment import PAD, n_views
from kdcore.config import network_arch, network_spec, resolve_config
from kdcore.errors import ConfigError, KDCoreError
from kdcore.labels import chain_network, split_chain
from kdcore.methods import get_method, grid_points
from kdcore.models import available_architectures
from kdcore.runfolder import BEST_FILE
from kdcore.teacher_cache import cache_worthwhile

#: The stages of a study, in the order of its DAG; a run's ``labels.stage`` in metrics.json.
STAGES = ("teacher", "baseline", "select", "final", "stem", "clip")
#: The folder of a run of each stage under ``results/runs``; the placeholders are the workflow's wildcards.
FOLDER_PATTERNS: dict[str, str] = {
    "teacher": "teachers/{arch}/seed{seed}",
    "baseline": "baselines/{student}/seed{seed}",
    "select": "select/{teacher}-{student}/{method}/{hp}/seed{seed}",
    "final": "final/{teacher}-{student}/{method}/seed{seed}",
    "stem": "stem/{arch}-imagenet/seed{seed}",
    "clip": "clip/{teacher}-{student}/{method}/seed{seed}",
}
#: The winner file of one (pair, method) of the selection, under ``results``.
WINNER_PATTERN = "selection/{teacher}-{student}/{method}.json"


def run_folder(stage: str, **wildcards: Any) -> str:
    """The folder of one run of ``stage`` under ``results/runs`` (wildcard values, or ``"{name}"`` patterns)."""
    return FOLDER_PATTERNS[stage].format(**wildcards)


def folder_root(stage: str) -> str:
    """The top folder under ``results/runs`` that holds the runs of ``stage`` (``teachers`` for ``teacher``)."""
    return FOLDER_PATTERNS[stage].split("/", 1)[0]


def winner_file(teacher: str, student: str, method: str) -> str:
    return WINNER_PATTERN.format(teacher=teacher, student=student, method=method)


@dataclass(frozen=True)
class Run:
    """One training run of a study. ``network`` is the network it trains (the teacher's for a teacher run);
    ``params`` its method's hyper-parameters where the config fixes them (a grid point, or ``fixed`` without
    selection), None where the selection's winner decides them at job time (``winner``)."""

    stage: str
    network: str
    seed: int
    epochs: int
    epochs_kind: str
    teacher: str | None = None
    method: str = "baseline"
    hp: str | None = None
    params: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    stem: str = "cifar"
    clip_scope: str = "all"
    teacher_run: str | None = None
    winner: str | None = None
    cifar_arm: str | None = None

    @property
    def wildcards(self) -> dict[str, str]:
        """The values of the placeholders of the run's folder pattern, as the workflow's rules see them."""
        found = {"arch": self.network, "student": self.network, "teacher": self.teacher, "method": self.method}
        found |= {"hp": self.hp, "seed": str(self.seed)}
        names = [part.split("}")[0] for part in FOLDER_PATTERNS[self.stage].split("{")[1:]]
        return {name: str(found[name]) for name in names}

    @property
    def folder(self) -> str:
        return run_folder(self.stage, **self.wildcards)

    @property
    def pair(self) -> str | None:
        return None if self.teacher is None else f"{self.teacher}-{self.network}"


@dataclass(frozen=True)
class FidelityCheck:
    """One fidelity comparison on the test set: run ``student_run`` (a final KD run, or a baseline as the
    control) against ``teacher``, whose run is ``teacher_run`` (folders under ``results/runs``). The analysis
    measures it from the two runs' stored test logits (kdcore.fidelity), at the best-val checkpoints."""

    stage: str
    student_run: str
    student: str
    teacher: str
    method: str
    seed: int
    teacher_run: str


@dataclass(frozen=True)
class Study:
    """Every training run (no duplicates, in :data:`STAGES` order with each stem run followed by its CIFAR
    arm), every fidelity comparison and every selection (teacher, student, method) of a study."""

    runs: tuple[Run, ...]
    fidelity: tuple[FidelityCheck, ...]
    selections: tuple[tuple[str, str, str], ...]

    def of_stage(self, stage: str) -> list[Run]:
        return [run for run in self.runs if run.stage == stage]

    def run(self, stage: str, **wildcards: Any) -> Run:
        """The run of ``stage`` with these wildcard values; a run the study does not have is a ConfigError."""
        folder = run_folder(stage, **wildcards)
        for run in self.runs:
            if run.folder == folder:
                return run
        raise ConfigError(f"the study has no run {folder}")

    def candidates(self, teacher: str, student: str, method: str) -> list[Run]:
        """The selection runs of one (pair, method), in grid order then seed order."""
        return [r for r in self.of_stage("select") if (r.teacher, r.network, r.method) == (teacher, student, method)]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _pairs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(p["teacher"], p["student"]) for p in config["pairs"]]


def teacher_run(teacher: str, config: Mapping[str, Any]) -> str:
    """The folder of the run whose best.pt distils as ``teacher`` (seed ``teachers.distill_seed``): its teacher
    run, or for a chain teacher ``<teacher>.<method>.<student>`` the final run of that pair and method."""
    seed = config["teachers"]["distill_seed"]
    chain = split_chain(teacher)
    if chain is None:
        return run_folder("teacher", arch=teacher, seed=seed)
    parent, method, student = chain
    return run_folder("final", teacher=parent, student=student, method=method, seed=seed)


def _kd_run(config: Mapping[str, Any], stage: str, teacher: str, student: str, method: str, seed: int, **extra) -> Run:
    """A run distilled from ``teacher`` (selection, final or clip)."""
    selection = config["selection"]["enabled"]
    fixed = None if selection else dict(config["methods"][method].get("fixed") or {})
    return Run(
        stage,
        student,
        seed,
        config["epochs"]["student"],
        "student",
        teacher=teacher,
        method=method,
        params=extra.pop("params", fixed),
        teacher_run=teacher_run(teacher, config),
        winner=winner_file(teacher, student, method) if selection and stage != "select" else None,
        **extra,
    )


def _training_runs(config: Mapping[str, Any]) -> list[Run]:
    pairs, methods, epochs = _pairs(config), list(config["methods"]), config["epochs"]
    final_seeds = config["final"]["seeds"]
    teachers = _unique([t for t, _ in pairs if split_chain(t) is None])  # a chain teacher is a final run
    runs = [Run("teacher", a, s, epochs["teacher"], "teacher") for a in teachers for s in config["teachers"]["seeds"]]
    runs += [
        Run("baseline", a, s, epochs["student"], "student") for a in _unique([s for _, s in pairs]) for s in final_seeds
    ]
    if config["selection"]["enabled"]:
        runs += [
            _kd_run(config, "select", t, s, m, seed, hp=hp, params=params)
            for t, s in pairs
            for m in methods
            for hp, params in grid_points(m, config["methods"][m]["grid"])
            for seed in config["selection"]["seeds"]
        ]
    runs += [_kd_run(config, "final", t, s, m, seed) for t, s in pairs for m in methods for seed in final_seeds]
    runs += _stem_runs(config)
    clip = config["ablations"]["clip"]
    if clip["enabled"]:
        runs += [
            _kd_run(config, "clip", p["teacher"], p["student"], clip["method"], seed, clip_scope=clip["clip_scope"])
            for p in clip["pairs"]
            for seed in clip["seeds"]
        ]
    return list({run.folder: run for run in runs}.values())


def _stem_runs(config: Mapping[str, Any]) -> list[Run]:
    """Each ImageNet-stem run followed by its CIFAR-stem arm (the teacher or baseline run of its network)."""
    stem = config["ablations"]["stem"]
    runs = []
    for spec in stem["runs"] if stem["enabled"] else []:
        kind, arm_stage = spec["epochs"], "teacher" if spec["epochs"] == "teacher" else "baseline"
        epochs = config["epochs"][kind]
        for seed in spec["seeds"]:
            arm = Run(arm_stage, spec["arch"], seed, epochs, kind)
            runs += [Run("stem", spec["arch"], seed, epochs, kind, stem="imagenet", cifar_arm=arm.folder), arm]
    return runs


def _fidelity_checks(config: Mapping[str, Any], runs: list[Run]) -> list[FidelityCheck]:
    """Final KD runs against their teacher, then each final baseline against each teacher it is paired with."""
    checks = []
    if config["fidelity"]["final"]:
        checks += [
            FidelityCheck("final", r.folder, r.network, str(r.teacher), r.method, r.seed, str(r.teacher_run))
            for r in runs
            if r.stage == "final"
        ]
    if config["fidelity"]["baseline_controls"]:
        pairs = _pairs(config)
        checks += [
            FidelityCheck(
                "baseline", run_folder("baseline", student=s, seed=seed), s, t, "baseline", seed, teacher_run(t, config)
            )
            for s in _unique([s for _, s in pairs])
            for t in _unique([t for t, s2 in pairs if s2 == s])
            for seed in config["final"]["seeds"]
        ]
    return checks


def build_study(config: Mapping[str, Any]) -> Study:
    """The runs, fidelity comparisons and selections of a validated (defaults filled) study config."""
    runs = _training_runs(config)
    selections = (
        [(t, s, m) for t, s in _pairs(config) for m in config["methods"]] if config["selection"]["enabled"] else []
    )
    return Study(tuple(runs), tuple(_fidelity_checks(config, runs)), tuple(selections))


# ----------------------------------------------------------------------------- network names
def network_regex() -> str:
    """A network label of a study as a regular expression: a registry architecture, optionally a width
    variant ``-w<width>`` (the workflow's wildcard constraint; the variant suffix cannot be confused with the
    ``-`` between teacher and student)."""
    names = sorted(available_architectures(), key=len, reverse=True)
    return rf"({'|'.join(re.escape(name) for name in names)})(-w\d+)?"


def teacher_regex() -> str:
    """A teacher label: a network, or a chain teacher ``<teacher>.<method>.<student>`` (kdcore.labels)."""
    return rf"{network_regex()}(\.[a-z][a-z0-9_]*\.{network_regex()})*"


# ----------------------------------------------------------------------------- run configs
def run_labels(run: Run) -> dict[str, Any]:
    """The labels of a run's metrics.json: its stage, its folder (``run_id``) and what it trains."""
    labels: dict[str, Any] = {"stage": run.stage, "run_id": run.folder}
    if run.stage in ("teacher", "stem"):
        labels["arch"] = run.network
    if run.stage == "baseline":
        labels["student"] = run.network
    if run.teacher is not None:
        labels |= {"pair": run.pair, "teacher": run.teacher, "student": run.network}
    if run.stage != "teacher":
        labels["method"] = run.method
    if run.stage == "select":
        labels["hp"] = run.hp
    if run.stage == "stem":
        labels["stem"] = run.stem
    return labels


def run_config(run: Run, config: Mapping[str, Any], runs_root: str, dataset: str) -> dict[str, Any]:
    """The run config (docs/design.md) of one training run, without device/threads, which the job sets from its
    lease; hyper-parameters that the selection chooses are added at job time (``run.winner``)."""
    width = config["model"]["width"]
    teacher = None
    if run.teacher is not None:
        checkpoint = f"{runs_root}/{run.teacher_run}/{BEST_FILE}"
        teacher = {**network_spec(run.teacher, "cifar", width), "checkpoint": checkpoint}
    return {
        "data": dataset,
        "model": network_spec(run.network, run.stem, width),
        "teacher": teacher,
        "method": {"name": run.method, **(run.params or {})},
        "train": {**config["train"], "epochs": run.epochs, "seed": run.seed, "clip_scope": run.clip_scope},
        "runtime": dict(config["runtime"]),
        "labels": run_labels(run),
    }


def study_key(run: Run, run_key: str) -> str:
    """The study config key behind key ``run_key`` (e.g. train.momentum) of a run's config."""
    section, _, rest = run_key.partition(".")
    if section == "method":
        return f"methods.{run.method}.{'grid' if run.stage == 'select' else 'fixed'}"
    if run_key == "train.epochs":
        return "epochs"
    if section == "teacher":
        return f"model.{rest}"
    return run_key


def check_run_configs(study: Study, config: Mapping[str, Any], runs_root: str, dataset: str) -> None:
    """Resolve every run config of the study with the engine's own :func:`kdcore.config.resolve_config`, so
    that a bad hyper-parameter or run setting fails before any job, naming the study key and the value."""
    checked: set[str] = set()
    for run in study.runs:
        cfg = run_config(run, config, runs_root, dataset)
        text = json.dumps(cfg, sort_keys=True)
        if text in checked:
            continue
        checked.add(text)
        try:
            resolve_config(cfg)
        except KDCoreError as exc:
            found = re.search(r"config key '([^']+)'", str(exc))
            key = study_key(run, found.group(1)) if found else "?"
            raise ConfigError(f"config key '{key}' (run {run.folder}): {exc}") from None


# ----------------------------------------------------------------------------- teacher-output caches
def logit_based(method: str) -> bool:
    """Whether ``method`` reads only its teacher's logits (a teacher, not its features), so that its runs can
    read them from a teacher-output cache (kdcore.teacher_cache)."""
    cls = get_method(method)
    return bool(cls.needs_teacher and not cls.needs_features)


def cached_teachers(study: Study, config: Mapping[str, Any]) -> list[str]:
    """The teachers whose logits the study caches (config key ``teacher_cache``): with ``auto``, those with at
    least ``min_runs`` logit-based runs of ``epochs.student`` epochs that forward the teacher more often than
    the build (:func:`kdcore.teacher_cache.cache_worthwhile`); with ``true``, every teacher with one."""
    counts: dict[str, int] = {}
    for run in study.runs:
        if run.teacher is not None and logit_based(run.method):
            counts[run.teacher] = counts.get(run.teacher, 0) + 1
    setting = config["teacher_cache"]["enabled"]
    if setting is False:
        return []
    if setting is True:
        return list(counts)
    threshold, epochs = config["teacher_cache"]["min_runs"], config["epochs"]["student"]
    return [teacher for teacher, n in counts.items() if cache_worthwhile(n, threshold, epochs)]


# ----------------------------------------------------------------------------- runtime estimates
def minutes_per_epoch(config: Mapping[str, Any], network: str) -> float:
    """``compute.minutes_per_epoch`` of a network label, else of its architecture, else 1 (a chain teacher's:
    its network's)."""
    network = chain_network(network)
    per_epoch = config["compute"]["minutes_per_epoch"]
    return per_epoch.get(network, per_epoch.get(network_arch(network), 1.0))


def training_minutes(config: Mapping[str, Any], network: str, epochs_kind: str, teacher: str | None = None) -> int:
    """Estimated minutes of one training job (a workflow job's ``runtime`` resource)."""
    compute = config["compute"]
    minutes = minutes_per_epoch(config, network)
    if teacher is not None:
        minutes += compute["teacher_factor"] * minutes_per_epoch(config, teacher)
    epochs = config["epochs"][epochs_kind]
    return math.ceil(compute["runtime_overhead"] + compute["runtime_margin"] * epochs * minutes)


def cache_build_minutes(config: Mapping[str, Any], teacher: str) -> int:
    """Estimated minutes of a teacher-output cache build: one teacher forward per view of every training
    image, as many forwards as ``n_views`` epochs of a run (a teacher epoch costs ``compute.teacher_factor``
    of its training epoch)."""
    compute = config["compute"]
    minutes = n_views(PAD) * compute["teacher_factor"] * minutes_per_epoch(config, teacher)
    return math.ceil(compute["runtime_overhead"] + compute["runtime_margin"] * minutes)
