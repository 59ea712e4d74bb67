# Shared definitions of the kd-capacity workflow: paths, the study's units of work derived from the
# config, run configs, code digests (code-aware reruns), resource estimates and the input functions that
# other rule files use (all_run_metrics, all_fidelity_files, code_digest).

import itertools
import json
import math
import sys
from pathlib import Path

# The workflow runs and hashes its own copy of kdcore (src/ beside the Snakefile), not an installed one.
SRC = Path(workflow.basedir) / "src"
SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from kdcore.codehash import code_digest as _code_digest

RUNS = "results/runs"
DATASET = "results/data/dataset.pt"
RUN_FILES = ("metrics.json", "best.pt", "final.pt")


wildcard_constraints:
    arch=r"resnet\d+",
    teacher=r"resnet\d+",
    student=r"resnet\d+",
    seed=r"\d+",
    method=r"[a-z][a-z0-9_]*",
    hp=r"[A-Za-z0-9_.\-]+",


class StudyConfigError(ValueError):
    """A config value that passes the schema but contradicts the rest of the study."""


# ----------------------------------------------------------------------------- the study as lists
def pairs() -> list[tuple[str, str]]:
    """(teacher, student) of every distillation pair, in config order."""
    return [(p["teacher"], p["student"]) for p in config["pairs"]]


def unique(items) -> list:
    return list(dict.fromkeys(items))


def teacher_archs() -> list[str]:
    return unique(t for t, _ in pairs())


def student_archs() -> list[str]:
    return unique(s for _, s in pairs())


def kd_methods() -> list[str]:
    return list(config["methods"])


def selection_enabled() -> bool:
    return bool(config["selection"]["enabled"])


HP_ABBREVIATIONS = {"alpha": "a", "temperature": "T", "beta": "b"}


def format_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}"


def grid_points(method: str) -> list[tuple[str, dict]]:
    """(folder name, hyper-parameters) of every point of ``method``'s selection grid, in grid order."""
    grid = config["methods"][method]["grid"]
    keys = list(grid)
    shown = [k for i, k in enumerate(keys) if i == 0 or len(grid[k]) > 1]
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        name = "-".join(f"{HP_ABBREVIATIONS.get(k, k)}{format_value(params[k])}" for k in shown)
        points.append((name, params))
    return points


def grid_params(method: str, hp: str) -> dict:
    for name, params in grid_points(method):
        if name == hp:
            return params
    raise StudyConfigError(f"methods.{method}.grid has no point named {hp!r}")


def stem_runs() -> list[tuple[str, int, str]]:
    """(arch, seed, epochs kind) of every ImageNet-stem ablation run."""
    stem = config["ablations"].get("stem") or {}
    if not stem.get("enabled"):
        return []
    return [(r["arch"], seed, r["epochs"]) for r in stem.get("runs", []) for seed in r["seeds"]]


def clip_runs() -> list[tuple[str, str, str, int]]:
    """(teacher, student, method, seed) of every clip-bug ablation run."""
    clip = config["ablations"].get("clip") or {}
    if not clip.get("enabled"):
        return []
    return [(p["teacher"], p["student"], clip["method"], seed) for p in clip["pairs"] for seed in clip["seeds"]]


def check_study() -> None:
    """Cross-key checks the schema cannot express; each error names the key."""
    if config["teachers"]["distill_seed"] not in config["teachers"]["seeds"]:
        raise StudyConfigError(
            f"config key 'teachers.distill_seed': {config['teachers']['distill_seed']} is not one of teachers.seeds"
        )
    for method, spec in config["methods"].items():
        if not selection_enabled() and not spec.get("fixed"):
            raise StudyConfigError(f"config key 'methods.{method}.fixed' is required when selection.enabled is false")
        names = [name for name, _ in grid_points(method)]
        if len(set(names)) != len(names):
            raise StudyConfigError(f"config key 'methods.{method}.grid': two grid points share a name")
    clip = config["ablations"].get("clip") or {}
    if clip.get("enabled") and clip["method"] not in config["methods"]:
        raise StudyConfigError(f"config key 'ablations.clip.method': {clip['method']!r} is not a key of methods")
    if clip.get("enabled") and not selection_enabled() and not config["methods"][clip["method"]].get("fixed"):
        raise StudyConfigError(f"config key 'methods.{clip['method']}.fixed' is required by ablations.clip")


check_study()


# ----------------------------------------------------------------------------- paths
def run_dir(stage: str, **w) -> str:
    """The literal folder of one run; ``stage`` in teacher, baseline, select, final, stem, clip."""
    patterns = {
        "teacher": "teachers/{arch}/seed{seed}",
        "baseline": "baselines/{student}/seed{seed}",
        "select": "select/{teacher}-{student}/{method}/{hp}/seed{seed}",
        "final": "final/{teacher}-{student}/{method}/seed{seed}",
        "stem": "stem/{arch}-imagenet/seed{seed}",
        "clip": "clip/{teacher}-{student}/{method}/seed{seed}",
    }
    return f"{RUNS}/{patterns[stage].format(**w)}"


