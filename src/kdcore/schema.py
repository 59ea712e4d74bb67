"""The JSON schema of study and run configs: loading, lookups, defaults and error wording.

The single source of every config key's type, range, default and description is
``kdcore/schemas/config.schema.yaml``, shipped inside the package so that an installed kdcore finds it. This
module reads it, fills defaults while validating (as Snakemake's ``validate`` does) and words a violation as
one line naming the key and the value. It imports nothing of kdcore but the errors, so that every layer
(the config, the methods' hyper-parameter checks, the docs generator) can use it.
"""

from __future__ import annotations

import copy
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

SCHEMA_URI = "urn:kdcore:config-schema"
RUN_CONFIG_REF = f"{SCHEMA_URI}#/$defs/run_config"
DATA_SPEC_REF = f"{SCHEMA_URI}#/$defs/data_spec"
_TYPE_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


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
