# Shared definitions of the kd-capacity workflow: paths, the study's units of work derived from the
# config, run configs, code digests (code-aware reruns), resource estimates and the input functions that
# other rule files use (all_run_metrics, all_fidelity_files, code_digest).

import itertools
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

# The workflow runs and hashes its own copy of kdcore (src/ beside its Snakefile), not an installed one.
# The root is found from this file, not from workflow.basedir, which is the *including* workflow's folder
# when this workflow is used as a Snakemake module.
WORKFLOW_ROOT = Path(str(workflow.current_basedir)).parents[1]
SRC = WORKFLOW_ROOT / "src"
SCRIPTS = WORKFLOW_ROOT / "workflow" / "scripts"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from kdcore.codehash import code_digest as _code_digest

RUNS = "results/runs"
DATASET = "results/data/dataset.pt"
DATA_SPEC_STAMP = "results/data/dataset.spec.json"  # the data section the artefact must be made from


# A network is a registry architecture, optionally a width variant (`resnet18-w16`); the schema's
# $defs/study_network. The variant suffix cannot be confused with the `-` between teacher and student.
NETWORK = r"(resnet\d+(x4)?|wrn_\d+_\d+)(-w\d+)?"
# A teacher is a network or a chain teacher `<teacher>.<method>.<student>` (a final run of the study; the
# schema's $defs/study_teacher, kdcore.labels.split_chain).
TEACHER = rf"{NETWORK}(\.[a-z][a-z0-9_]*\.{NETWORK})*"


wildcard_constraints:
    arch=NETWORK,
    teacher=TEACHER,
    student=NETWORK,
    seed=r"\d+",
    method=r"[a-z][a-z0-9_]*",
    hp=r"[A-Za-z0-9_.\-]+",


class StudyConfigError(ValueError):
    """A config value that passes the schema but contradicts the rest of the study."""


# ----------------------------------------------------------------------------- reading the study config
def checked_yaml_file(path: str) -> str:
    """``path`` unchanged once it parses as YAML; a syntax error is one line naming the file and the line.
    (A missing file is left to Snakemake; as a module, this workflow reads no config file.)"""
    file = Path(path)
    if file.is_file():
        try:
            yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
            problem = getattr(exc, "problem", None) or str(exc)
            raise StudyConfigError(f"config file {path}: YAML syntax error at {where}: {problem}") from None
    return path


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def typed_scalar(text: str):
    """A string from the command line as the number, boolean or null it spells (else the string itself).
    Numbers are matched first: YAML 1.1 reads 1e-4 as a string."""
    if _NUMBER.fullmatch(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, bool) else text


def coerce_override_strings(node):
    """Type the string scalars of ``node`` in place (and return it). Snakemake parses a nested
    `--config key={...}` value with YAML's base loader, so every scalar in it arrives as a string."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        if isinstance(value, str):
            node[key] = typed_scalar(value)
        else:
            coerce_override_strings(value)
    return node


# ----------------------------------------------------------------------------- the study as lists
def pairs() -> list[tuple[str, str]]:
    """(teacher, student) of every distillation pair, in config order."""
    return [(p["teacher"], p["student"]) for p in config["pairs"]]


def unique(items) -> list:
    return list(dict.fromkeys(items))


def teacher_archs() -> list[str]:
    """The teachers trained by the teacher rule: every pair's teacher that is not a chain teacher."""
    from kdcore.labels import split_chain

    return unique(t for t, _ in pairs() if split_chain(t) is None)


def student_archs() -> list[str]:
    return unique(s for _, s in pairs())


def kd_methods() -> list[str]:
    return list(config["methods"])


def selection_enabled() -> bool:
    return bool(config["selection"]["enabled"])


def grid_points(method: str) -> list[tuple[str, dict]]:
    """(folder name, hyper-parameters) of every point of ``method``'s selection grid, in grid order; the
    folder names are the method's own (kdcore.methods.grid_points, e.g. a0.5-T4)."""
    from kdcore.errors import KDCoreError
    from kdcore.methods import grid_points as method_grid_points

    try:
        return method_grid_points(method, config["methods"][method]["grid"])
    except KDCoreError as exc:
        raise StudyConfigError(f"config key 'methods.{method}.grid': {exc}") from None


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


