"""The run configuration: defaults, validation and resolution.

A run config is a plain nested dict (usually read from YAML). ``resolve_config`` fills in defaults,
checks every value and returns a new dict; every problem is reported as one ``ConfigError`` line that
names the key and the value.

The single source of every key's type, range, default and description is the JSON schema
``kdcore/schemas/config.schema.yaml``, shipped inside the package so that an installed kdcore finds it.
It describes the workflow's study config (its top level, validated by the Snakefile) and the run config
(``$defs/run_config``); the two share their ``train``/``runtime`` keys and the data spec through ``$defs``.
Rules across keys (a teacher exactly when the method uses one, finite numbers, a method's own
hyper-parameters) are code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from kdcore.errors import ConfigError
from kdcore.labels import chain_network, chain_networks, split_chain

SCHEMA_URI = "urn:kdcore:config-schema"
RUN_CONFIG_REF = f"{SCHEMA_URI}#/$defs/run_config"
DATA_SPEC_REF = f"{SCHEMA_URI}#/$defs/data_spec"
RUN_SECTIONS = ("data", "model", "teacher", "method", "train", "runtime", "labels")
_TYPE_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


# ----------------------------------------------------------------------------- the schema
def schema_path() -> Path:
    """The schema file inside the installed package (the Snakefile validates the study config with it)."""
    return Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


@cache
def load_schema() -> dict[str, Any]:
    """The configuration schema (read once; callers must not modify it)."""
    return yaml.safe_load(schema_path().read_text(encoding="utf-8"))


@cache
def _registry() -> Registry:
    # stored without "$schema": a subschema naming its dialect would make jsonschema switch to the plain
    # validator class of that dialect on the way down, and the defaults would not be filled in
    contents = {k: v for k, v in load_schema().items() if k != "$schema"}
    return Registry().with_resource(SCHEMA_URI, Resource(contents=contents, specification=DRAFT202012))


def lookup(ref: str) -> Mapping[str, Any]:
    """The subschema at ``ref`` (``#/$defs/...`` or an absolute reference into the schema)."""
    return _registry().resolver(SCHEMA_URI).lookup(ref).contents


def properties_of(schema: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The properties a mapping schema allows: those of its ``$ref`` target, its own, those of its ``then``."""
    props: dict[str, Mapping[str, Any]] = {}
    if "$ref" in schema:
        props.update(properties_of(lookup(schema["$ref"])))
    props.update(schema.get("properties", {}))
    if "then" in schema:  # a nullable mapping: ``if: {type: object}, then: {properties: ...}``
        props.update(properties_of(schema["then"]))
    return props


def resolved(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` merged over its ``$ref`` target (recursively); its own keywords win."""
    if "$ref" not in schema:
        return dict(schema)
    base = resolved(lookup(schema["$ref"]))
    return {**base, **{k: v for k, v in schema.items() if k != "$ref"}}


def _fill_defaults(cls: type[Validator]) -> type[Validator]:
    """``cls`` extended to set missing properties to their schema ``default`` (as Snakemake's validate does)."""
    check_properties = cls.VALIDATORS["properties"]

    def properties(validator: Any, props: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, schema)

    return validators.extend(cls, {"properties": properties})


_DefaultFillingValidator = _fill_defaults(Draft202012Validator)


def schema_defaults(ref: str) -> dict[str, Any]:
    """The defaults of the mapping schema at ``ref`` (keys without a default are left out)."""
    return {k: copy.deepcopy(s["default"]) for k, s in properties_of(lookup(ref)).items() if "default" in s}


def data_defaults() -> dict[str, Any]:
    """Defaults of a data spec (every key but ``source``), for ``kdcore.data``."""
    return schema_defaults(DATA_SPEC_REF)


# ----------------------------------------------------------------------------- validation
def _interval(schema: Mapping[str, Any]) -> str:
    if "exclusiveMinimum" in schema:
        low = f"({schema['exclusiveMinimum']:g}"
    else:
        low = f"[{schema['minimum']:g}" if "minimum" in schema else "(-inf"
    if "exclusiveMaximum" in schema:
        high = f"{schema['exclusiveMaximum']:g})"
    else:
        high = f"{schema['maximum']:g}]" if "maximum" in schema else "inf]"
    return f"{low}, {high}"


def _pattern_hint(value: Any, schema: Mapping[str, Any]) -> str:
    """A short reason for a string that does not match its pattern: the first clause of the key's
    description, and a word on stray blanks (the usual cause)."""
    description = " ".join(str(schema.get("description", "")).split())
    clause = re.split(r"[:;(]", description, maxsplit=1)[0].strip() or "see docs/config.md"
    if isinstance(value, str) and value != value.strip():
        return f"expected {clause}; it has a leading or trailing blank"
    return f"expected {clause}; see docs/config.md"


def describe_error(error: ValidationError, noun: str = "config key") -> str:
    """One line naming the key and the value of a schema violation."""
    path = [str(p) for p in error.absolute_path]
    key, value, kind, schema = ".".join(path), error.instance, error.validator, error.schema
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(properties_of(schema))
        unknown = sorted(str(k) for k in value if k not in allowed)
        return f"unknown {noun} '{'.'.join([*path, unknown[0]])}' (allowed: {', '.join(allowed)})"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return f"missing {noun} '{'.'.join([*path, missing[0]])}'"
    where = f"{noun} '{key}'" if key else noun
    if kind == "enum":
        return f"{where}: {value!r} is not allowed (allowed: {', '.join(map(str, error.validator_value))})"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{where}: {value!r} is outside {_interval(schema)}"
    if kind == "type":
        types = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
        return f"{where}: expected {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}, got {value!r}"
    if kind == "multipleOf":
        return f"{where}: {value!r} is not a multiple of {error.validator_value}"
    if kind == "pattern":
        return f"{where}: {value!r} is not allowed ({_pattern_hint(value, schema)})"
    return f"{where}: {error.message}"


def validate_with_defaults(instance: Any, ref: str, noun: str = "config key") -> Any:
    """A copy of ``instance`` with schema defaults filled in; the first violation is a ConfigError."""
    instance = copy.deepcopy(instance)
    validator = _DefaultFillingValidator({"$ref": ref}, registry=_registry())
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        raise ConfigError(describe_error(error, noun))
    return instance


def check_finite(value: Any, key: str) -> None:
    """NaN and infinities anywhere in ``value`` are errors (JSON schema ranges cannot see them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}': {value!r} is not a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{key}[{i}]")


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
    return study


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
    from kdcore.models import get_family

    arch, width = split_variant(chain_network(label))
    spec: dict[str, Any] = {"arch": arch, "stem": stem}
    if get_family(arch).default_width is not None:
        spec["width"] = study_width if width is None else width
    return spec


def check_network(label: str, key: str, study_width: int) -> None:
    """One network label of a study: a registry architecture, with ``-w<width>`` only where the family has a
    width and the width differs from the study's ``model.width`` (else two folders would hold one network)."""
    from kdcore.models import available_architectures, get_family

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
    from kdcore.methods import get_method  # the registry; methods validate their own parameters

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
    from kdcore.models import available_architectures

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