def run_file(stage: str, name: str, **w) -> str:
    """A file of one run folder, e.g. run_file("final", "fidelity.json", ...)."""
    return f"{run_dir(stage, **w)}/{name}"


def run_outputs(stage: str, **w) -> dict[str, str]:
    base = run_dir(stage, **w)
    return {"metrics": f"{base}/metrics.json", "best": f"{base}/best.pt", "final": f"{base}/final.pt"}


def teacher_checkpoint(teacher: str) -> str:
    """best.pt of the teacher run used for distillation (seed teachers.distill_seed)."""
    return run_outputs("teacher", arch=teacher, seed=config["teachers"]["distill_seed"])["best"]


def winner_file(teacher: str, student: str, method: str) -> str:
    return f"results/selection/{teacher}-{student}/{method}.json"


# ----------------------------------------------------------------------------- targets
def teacher_metrics() -> list[str]:
    return [
        run_outputs("teacher", arch=a, seed=s)["metrics"] for a in teacher_archs() for s in config["teachers"]["seeds"]
    ]


def baseline_metrics() -> list[str]:
    return [
        run_outputs("baseline", student=a, seed=s)["metrics"] for a in student_archs() for s in config["final"]["seeds"]
    ]


def select_metrics(teacher: str | None = None, student: str | None = None, method: str | None = None) -> list[str]:
    """Metrics of the selection grid (of one pair and method if given; none if selection is disabled)."""
    if not selection_enabled():
        return []
    out = []
    for t, s in pairs():
        if (teacher, student) != (None, None) and (t, s) != (teacher, student):
            continue
        for m in kd_methods():
            if method is not None and m != method:
                continue
            for hp, _ in grid_points(m):
                for seed in config["selection"]["seeds"]:
                    out.append(run_outputs("select", teacher=t, student=s, method=m, hp=hp, seed=seed)["metrics"])
    return out


def winner_files() -> list[str]:
    if not selection_enabled():
        return []
    return [winner_file(t, s, m) for t, s in pairs() for m in kd_methods()]


def final_metrics() -> list[str]:
    return [
        run_outputs("final", teacher=t, student=s, method=m, seed=seed)["metrics"]
        for t, s in pairs()
        for m in kd_methods()
        for seed in config["final"]["seeds"]
    ]


def stem_metrics() -> list[str]:
    """The ImageNet-stem runs and their CIFAR-stem arm (the matching baseline or teacher runs)."""
    out = []
    for arch, seed, kind in stem_runs():
        out.append(run_outputs("stem", arch=arch, seed=seed)["metrics"])
        if kind == "teacher":
            out.append(run_outputs("teacher", arch=arch, seed=seed)["metrics"])
        else:
            out.append(run_outputs("baseline", student=arch, seed=seed)["metrics"])
    return out


def clip_metrics() -> list[str]:
    return [run_outputs("clip", teacher=t, student=s, method=m, seed=seed)["metrics"] for t, s, m, seed in clip_runs()]


def all_run_metrics(wildcards=None) -> list[str]:
    """Every metrics.json of the study (teachers, baselines, selection, final, ablations), no duplicates."""
    return unique(
        teacher_metrics() + baseline_metrics() + select_metrics() + final_metrics() + stem_metrics() + clip_metrics()
    )


def fidelity_final_files() -> list[str]:
    if not config["fidelity"]["final"]:
        return []
    return [
        f"{run_dir('final', teacher=t, student=s, method=m, seed=seed)}/fidelity.json"
        for t, s in pairs()
        for m in kd_methods()
        for seed in config["final"]["seeds"]
    ]


def fidelity_baseline_files() -> list[str]:
    """Control fidelity of each final baseline against each teacher it is paired with."""
    if not config["fidelity"]["baseline_controls"]:
        return []
    return [
        f"{run_dir('baseline', student=s, seed=seed)}/fidelity-{t}.json"
        for s in student_archs()
        for t in unique(t for t, s2 in pairs() if s2 == s)
        for seed in config["final"]["seeds"]
    ]


def all_fidelity_files(wildcards=None) -> list[str]:
    """Every fidelity.json of the study (final KD runs, then baseline controls)."""
    return fidelity_final_files() + fidelity_baseline_files()


def study_targets(wildcards=None) -> list[str]:
    """What `snakemake` with no target builds: every run, winner, fidelity file and analysis output."""
    analysis = globals().get("analysis_targets")
    return all_run_metrics() + winner_files() + all_fidelity_files() + (list(analysis()) if analysis else [])


