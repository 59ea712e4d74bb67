"""The run configuration: defaults, validation and resolution.

A run config is a plain nested dict (usually read from YAML). ``resolve_config`` fills in defaults,
checks every value and returns a new dict; every problem is reported as one ``ConfigError`` line that
names the key and the value.

The schema (:mod:`kdcore.schema`, ``kdcore/schemas/config.schema.yaml``) describes the workflow's study
config (its top level) and the run config (``$defs/run_config``); the two share their ``train``/``runtime``
keys and the data spec through ``$defs``. Rules across keys (a teacher exactly when the method uses one,
finite numbers, a method's own hyper-parameters, networks the model registry knows) are code here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kdcore.errors import ConfigError, KDCoreError
from kdcore.labels import chain_network, chain_networks, split_chain
from kdcore.methods import get_method, grid_points
from kdcore.models import available_architectures, get_family
from kdcore.schema import (
    DATA_SPEC_REF,
    RUN_CONFIG_REF,
    SCHEMA_URI,
    check_finite,
    lookup,
    properties_of,
    resolved,
    schema_defaults,
    validate_with_defaults,
)


def data_defaults() -> dict[str, Any]:
    """Defaults of a data spec (every key but ``source``), for ``kdcore.data``."""
    return schema_defaults(DATA_SPEC_REF)


# ----------------------------------------------------------------------------- validation
def _number_types(section_schema: Mapping[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """Whole numbers of integer keys as int, values of number keys as float (3.0 epochs -> 3, lr 1 -> 1.0)."""
    props = properties_of(section_schema)
    for key, value in section.items():
        types = resolved(props[key]).get("type") if key in props else None
        if types == "integer" or (isinstance(types, list) and "integer" in types):
            section[key] = int(value) if isinstance(value, float) else value
        elif types == "number" and isinstance(value, int) and not isinstance(value, bool):
            section[key] = float(value)
    return section


def check_data_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A data spec checked against the schema, with defaults filled in (errors name ``data spec key``)."""
    check_finite(spec, "")
    return validate_with_defaults(spec, DATA_SPEC_REF, noun="data spec key")


