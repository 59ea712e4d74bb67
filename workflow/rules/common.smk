# Input functions of the kd-capacity workflow over the study's run list (kdcore.study: each run's stage, networks,
# method, hyper-parameters, seed, folder and inputs; FOLDER_PATTERNS holds each stage's path pattern once), the
# parse-time checks, code digests (code-aware reruns) and resources.

import json
import sys
from functools import cache
from pathlib import Path

# The workflow runs and hashes its own copy of kdcore (src/ beside its Snakefile), found from this file: as a
# Snakemake module, workflow.basedir is the *including* workflow's folder.
WORKFLOW_ROOT = Path(str(workflow.current_basedir)).parents[1]
SRC = WORKFLOW_ROOT / "src"
SCRIPTS = WORKFLOW_ROOT / "workflow" / "scripts"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from kdcore.codehash import code_digest as _code_digest
from kdcore.config import network_arch
from kdcore.errors import KDCoreError
from kdcore.runfolder import BEST_FILE, FINAL_FILE, METRICS_FILE, TEST_LOGITS_FILE
from kdcore.study import build_study, cache_build_minutes, network_regex, run_config, run_folder, teacher_regex
from kdcore.study import FOLDER_PATTERNS, WINNER_PATTERN, teacher_run, training_minutes
from kdcore.study import winner_file as study_winner_file

RUNS = "results/runs"
DATASET = "results/data/dataset.pt"
DATA_SPEC_STAMP = "results/data/dataset.spec.json"  # the data section the artefact must be made from


# Network names come from the model registry (kdcore.models); a teacher may be a chain (kdcore.labels).
wildcard_constraints:
    arch=network_regex(),
    teacher=teacher_regex(),
    student=network_regex(),
    seed=r"\d+",
    method=r"[a-z][a-z0-9_]*",
    hp=r"[A-Za-z0-9_.\-]+",


class StudyConfigError(ValueError):
    """A study config that kdcore refuses, worded by kdcore (one line naming the key and the value)."""


def kdcore_checked(check, *args):
    """``check(*args)``, with a kdcore error raised as one StudyConfigError line."""
    try:
        return check(*args)
    except KDCoreError as exc:
        raise StudyConfigError(str(exc)) from None


# ----------------------------------------------------------------------------- parse-time checks
def check_study_schema() -> None:
    """kdcore.config.validate_study_config: the schema, the networks against the model registry and the
    cross-key rules (Snakemake's validate() then fills the defaults into ``config``)."""
    from kdcore.config import validate_study_config

    kdcore_checked(validate_study_config, config)


def check_before_jobs() -> None:
    """Every run config the DAG will create resolves (kdcore.study.check_run_configs, by the engine's own
    resolve_config); what finished runs were made from is intact (kdcore.runfolder.verify_study_artefacts: a
    changed dataset or teacher checkpoint would make Snakemake delete every run downstream); DATA_SPEC_STAMP,
    an input of prepare_data, follows the data section and the artefact (kdcore.data.refresh_spec_stamp)."""
    from kdcore.atomic import is_dry_run
    from kdcore.data import refresh_spec_stamp, validate_spec
    from kdcore.runfolder import verify_study_artefacts
    from kdcore.study import check_run_configs

    kdcore_checked(check_run_configs, study(), config, RUNS, DATASET)
    kdcore_checked(verify_study_artefacts, RUNS, DATASET)
    try:
        spec = validate_spec(config["data"])
    except KDCoreError as exc:
        raise StudyConfigError(f"config key 'data': {exc}") from None
    reason = kdcore_checked(refresh_spec_stamp, DATASET, DATA_SPEC_STAMP, spec, is_dry_run(sys.argv))
    if reason is not None:
        print(f"kd-capacity: {DATASET} will be rebuilt: {reason}", file=sys.stderr)


# ----------------------------------------------------------------------------- the study's runs and paths
@cache
def study():
    """The study's runs, fidelity comparisons and selections (kdcore.study.Study), built once."""
    return build_study(config)