# ----------------------------------------------------------------------------- code digests
_DIGESTS: dict = {}


def code_digest(*module_names: str, scripts: tuple[str, ...] = ()) -> str:
    """Digest of the static import closure of ``module_names`` in this workflow's src/ (plus ``scripts``,
    file names under workflow/scripts). Put it in a rule's params: when the code changes, jobs rerun."""
    key = (module_names, scripts)
    if key not in _DIGESTS:
        _DIGESTS[key] = _code_digest(module_names, SRC, extra_files=[SCRIPTS / s for s in scripts])
    return _DIGESTS[key]


def training_code(method: str) -> str:
    """Digest of what a training job of ``method`` executes: the engine, the method, the script.
    (kdcore.devices is left out on purpose: the lease decides where a job runs, not what it computes;
    likewise the compute section of the config is read by the scripts, not passed as params.)"""
    return code_digest(
        "kdcore.engine", "kdcore.methods", f"kdcore.methods.{method}", scripts=("train.py", "_common.py")
    )


def fidelity_code() -> str:
    """Digest of what a fidelity job executes."""
    return code_digest("kdcore.fidelity", scripts=("fidelity.py", "_common.py"))


# ----------------------------------------------------------------------------- run configs
def run_config(
    stage: str,
    run_id: str,
    arch: str,
    seed,
    epochs_kind: str,
    *,
    stem: str = "cifar",
    teacher: str | None = None,
    method: str = "baseline",
    method_params: dict | None = None,
    clip_scope: str = "all",
    extra_labels: dict | None = None,
) -> str:
    """The run config (docs/design.md) of one training job as canonical JSON, without device/threads,
    which the job sets from its lease. Hyper-parameters chosen by selection are added at job time."""
    width = config["model"]["width"]
    cfg = {
        "data": DATASET,
        "model": {"arch": arch, "width": width, "stem": stem},
        "teacher": (
            None
            if teacher is None
            else {"arch": teacher, "width": width, "stem": "cifar", "checkpoint": teacher_checkpoint(teacher)}
        ),
        "method": {"name": method, **(method_params or {})},
        "train": {
            **config["train"],
            "epochs": config["epochs"][epochs_kind],
            "seed": int(seed),
            "clip_scope": clip_scope,
        },
        "runtime": dict(config["runtime"]),
        "labels": {"stage": stage, "run_id": run_id, **(extra_labels or {})},
    }
    return json.dumps(cfg, sort_keys=True)


def kd_labels(teacher: str, student: str, method: str) -> dict:
    return {"pair": f"{teacher}-{student}", "teacher": teacher, "student": student, "method": method}


def final_method_params(method: str) -> dict | None:
    """Fixed hyper-parameters of final runs when selection is disabled (else chosen at job time)."""
    return None if selection_enabled() else dict(config["methods"][method]["fixed"])


def winner_input(w) -> list[str]:
    return [winner_file(w.teacher, w.student, w.method)] if selection_enabled() else []


# ----------------------------------------------------------------------------- resources
def train_threads() -> int:
    return config["compute"]["threads"]["train"]


def train_runtime(student: str, epochs_kind: str, teacher: str | None = None) -> int:
    """Estimated minutes of one training job (the `runtime` resource)."""
    c = config["compute"]
    per_epoch = c["minutes_per_epoch"]
    minutes = per_epoch.get(student, 1.0)
    if teacher is not None:
        minutes += c["teacher_factor"] * per_epoch.get(teacher, 1.0)
    return int(math.ceil(c["runtime_overhead"] + c["runtime_margin"] * config["epochs"][epochs_kind] * minutes))


# ----------------------------------------------------------------------------- rule helpers
def data_source_files(wildcards) -> list[str]:
    """The local source archive or folder of data.source=folder, so a missing one fails before any job."""
    spec = config["data"]
    return [spec["path"]] if spec["source"] == "folder" and spec.get("path") else []


def selection_candidates(w) -> str:
    """JSON list of the grid points of one (pair, method) with the metrics files of their runs."""
    return json.dumps(
        [
            {
                "hp": hp,
                "params": params,
                "metrics": [
                    run_outputs("select", teacher=w.teacher, student=w.student, method=w.method, hp=hp, seed=s)[
                        "metrics"
                    ]
                    for s in config["selection"]["seeds"]
                ],
            }
            for hp, params in grid_points(w.method)
        ]
    )


def stem_epochs_kind(arch: str, seed) -> str:
    for a, s, kind in stem_runs():
        if a == arch and int(s) == int(seed):
            return kind
    raise StudyConfigError(f"ablations.stem.runs has no run of {arch} seed {seed}")