def check_study_schema() -> None:
    """The study config against kdcore's schema, worded by kdcore: one line naming the key and the value
    (Snakemake's validate() below then fills the defaults into ``config``)."""
    from kdcore.config import validate_study_config
    from kdcore.errors import KDCoreError

    try:
        validate_study_config(config)
    except KDCoreError as exc:
        raise StudyConfigError(str(exc)) from None


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
    """The declared outputs of one training job: the files kdcore.engine.train_run writes into its run folder
    (names from kdcore.runfolder, the one place that knows them)."""
    from kdcore.runfolder import BEST_FILE, FINAL_FILE, METRICS_FILE

    base = run_dir(stage, **w)
    return {"metrics": f"{base}/{METRICS_FILE}", "best": f"{base}/{BEST_FILE}", "final": f"{base}/{FINAL_FILE}"}


def teacher_checkpoint(teacher: str) -> str:
    """best.pt of the teacher run used for distillation (seed teachers.distill_seed): a teacher run, or for a
    chain teacher `<teacher>.<method>.<student>` the final run of that pair and method."""
    from kdcore.labels import split_chain

    seed = config["teachers"]["distill_seed"]
    chain = split_chain(teacher)
    if chain is None:
        return run_outputs("teacher", arch=teacher, seed=seed)["best"]
    parent, method, student = chain
    return run_outputs("final", teacher=parent, student=student, method=method, seed=seed)["best"]


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


def network_arch(label: str) -> str:
    """The registry architecture of a network or teacher label (`resnet18-w16` -> `resnet18`,
    `resnet101.logit.resnet50` -> `resnet50`)."""
    from kdcore.config import split_variant
    from kdcore.labels import chain_network

    return split_variant(chain_network(label))[0]


def family_modules(*networks: str) -> tuple[str, ...]:
    """The model family modules that build ``networks`` (labels), sorted, without duplicates."""
    from kdcore.models import architecture_module

    return tuple(sorted({architecture_module(network_arch(n)) for n in networks}))


def training_code(method: str, *networks: str) -> str:
    """Digest of what a training job of ``method`` building ``networks`` (student, teacher) executes:
    kdcore.provenance.run_code_digest (the library's resume digest: engine, method, by file when it lies
    outside src/, and the networks' family modules) plus the script. (kdcore.devices is left out on purpose: the lease
    decides where a job runs, not what it computes; likewise the compute section of the config is read by
    the scripts, not passed as params.)"""
    from kdcore.provenance import run_code_digest

    key = ("training", method, *networks)
    if key not in _DIGESTS:
        archs = [network_arch(n) for n in networks]
        scripts = [SCRIPTS / s for s in ("train.py", "_common.py")]
        _DIGESTS[key] = run_code_digest(method, SRC, archs=archs, extra_files=scripts)
    return _DIGESTS[key]


def fidelity_code(*networks: str) -> str:
    """Digest of what a fidelity job comparing ``networks`` (student, teacher) executes."""
    return code_digest("kdcore.fidelity", *family_modules(*networks), scripts=("fidelity.py", "_common.py"))