def wildcard_run(stage: str, w):
    """The study's run of ``stage`` that a job's wildcards name."""
    return kdcore_checked(lambda: study().run(stage, **dict(w.items())))


def run_dir(stage: str, **w) -> str:
    """The folder of one run: wildcard values, or ``"{name}"`` for a rule's pattern (kdcore.study.run_folder)."""
    return f"{RUNS}/{run_folder(stage, **w)}"


def run_file(stage: str, name: str, **w) -> str:
    """A file of one run folder, e.g. run_file("final", "best.pt", ...)."""
    return f"{run_dir(stage, **w)}/{name}"


def run_outputs(stage: str, **w) -> dict[str, str]:
    """The declared outputs of one training job: the files kdcore.engine.train_run writes into its folder
    (the test logits too: the per-image analysis reads them, and a missing file reruns its run)."""
    files = {"metrics": METRICS_FILE, "best": BEST_FILE, "final": FINAL_FILE, "logits": TEST_LOGITS_FILE}
    return {key: run_file(stage, name, **w) for key, name in files.items()}


def metrics_of(folders) -> list[str]:
    return [f"{RUNS}/{folder}/{METRICS_FILE}" for folder in folders]


def teacher_checkpoint(teacher: str) -> str:
    """best.pt of the run ``teacher`` distils from (kdcore.study.teacher_run)."""
    return f"{RUNS}/{teacher_run(teacher, config)}/{BEST_FILE}"


def winner_file(teacher: str, student: str, method: str) -> str:
    return f"results/{study_winner_file(teacher, student, method)}"


# ----------------------------------------------------------------------------- targets
def stage_metrics(stage: str) -> list[str]:
    return metrics_of(run.folder for run in study().of_stage(stage))


def teacher_metrics() -> list[str]:
    return stage_metrics("teacher")


def baseline_metrics() -> list[str]:
    return stage_metrics("baseline")


def final_metrics() -> list[str]:
    return stage_metrics("final")


def clip_metrics() -> list[str]:
    return stage_metrics("clip")


def select_metrics(teacher: str | None = None, student: str | None = None, method: str | None = None) -> list[str]:
    """Metrics of the selection grid (of one pair and method if given; none if selection is disabled)."""
    if teacher is None:
        return stage_metrics("select")
    return metrics_of(run.folder for run in study().candidates(teacher, student, method))


def stem_metrics() -> list[str]:
    """The ImageNet-stem runs, each with its CIFAR-stem arm (the matching baseline or teacher run)."""
    return metrics_of(folder for run in study().of_stage("stem") for folder in (run.folder, run.cifar_arm))


def clip_runs() -> list[tuple[str, str, str, int]]:
    """(teacher, student, method, seed) of every clip-bug ablation run."""
    return [(run.teacher, run.network, run.method, run.seed) for run in study().of_stage("clip")]


def all_run_metrics(wildcards=None) -> list[str]:
    """Every metrics.json of the study (teachers, baselines, selection, final, ablations), no duplicates."""
    return metrics_of(run.folder for run in study().runs)


def winner_files() -> list[str]:
    return [winner_file(t, s, m) for t, s, m in study().selections]


def fidelity_checks() -> list[dict[str, str]]:
    """The study's fidelity comparisons (final KD runs, then baseline controls), as the analysis reads them
    from stored test logits (kdcore.analysis.table.fidelity_table_from_logits): the student run's
    metrics.json, the teacher's label and the teacher run's test-logits file."""
    return [
        {
            "run": f"{RUNS}/{check.student_run}/{METRICS_FILE}",
            "teacher": check.teacher,
            "teacher_logits": f"{RUNS}/{check.teacher_run}/{TEST_LOGITS_FILE}",
        }
        for check in study().fidelity
    ]


def study_targets(wildcards=None) -> list[str]:
    """What `snakemake` with no target builds: every run, winner and analysis output."""
    analysis = globals().get("analysis_targets")
    return all_run_metrics() + winner_files() + (list(analysis()) if analysis else [])


