"""The run configuration: defaults, validation and resolution.

A run config is a plain nested dict (usually read from YAML). ``resolve_config`` fills in defaults,
checks every value and returns a new dict; every problem is reported as one ``ConfigError`` line that
names the key and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kdcore.errors import ConfigError

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101")
STEMS = ("cifar", "imagenet")
CLIP_SCOPES = ("all", "student_only")
PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST = ("auto", True, False)

REQUIRED = object()

MODEL_DEFAULTS: dict[str, Any] = {"arch": REQUIRED, "width": 64, "stem": "cifar", "num_classes": 10}
TEACHER_DEFAULTS: dict[str, Any] = {**MODEL_DEFAULTS, "checkpoint": REQUIRED}
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 100,
    "batch_size": 128,
    "lr": 0.1,
    "lr_min": 1.0e-4,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5.0e-4,
    "clip_norm": 1.0,
    "clip_scope": "all",
    "seed": 0,
}
RUNTIME_DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "threads": None,
    "precision": "auto",
    "channels_last": "auto",
    "compile": False,
    "deterministic": False,
    "eval_batch_size": 1000,
    "log_every_epoch": True,
}
TOP_LEVEL_KEYS = ("data", "model", "teacher", "method", "train", "runtime", "labels")


def _fill(section: str, given: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``given`` over ``defaults``; unknown or missing keys are errors naming ``section.key``."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"config key '{section}' must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown config key '{section}.{unknown[0]}' (allowed: {', '.join(sorted(defaults))})")
    out = {}
    for key, default in defaults.items():
        value = given.get(key, default)
        if value is REQUIRED:
            raise ConfigError(f"missing config key '{section}.{key}'")
        out[key] = copy.deepcopy(value)
    return out


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise ConfigError(f"config key '{key}': {value!r} is not allowed (allowed: {', '.join(map(str, allowed))})")
    return value


def check_number(
    key: str,
    value: Any,
    *,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """Check a numeric value; ``low_open`` makes the lower bound exclusive (e.g. T > 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise ConfigError(f"config key '{key}': expected a whole number, got {value!r}")
    value = kind(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"config key '{key}': {value!r} is outside {left}{lo}, {hi}]")
    return value


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    return value


def _check_model(section: str, model: dict[str, Any]) -> dict[str, Any]:
    check_choice(f"{section}.arch", model["arch"], ARCHITECTURES)
    check_choice(f"{section}.stem", model["stem"], STEMS)
    model["width"] = check_number(f"{section}.width", model["width"], kind=int, low=1)
    model["num_classes"] = check_number(f"{section}.num_classes", model["num_classes"], kind=int, low=2)
    return model


def _check_train(train: dict[str, Any]) -> dict[str, Any]:
    num: dict[str, Callable[[Any], Any]] = {
        "epochs": lambda v: check_number("train.epochs", v, kind=int, low=1),
        "batch_size": lambda v: check_number("train.batch_size", v, kind=int, low=1),
        "lr": lambda v: check_number("train.lr", v, low=0, low_open=True),
        "lr_min": lambda v: check_number("train.lr_min", v, low=0),
        "momentum": lambda v: check_number("train.momentum", v, low=0, high=1),
        "weight_decay": lambda v: check_number("train.weight_decay", v, low=0),
        "clip_norm": lambda v: check_number("train.clip_norm", v, low=0, low_open=True),
        "seed": lambda v: check_number("train.seed", v, kind=int, low=0),
    }
    for key, check in num.items():
        train[key] = check(train[key])
    check_bool("train.nesterov", train["nesterov"])
    check_choice("train.clip_scope", train["clip_scope"], CLIP_SCOPES)
    return train


def _check_runtime(runtime: dict[str, Any]) -> dict[str, Any]:
    device = runtime["device"]
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"config key 'runtime.device': {device!r} is not allowed (allowed: auto, cpu, cuda, cuda:N)")
    if runtime["threads"] is not None:
        runtime["threads"] = check_number("runtime.threads", runtime["threads"], kind=int, low=1)
    check_choice("runtime.precision", runtime["precision"], PRECISIONS)
    check_choice("runtime.channels_last", runtime["channels_last"], CHANNELS_LAST)
    for key in ("compile", "deterministic", "log_every_epoch"):
        check_bool(f"runtime.{key}", runtime[key])
    runtime["eval_batch_size"] = check_number("runtime.eval_batch_size", runtime["eval_batch_size"], kind=int, low=1)
    return runtime


def resolve_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` and return the full run config with every default filled in."""
    from kdcore.methods import get_method  # the registry; methods validate their own parameters

    if not isinstance(raw, Mapping):
        raise ConfigError(f"a run config must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}' (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    if "data" not in raw or not isinstance(raw["data"], (str, Path)):
        raise ConfigError("config key 'data' must be the path of a prepared dataset file")

    method_raw = dict(raw.get("method") or {"name": "baseline"})
    name = method_raw.pop("name", "baseline")
    method = get_method(name)
    method_params = method.validate_params(method_raw)

    teacher = None
    if method.needs_teacher:
        if not raw.get("teacher"):
            raise ConfigError(f"config key 'teacher' is required by method '{name}'")
        teacher = _check_model("teacher", _fill("teacher", raw["teacher"], TEACHER_DEFAULTS))
        teacher["checkpoint"] = str(teacher["checkpoint"])
    elif raw.get("teacher"):
        raise ConfigError(f"config key 'teacher' must be empty for method '{name}', which uses no teacher")

    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ConfigError("config key 'labels' must be a mapping of names to strings")

    return {
        "data": str(raw["data"]),
        "model": _check_model("model", _fill("model", raw.get("model"), MODEL_DEFAULTS)),
        "teacher": teacher,
        "method": {"name": name, **method_params},
        "train": _check_train(_fill("train", raw.get("train"), TRAIN_DEFAULTS)),
        "runtime": _check_runtime(_fill("runtime", raw.get("runtime"), RUNTIME_DEFAULTS)),
        "labels": {str(k): v for k, v in labels.items()},
    }


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
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
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