# ----------------------------------------------------------------------------- run configs
def network_spec(label: str, stem: str) -> dict:
    """The run config's network of a network label (kdcore.config.network_spec at the study's model.width)."""
    from kdcore.config import network_spec as spec_of_label

    return spec_of_label(label, stem, config["model"]["width"])


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
    cfg = {
        "data": DATASET,
        "model": network_spec(arch, stem),
        "teacher": (
            None if teacher is None else {**network_spec(teacher, "cifar"), "checkpoint": teacher_checkpoint(teacher)}
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


def fidelity_labels(stage: str, run_id: str, w) -> str:
    """Labels of a fidelity record: the student run, its pair and method (baseline for controls), its seed."""
    method = getattr(w, "method", "baseline")
    labels = {"stage": stage, "run_id": run_id, **kd_labels(w.teacher, w.student, method), "seed": w.seed}
    return json.dumps(labels, sort_keys=True)


def winner_input(w) -> list[str]:
    return [winner_file(w.teacher, w.student, w.method)] if selection_enabled() else []


def teacher_run_config(w) -> str:
    run_id = f"teachers/{w.arch}/seed{w.seed}"
    return run_config("teacher", run_id, w.arch, w.seed, "teacher", extra_labels={"arch": w.arch})


def baseline_run_config(w) -> str:
    labels = {"student": w.student, "method": "baseline"}
    return run_config(
        "baseline", f"baselines/{w.student}/seed{w.seed}", w.student, w.seed, "student", extra_labels=labels
    )


def select_run_config(w) -> str:
    return run_config(
        "select",
        f"select/{w.teacher}-{w.student}/{w.method}/{w.hp}/seed{w.seed}",
        w.student,
        w.seed,
        "student",
        teacher=w.teacher,
        method=w.method,
        method_params=grid_params(w.method, w.hp),
        extra_labels={**kd_labels(w.teacher, w.student, w.method), "hp": w.hp},
    )


def final_run_config(w) -> str:
    return run_config(
        "final",
        f"final/{w.teacher}-{w.student}/{w.method}/seed{w.seed}",
        w.student,
        w.seed,
        "student",
        teacher=w.teacher,
        method=w.method,
        method_params=final_method_params(w.method),
        extra_labels=kd_labels(w.teacher, w.student, w.method),
    )


def stem_run_config(w) -> str:
    return run_config(
        "stem",
        f"stem/{w.arch}-imagenet/seed{w.seed}",
        w.arch,
        w.seed,
        stem_epochs_kind(w.arch, w.seed),
        stem="imagenet",
        extra_labels={"arch": w.arch, "method": "baseline", "stem": "imagenet"},
    )


def clip_run_config(w) -> str:
    return run_config(
        "clip",
        f"clip/{w.teacher}-{w.student}/{w.method}/seed{w.seed}",
        w.student,
        w.seed,
        "student",
        teacher=w.teacher,
        method=w.method,
        method_params=final_method_params(w.method),
        clip_scope=config["ablations"]["clip"]["clip_scope"],
        extra_labels=kd_labels(w.teacher, w.student, w.method),
    )


RUN_CONFIGS = {
    "teacher": teacher_run_config,
    "baseline": baseline_run_config,
    "select": select_run_config,
    "final": final_run_config,
    "stem": stem_run_config,
    "clip": clip_run_config,
}


def training_jobs() -> list[tuple[str, SimpleNamespace]]:
    """(stage, wildcards) of every training job of the study, as the rules will see them."""
    jobs = [("teacher", SimpleNamespace(arch=a, seed=s)) for a in teacher_archs() for s in config["teachers"]["seeds"]]
    jobs += [
        ("baseline", SimpleNamespace(student=a, seed=s)) for a in student_archs() for s in config["final"]["seeds"]
    ]
    kd = [(t, s, m) for t, s in pairs() for m in kd_methods()]
    if selection_enabled():
        jobs += [
            ("select", SimpleNamespace(teacher=t, student=s, method=m, hp=hp, seed=seed))
            for t, s, m in kd
            for hp, _ in grid_points(m)
            for seed in config["selection"]["seeds"]
        ]
    jobs += [
        ("final", SimpleNamespace(teacher=t, student=s, method=m, seed=seed))
        for t, s, m in kd
        for seed in config["final"]["seeds"]
    ]
    jobs += [("stem", SimpleNamespace(arch=a, seed=seed)) for a, seed, _ in stem_runs()]
    jobs += [("clip", SimpleNamespace(teacher=t, student=s, method=m, seed=seed)) for t, s, m, seed in clip_runs()]
    return jobs


# ----------------------------------------------------------------------------- teacher-output cache
KD_STAGES = ("select", "final", "clip")


def logit_based(method: str) -> bool:
    """Whether ``method`` reads only its teacher's logits (needs a teacher, not its features), so that its
    runs can read them from a teacher-output cache (kdcore.teacher_cache)."""
    from kdcore.methods import get_method

    cls = get_method(method)
    return bool(cls.needs_teacher and not cls.needs_features)


def logit_run_counts() -> dict[str, int]:
    """Teacher -> number of logit-based training runs (selection, final, clip) that use it."""
    counts: dict[str, int] = {}
    for stage, w in training_jobs():
        if stage in KD_STAGES and logit_based(w.method):
            counts[w.teacher] = counts.get(w.teacher, 0) + 1
    return counts


def cached_teachers() -> list[str]:
    """The teachers whose logits are cached (config key teacher_cache): with `auto`, those with at least
    `min_runs` logit-based runs of `epochs.student` epochs that forward the teacher more often than the build
    (kdcore.teacher_cache.cache_worthwhile); with `true`, every teacher with one."""
    if "teachers" not in _CACHED_TEACHERS:
        from kdcore.teacher_cache import cache_worthwhile

        setting, counts = config["teacher_cache"]["enabled"], logit_run_counts()
        if setting is False:
            chosen = []
        elif setting is True:
            chosen = [t for t, n in counts.items() if n > 0]
        else:
            threshold, epochs = config["teacher_cache"]["min_runs"], config["epochs"]["student"]
            chosen = [t for t, n in counts.items() if cache_worthwhile(n, threshold, epochs)]
        _CACHED_TEACHERS["teachers"] = chosen
    return _CACHED_TEACHERS["teachers"]


_CACHED_TEACHERS: dict = {}


def teacher_cache_file(teacher: str) -> str:
    return f"results/cache/{teacher}/logits.pt"


def teacher_cache_input(w) -> list[str]:
    """The cache file of a KD run's teacher when the run is logit-based and its teacher is cached, else none."""
    if w.teacher in cached_teachers() and logit_based(w.method):
        return [teacher_cache_file(w.teacher)]
    return []


def teacher_cache_runtime(teacher: str) -> int:
    """Estimated minutes of a cache build: one teacher forward per view of every training image, i.e. as
    many forwards as n_views epochs of a run (a teacher epoch costs compute.teacher_factor of its training
    epoch)."""
    from kdcore.augment import PAD, n_views

    c = config["compute"]
    minutes = n_views(PAD) * c["teacher_factor"] * minutes_per_epoch(teacher)
    return int(math.ceil(c["runtime_overhead"] + c["runtime_margin"] * minutes))


def study_key(stage: str, w, run_key: str) -> str:
    """The study config key behind key ``run_key`` (e.g. train.momentum) of a run config."""
    section, _, rest = run_key.partition(".")
    if section == "method":
        return f"methods.{w.method}.{'grid' if stage == 'select' else 'fixed'}"
    if run_key == "train.epochs":
        return "epochs"
    if section == "teacher":
        return f"model.{rest}"
    return run_key


def check_run_configs() -> None:
    """Resolve every run config the DAG will create with the engine's own kdcore.config.resolve_config,
    so a bad hyper-parameter or run setting fails now, naming the study key and the value, not at job time."""
    from kdcore.config import resolve_config
    from kdcore.errors import KDCoreError

    checked = set()
    for stage, w in training_jobs():
        cfg = RUN_CONFIGS[stage](w)
        if cfg in checked:
            continue
        checked.add(cfg)
        try:
            resolve_config(json.loads(cfg))
        except KDCoreError as exc:
            found = re.search(r"config key '([^']+)'", str(exc))
            key = study_key(stage, w, found.group(1)) if found else "?"
            run_id = json.loads(cfg)["labels"]["run_id"]
            raise StudyConfigError(f"config key '{key}' (run {run_id}): {exc}") from None


# ----------------------------------------------------------------------------- the dataset artefact
def check_data_spec() -> dict:
    """config["data"] checked by kdcore.data.validate_spec (what prepare_data runs), with defaults filled."""
    from kdcore.data import validate_spec
    from kdcore.errors import KDCoreError

    try:
        return validate_spec(config["data"])
    except KDCoreError as exc:
        raise StudyConfigError(f"config key 'data': {exc}") from None


def expected_dataset_record(spec: dict) -> dict:
    """What kdcore.data.prepare_dataset records about ``spec`` (a validated data spec) in the artefact."""
    source = {"kind": spec["source"]}
    if spec["source"] == "synthetic":
        source.update(spec["synthetic"])
    else:
        source["path"] = str(Path(spec["path"]))
    return {
        "source": source,
        "split": {"val_size": spec["val_size"], "seed": spec["split_seed"]},
        "subset": spec["subset"],
    }


def recorded_dataset_record(path: str) -> dict | None:
    """source, split and subset as recorded in a dataset artefact (memory-mapped: the images are not read);
    None when the file is not a readable artefact."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file is rebuilt; the reason is logged by the caller
        return None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), dict) for k in ("source", "split")):
        return None
    return {k: obj.get(k) for k in ("source", "split", "subset")}


def dataset_differences(recorded: dict, expected: dict) -> list[str]:
    """'key: recorded X, config Y' for each item of ``expected`` that the artefact records differently."""
    found = []
    for section in ("source", "split"):
        for key, value in expected[section].items():
            if recorded[section].get(key) != value:
                found.append(f"{section}.{key}: recorded {recorded[section].get(key)!r}, config {value!r}")
    if recorded["subset"] != expected["subset"]:
        found.append(f"subset: recorded {recorded['subset']!r}, config {expected['subset']!r}")
    return found


def verify_finished_artefacts() -> None:
    """What finished runs were made from must be intact before Snakemake schedules anything (a changed
    dataset or teacher checkpoint would make it delete every run downstream): kdcore.runfolder's
    verify_study_artefacts, one error naming the file."""
    from kdcore.errors import KDCoreError
    from kdcore.runfolder import verify_study_artefacts

    try:
        verify_study_artefacts(RUNS, DATASET)
    except KDCoreError as exc:
        raise StudyConfigError(str(exc)) from None


def write_stamp(text: str) -> bool:
    """Write DATA_SPEC_STAMP; a refused write is one line (a dry run warns and goes on)."""
    from kdcore.atomic import WriteError, is_dry_run, write_parse_time_file

    try:
        return write_parse_time_file(DATA_SPEC_STAMP, text, dry_run=is_dry_run(sys.argv))
    except WriteError as exc:
        raise StudyConfigError(str(exc)) from None


def check_dataset_artefact() -> None:
    """Keep DATA_SPEC_STAMP, an input of prepare_data, in step with the config and the artefact.

    The stamp holds the config's data section. It is rewritten when that changes, and also, with the
    reason logged, when an existing artefact was not made from it (copied from another study, or made
    before a change that Snakemake's params trigger cannot see because the file has no metadata of its
    own): newer than the artefact, it makes Snakemake rebuild it and rerun everything after it. A new
    stamp for an artefact that fits is dated before the artefact, so it reruns nothing."""
    import os

    verify_finished_artefacts()
    spec = check_data_spec()
    wanted = json.dumps(spec, sort_keys=True, indent=1) + "\n"
    stamp, dataset = Path(DATA_SPEC_STAMP), Path(DATASET)
    reason = None
    if dataset.is_file():
        recorded = recorded_dataset_record(DATASET)
        if recorded is None:
            reason = "it is not a readable dataset artefact"
        elif differences := dataset_differences(recorded, expected_dataset_record(spec)):
            reason = "it was not made from this config's data section (" + "; ".join(differences) + ")"
    if reason is not None:
        print(f"kd-capacity: {DATASET} will be rebuilt: {reason}", file=sys.stderr)
        write_stamp(wanted)
    elif not stamp.is_file() or stamp.read_text(encoding="utf-8") != wanted:
        if write_stamp(wanted) and dataset.is_file():
            before = dataset.stat().st_mtime - 1
            os.utime(stamp, (before, before))


# ----------------------------------------------------------------------------- resources
def train_threads() -> int:
    return config["compute"]["threads"]["train"]


def train_resources(runtime=None) -> dict:
    """Resources of a training job: one GPU (leased by the job itself, kdcore.devices), its memory and,
    given, the `runtime` estimate in minutes (a number or a function of the wildcards)."""
    resources = {"gpu": 1, "mem_mb": config["compute"]["mem_mb"]["train"]}
    return resources if runtime is None else {**resources, "runtime": runtime}


def job_log(name: str) -> str:
    """The log file of the job named ``name`` (a path pattern such as "teachers/{arch}/seed{seed}")."""
    return f"results/logs/{name}.log"


def job_benchmark(name: str) -> str:
    return f"results/benchmarks/{name}.tsv"


def minutes_per_epoch(network: str) -> float:
    """compute.minutes_per_epoch of a network label, else of its architecture, else 1 (a chain teacher's:
    its network's)."""
    from kdcore.labels import chain_network

    network = chain_network(network)
    per_epoch = config["compute"]["minutes_per_epoch"]
    return per_epoch.get(network, per_epoch.get(network_arch(network), 1.0))


def train_runtime(student: str, epochs_kind: str, teacher: str | None = None) -> int:
    """Estimated minutes of one training job (the `runtime` resource)."""
    c = config["compute"]
    minutes = minutes_per_epoch(student)
    if teacher is not None:
        minutes += c["teacher_factor"] * minutes_per_epoch(teacher)
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