# ----------------------------------------------------------------------------- code digests
@cache
def code_digest(*module_names: str, scripts: tuple[str, ...] = ()) -> str:
    """Digest of the static import closure of ``module_names`` in this workflow's src/ (plus ``scripts``,
    file names under workflow/scripts). Put it in a rule's params: when the code changes, jobs rerun."""
    return _code_digest(module_names, SRC, extra_files=[SCRIPTS / s for s in scripts])


@cache
def training_code(method: str, *networks: str) -> str:
    """Digest of what a training job of ``method`` building ``networks`` (student, teacher) executes: the
    library's resume digest (kdcore.provenance.run_code_digest) plus the script. Not kdcore.devices: the lease
    decides where a job runs, not what it computes."""
    from kdcore.provenance import run_code_digest

    scripts = [SCRIPTS / s for s in ("train.py", "_common.py")]
    return run_code_digest(method, SRC, archs=[network_arch(n) for n in networks], extra_files=scripts)


# ----------------------------------------------------------------------------- job params
def stage_run_config(stage: str):
    """``params.run_config`` of the training jobs of ``stage``: a job's run config as canonical JSON."""
    return lambda w: json.dumps(run_config(wildcard_run(stage, w), config, RUNS, DATASET), sort_keys=True)


teacher_run_config, baseline_run_config = stage_run_config("teacher"), stage_run_config("baseline")
select_run_config, final_run_config = stage_run_config("select"), stage_run_config("final")
stem_run_config, clip_run_config = stage_run_config("stem"), stage_run_config("clip")


def winner_input(w) -> list[str]:
    return [winner_file(w.teacher, w.student, w.method)] if config["selection"]["enabled"] else []


def selection_candidates(w) -> str:
    """JSON list of the grid points of one (pair, method) with the metrics files of their runs."""
    points: dict[str, dict] = {}
    for run in study().candidates(w.teacher, w.student, w.method):
        point = points.setdefault(run.hp, {"hp": run.hp, "params": dict(run.params), "metrics": []})
        point["metrics"] += metrics_of([run.folder])
    return json.dumps(list(points.values()))


# ----------------------------------------------------------------------------- teacher-output cache
@cache
def cached_teachers() -> list[str]:
    """The teachers whose logits are cached (kdcore.study.cached_teachers, config key teacher_cache)."""
    from kdcore.study import cached_teachers as cached

    return cached(study(), config)


def teacher_cache_file(teacher: str) -> str:
    return f"results/cache/{teacher}/logits.pt"


def teacher_cache_input(w) -> list[str]:
    """The cache file of a KD run's teacher when the run is logit-based and its teacher is cached, else none."""
    from kdcore.study import logit_based

    return [teacher_cache_file(w.teacher)] if w.teacher in cached_teachers() and logit_based(w.method) else []


# ----------------------------------------------------------------------------- resources
def train_threads() -> int:
    return config["compute"]["threads"]["train"]


def train_resources(runtime=None) -> dict:
    """Resources of a training job: one GPU (leased by the job itself, kdcore.devices), its memory and,
    given, the `runtime` estimate in minutes (a number or a function of the wildcards)."""
    resources = {"gpu": 1, "mem_mb": config["compute"]["mem_mb"]["train"]}
    return resources if runtime is None else {**resources, "runtime": runtime}


def train_runtime(student: str, epochs_kind: str, teacher: str | None = None) -> int:
    """Estimated minutes of one training job (the `runtime` resource; kdcore.study.training_minutes)."""
    return training_minutes(config, student, epochs_kind, teacher)


def teacher_cache_runtime(teacher: str) -> int:
    """Estimated minutes of a cache build (kdcore.study.cache_build_minutes)."""
    return cache_build_minutes(config, teacher)


def stem_epochs_kind(arch: str, seed) -> str:
    return kdcore_checked(lambda: study().run("stem", arch=arch, seed=seed)).epochs_kind


def job_log(name: str) -> str:
    """The log file of the job named ``name`` (e.g. run_folder(stage) for a run's pattern)."""
    return f"results/logs/{name}.log"


def job_benchmark(name: str) -> str:
    return f"results/benchmarks/{name}.tsv"