def merge_config(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base`` as Snakemake merges ``--configfile`` files: mappings key by key, the rest replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def drop_removed_methods(config: dict[str, Any]) -> None:
    """Remove the methods an overlay set to null (``methods: {feature: null}``) from ``config``, in place:
    config files merge key by key, so null is how an overlay takes out a method of the config below it."""
    methods = config.get("methods")
    if isinstance(methods, dict):
        for name in [name for name, spec in methods.items() if spec is None]:
            del methods[name]


def validate_study_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A study config (the workflow's) checked against the schema, with defaults filled in, and every
    network it names against the model registry (:func:`check_study_networks`). Methods set to null are
    removed first (:func:`drop_removed_methods`)."""
    config = copy.deepcopy(dict(config))
    drop_removed_methods(config)
    study = validate_with_defaults(config, SCHEMA_URI)
    check_study_networks(study)
    check_study_references(study)
    check_study_methods(study)
    check_analysis_section(study)
    return study


def load_study_config(paths: list[str | Path]) -> dict[str, Any]:
    """The study config of ``paths`` (YAML files merged in order, as ``snakemake --configfile`` merges them),
    validated by :func:`validate_study_config`."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge_config(merged, load_config_file(path))
    return validate_study_config(merged)


def check_study_methods(study: Mapping[str, Any]) -> None:
    """Each method's settings fit the study: fixed hyper-parameters where no selection chooses them (for
    the final runs and the clip ablation), grid points with distinct folder names."""
    selection = study["selection"]["enabled"]
    for method, spec in study["methods"].items():
        if not selection and not spec.get("fixed"):
            raise ConfigError(f"config key 'methods.{method}.fixed' is required when selection.enabled is false")
        try:
            names = [name for name, _ in grid_points(method, spec["grid"])]
        except KDCoreError as exc:
            raise ConfigError(f"config key 'methods.{method}.grid': {exc}") from None
        if len(set(names)) != len(names):
            raise ConfigError(f"config key 'methods.{method}.grid': two grid points share a name")


def check_analysis_section(study: Mapping[str, Any]) -> None:
    """An analysis-only study (``analysis.runs_from: reference``) needs the zip of the runs it analyses."""
    analysis = study.get("analysis") or {}
    if analysis.get("runs_from") == "reference" and not analysis.get("reference_zip"):
        raise ConfigError("config key 'analysis.reference_zip' is required when analysis.runs_from is 'reference'")


def check_study_references(study: Mapping[str, Any]) -> None:
    """Keys that refer to other parts of the study must find them, before any job: the clip ablation's
    pairs are pairs of the study (its runs repeat their final runs with the winners of their selection),
    its method is one of ``methods``, and ``teachers.distill_seed`` is one of ``teachers.seeds``."""
    seed = study["teachers"]["distill_seed"]
    if seed not in study["teachers"]["seeds"]:
        raise ConfigError(f"config key 'teachers.distill_seed': {seed} is not one of teachers.seeds")
    clip = study["ablations"]["clip"]
    if not clip.get("enabled"):
        return
    pairs = {(p["teacher"], p["student"]) for p in study["pairs"]}
    for i, pair in enumerate(clip["pairs"]):
        if (pair["teacher"], pair["student"]) not in pairs:
            raise ConfigError(
                f"config key 'ablations.clip.pairs[{i}]': {{teacher: {pair['teacher']}, student: {pair['student']}}} "
                "is not in pairs (a clip run repeats a pair's KD runs with that pair's selection winner)"
            )
    if clip["method"] not in study["methods"]:
        raise ConfigError(f"config key 'ablations.clip.method': {clip['method']!r} is not a key of methods")


_VARIANT = re.compile(r"(?P<arch>.+?)(-w(?P<width>[1-9][0-9]*))?")


def split_variant(label: str) -> tuple[str, int | None]:
    """``'resnet18-w16'`` -> ``('resnet18', 16)``; ``'resnet18'`` -> ``('resnet18', None)`` (the study's width).

    A network of a study config is an architecture name, optionally with ``-w<width>``: the label is also
    its folder name and its ``student``/``teacher`` value in the run table."""
    match = _VARIANT.fullmatch(label)
    if match is None:  # only the empty string
        raise ConfigError(f"network {label!r}: expected <architecture>[-w<width>]")
    width = match.group("width")
    return match.group("arch"), None if width is None else int(width)


def network_spec(label: str, stem: str, study_width: int) -> dict[str, Any]:
    """The run config's network of a study's network label: its architecture and stem, and its width where
    the family has one (the label's ``-w<width>``, else the study's ``model.width``); none otherwise.
    A chain teacher's network is its last student (:func:`split_chain`)."""
    arch, width = split_variant(chain_network(label))
    spec: dict[str, Any] = {"arch": arch, "stem": stem}
    if get_family(arch).default_width is not None:
        spec["width"] = study_width if width is None else width
    return spec


def check_network(label: str, key: str, study_width: int) -> None:
    """One network label of a study: a registry architecture, with ``-w<width>`` only where the family has a
    width and the width differs from the study's ``model.width`` (else two folders would hold one network)."""
    arch, width = split_variant(label)
    if arch not in available_architectures():
        raise ConfigError(
            f"config key '{key}': unknown architecture {arch!r} (allowed: {', '.join(available_architectures())})"
        )
    if width is None:
        return
    if get_family(arch).default_width is None:
        raise ConfigError(f"config key '{key}': {label!r}: {arch} has no width option; write {arch}")
    if width == study_width:
        raise ConfigError(f"config key '{key}': {label!r} is {arch} at the study's model.width; write {arch}")


def study_networks(study: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(config key, network label) of every network a study config names."""
    found = []
    for i, pair in enumerate(study["pairs"]):
        found += [(f"pairs[{i}].{role}", pair[role]) for role in ("teacher", "student")]
    for i, run in enumerate(study["ablations"]["stem"]["runs"]):
        found.append((f"ablations.stem.runs[{i}].arch", run["arch"]))
    for i, pair in enumerate(study["ablations"]["clip"]["pairs"]):
        found += [(f"ablations.clip.pairs[{i}].{role}", pair[role]) for role in ("teacher", "student")]
    for label in study["compute"]["minutes_per_epoch"]:
        found.append((f"compute.minutes_per_epoch.{label}", label))
    return found


def check_study_networks(study: Mapping[str, Any]) -> None:
    """Every network of a (defaults filled) study config against the model registry, and every chain teacher
    against the study's pairs and methods; ConfigError naming the key."""
    for key, label in study_networks(study):
        for network in chain_networks(label):
            check_network(network, key, study["model"]["width"])
        check_chain(label, key, study)


def check_chain(label: str, key: str, study: Mapping[str, Any]) -> None:
    """A chain teacher (:func:`split_chain`) refers to final runs the study makes: its pair is a pair of the
    study, its method one of the study's methods, and the distillation seed one of the final seeds (the
    chain distils from that seed's final run, as a plain teacher from its ``teachers.distill_seed`` run)."""
    parts = split_chain(label)
    if parts is None:
        return
    teacher, method, student = parts
    pairs = {(p["teacher"], p["student"]) for p in study["pairs"]}
    if (teacher, student) not in pairs:
        raise ConfigError(
            f"config key '{key}': chain teacher {label!r} needs the pair {{teacher: {teacher}, student: {student}}}"
            " in pairs (its final runs are the teacher)"
        )
    if method not in study["methods"]:
        raise ConfigError(f"config key '{key}': chain teacher {label!r}: {method!r} is not a key of methods")
    seed = study["teachers"]["distill_seed"]
    if seed not in study["final"]["seeds"]:
        raise ConfigError(
            f"config key 'teachers.distill_seed': {seed} is not one of final.seeds, which chain teacher {label!r}"
            f" ({key}) distils from"
        )
    check_chain(teacher, key, study)


# ----------------------------------------------------------------------------- run configs
def resolve_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` and return the full run config with every default filled in."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a run config must be a mapping, got {type(raw).__name__}")
    given = {k: (str(v) if k == "data" and isinstance(v, Path) else v) for k, v in raw.items()}
    for key in ("teacher", "method", "train", "runtime", "labels"):
        if key in given and not given[key]:
            del given[key]  # null or empty: the default (no teacher, baseline, defaults)
    check_finite({k: v for k, v in given.items() if k != "labels"}, "")
    cfg = validate_with_defaults(given, RUN_CONFIG_REF)
    check_run_archs(cfg)

    method_params = dict(cfg["method"])
    name = method_params.pop("name")
    method = get_method(name)
    method_params = method.validate_params(method_params)
    if method.needs_teacher and "teacher" not in cfg:
        raise ConfigError(f"config key 'teacher' is required by method '{name}'")
    if not method.needs_teacher and "teacher" in cfg:
        raise ConfigError(f"config key 'teacher' must be empty for method '{name}', which uses no teacher")

    run_schema = properties_of(lookup(RUN_CONFIG_REF))
    sections = {key: _number_types(run_schema[key], cfg[key]) for key in ("model", "train", "runtime")}
    teacher = _number_types(run_schema["teacher"], cfg["teacher"]) if "teacher" in cfg else None
    return {
        "data": cfg["data"],
        "model": sections["model"],
        "teacher": teacher,
        "method": {"name": name, **method_params},
        "train": sections["train"],
        "runtime": sections["runtime"],
        "labels": {str(k): v for k, v in cfg["labels"].items()},
    }


def check_run_archs(cfg: Mapping[str, Any]) -> None:
    """``model.arch`` and ``teacher.arch`` of a run config are architectures of the model registry."""
    for section in ("model", "teacher"):
        arch = cfg.get(section, {}).get("arch")
        if arch is not None and arch not in available_architectures():
            raise ConfigError(
                f"config key '{section}.arch': unknown architecture {arch!r} "
                f"(allowed: {', '.join(available_architectures())})"
            )


def run_section_defaults(section: str) -> dict[str, Any]:
    """Defaults of one section of the run config (``train``, ``runtime``, ``model``)."""
    return schema_defaults(f"{RUN_CONFIG_REF}/properties/{section}")


TRAIN_DEFAULTS: dict[str, Any] = run_section_defaults("train")
RUNTIME_DEFAULTS: dict[str, Any] = run_section_defaults("runtime")


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where (line, column) and what (a syntax error, or a tag such as
    ``!!python/object`` that the safe loader does not construct)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown line"
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"{where}: {problem} (only plain YAML values are read: no tags such as !!python/object)"
    return f"YAML syntax error at {where}: {problem}"


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def typed_scalar(text: str) -> Any:
    """A string from the command line as the number, boolean or null it spells (else the string itself).
    Numbers are matched first: YAML 1.1 reads 1e-4 as a string."""
    if _NUMBER.fullmatch(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, bool) else text


def coerce_override_strings(node: Any) -> Any:
    """Type the string scalars of ``node`` in place (and return it). Snakemake parses a nested
    ``--config key={...}`` value with YAML's base loader, so every scalar in it arrives as a string."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        if isinstance(value, str):
            node[key] = typed_scalar(value)
        else:
            coerce_override_strings(value)
    return node


def checked_yaml_file(path: str) -> str:
    """``path`` once it parses as YAML: a syntax error is one ConfigError naming the file and the line
    (Snakemake reports it without either); a missing file is left to the caller."""
    file = Path(path)
    if file.is_file():
        try:
            yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: {describe_yaml_error(exc)}") from None
    return path


def network_arch(label: str) -> str:
    """The registry architecture of a network or teacher label (``resnet18-w16`` -> ``resnet18``,
    ``resnet101.logit.resnet50`` -> ``resnet50``)."""
    return split_variant(chain_network(label))[0]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML run config; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: {describe_yaml_error(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def training_digest(config: Mapping[str, Any]) -> str:
    """A digest of everything that determines a run's result (not runtime placement or labels).

    Used to refuse resuming from a checkpoint of a different run.
    """
    relevant = {k: config[k] for k in ("data", "model", "teacher", "method", "train")}
    relevant["precision"] = config["runtime"]["precision"]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
