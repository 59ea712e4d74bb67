"""Registry of training methods, looked up by name, and what the rest of the project asks of them.

A method is one module ``kdcore.methods.<name>`` that defines ``METHOD``, a subclass of
:class:`kdcore.methods.base.Method`. Modules are imported by name on demand, never statically, so a
new method is one new file and the code each run executes is exactly the engine plus its method
(the workflow hashes that import closure to decide what a code change invalidates).

The helpers below answer, from each method's own declarations, what analysis and workflow would
otherwise hard-code: display labels (:func:`method_label`, :func:`method_tex`), hyper-parameters in order
(:func:`hyperparameters`, :func:`hyperparameter_columns`) and run folder names (:func:`hp_folder_name`,
:func:`parse_hp_folder`, :func:`grid_points`), and :func:`describe_methods` hands labels and columns to the
analysis, which runs without torch (:mod:`kdcore.analysis.methods`).

Search path: method modules are found on this package's ``__path__``. A directory can be added with
:func:`add_method_directory` (in-process) or listed in the environment variable ``KDCORE_METHOD_PATH``
(``os.pathsep``-separated, read at import, so it reaches subprocesses such as workflow jobs). Modules
there are imported as ``kdcore.methods.<name>`` like the built-in ones; a name in an added directory
that a built-in module already has is shadowed by the built-in one.
"""

from __future__ import annotations

import importlib
import itertools
import os
import pkgutil
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kdcore.errors import ConfigError
from kdcore.methods.base import HyperParameter, Method

_NOT_METHODS = {"base"}
_NAME = re.compile(r"[a-z][a-z0-9_]*")
METHOD_PATH_VARIABLE = "KDCORE_METHOD_PATH"


def add_method_directory(directory: str | os.PathLike[str]) -> None:
    """Search ``directory`` for method modules too (after the built-in ones)."""
    path = str(Path(directory).resolve())
    if not Path(path).is_dir():
        raise ConfigError(f"method directory {path} does not exist")
    if path not in __path__:
        __path__.append(path)


for _directory in filter(None, os.environ.get(METHOD_PATH_VARIABLE, "").split(os.pathsep)):
    add_method_directory(_directory)


def available_methods() -> list[str]:
    """Names of every method module on the search path."""
    names = {m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and m.name not in _NOT_METHODS}
    return sorted(n for n in names if _NAME.fullmatch(n))


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``; an unknown name is a ConfigError."""
    allowed = available_methods()
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name not in allowed:
        raise ConfigError(f"config key 'method.name': unknown method {name!r} (allowed: {', '.join(allowed)})")
    module = importlib.import_module(f"kdcore.methods.{name}")
    method = getattr(module, "METHOD", None)
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise ConfigError(f"method module kdcore.methods.{name} defines no METHOD class")
    if method.name != name:
        raise ConfigError(f"method module kdcore.methods.{name} defines METHOD with name {method.name!r}")
    return method


# ----------------------------------------------------------------------------- labels
def method_label(name: str) -> str:
    """Plain-text display label of a method (figures, logs), e.g. ``Logit-KD``."""
    method = get_method(name)
    return method.label or name


def method_tex(name: str) -> str:
    """LaTeX display label of a method (tables), e.g. ``Logit-KD``."""
    method = get_method(name)
    return method.tex or method.label or name


# ----------------------------------------------------------------------------- hyper-parameters
def hyperparameters(name: str) -> tuple[HyperParameter, ...]:
    """The hyper-parameters of a method, in its declared order."""
    return get_method(name).hyperparameters


def hyperparameter(name: str, key: str) -> HyperParameter:
    """One hyper-parameter of a method; an unknown key is a ConfigError naming the allowed ones."""
    for hp in hyperparameters(name):
        if hp.name == key:
            return hp
    allowed = ", ".join(hp.name for hp in hyperparameters(name))
    raise ConfigError(f"method '{name}' has no hyper-parameter {key!r} (allowed: {allowed})")


def hyperparameter_columns(methods: Iterable[str]) -> list[str]:
    """The hyper-parameter names of ``methods``, each once, in method order then declared order.

    The columns a run table needs for these methods (a method without a key leaves it empty)."""
    return list(dict.fromkeys(hp.name for m in methods for hp in hyperparameters(m)))


def describe_methods(shown: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """The method catalog of :mod:`kdcore.analysis.methods` for a study.

    ``shown``: method name -> the hyper-parameters the study sets for it (its grid and fixed keys). The
    catalog has the label and LaTeX label of those methods and of ``baseline``, and, as the run table's
    hyper-parameter columns, the shown hyper-parameters in method order then declared order."""
    names = list(dict.fromkeys(["baseline", *shown]))
    wanted = {key for keys in shown.values() for key in keys}
    for method, keys in shown.items():
        for key in keys:
            hyperparameter(method, key)  # an unknown key is an error naming the method
    columns: dict[str, HyperParameter] = {}
    for method in shown:
        for hp in hyperparameters(method):
            if hp.name in wanted and hp.name not in columns:
                columns[hp.name] = hp
    return {
        "methods": {n: {"label": method_label(n), "tex": method_tex(n)} for n in names},
        "hyperparameters": [
            {"name": hp.name, "label": hp.label or hp.name, "tex": hp.tex or hp.label or hp.name}
            for hp in columns.values()
        ],
    }


# ----------------------------------------------------------------------------- folder names
def format_value(value: Any) -> str:
    """A hyper-parameter value as it appears in a folder name: booleans lower-case, numbers ``{:g}``."""
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def hp_folder_name(name: str, params: Mapping[str, Any], shown: Iterable[str] | None = None) -> str:
    """The run folder name of a hyper-parameter point, e.g. ``a0.5-T4``.

    ``shown``: the keys in the name, in order (default: every key of ``params``, in ``params`` order). Each
    is written as its declared short name followed by its value."""
    keys = list(params) if shown is None else list(shown)
    parts = []
    for key in keys:
        if key not in params:
            raise ConfigError(f"hyper-parameter {key!r} of method '{name}' is shown in the folder name but not given")
        parts.append(f"{hyperparameter(name, key).short}{format_value(params[key])}")
    return "-".join(parts)


_VALUE = re.compile(r"true|false|[-+]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)")


def parse_hp_folder(name: str, folder: str) -> dict[str, Any]:
    """The hyper-parameters written in a folder name made by :func:`hp_folder_name` (values as declared type)."""
    by_short = sorted(hyperparameters(name), key=lambda hp: -len(hp.short))  # longest short name first
    params: dict[str, Any] = {}
    pos = 0
    while pos < len(folder):
        for hp in by_short:
            value = _VALUE.match(folder, pos + len(hp.short)) if folder.startswith(hp.short, pos) else None
            end = value.end() if value else -1
            if value and (end == len(folder) or folder[end] == "-") and hp.name not in params:
                params[hp.name] = _parse_value(hp, value.group())
                pos = end + 1 if end < len(folder) else end
                break
        else:
            raise ConfigError(f"folder name {folder!r} is not a hyper-parameter point of method '{name}' at {pos}")
    return params


def _parse_value(hp: HyperParameter, text: str) -> Any:
    if hp.type == "boolean":
        if text not in ("true", "false"):
            raise ConfigError(f"hyper-parameter {hp.name!r}: {text!r} is not true or false")
        return text == "true"
    if text in ("true", "false"):
        raise ConfigError(f"hyper-parameter {hp.name!r}: {text!r} is not a number")
    number = float(text)
    return int(number) if hp.type == "integer" else number


def grid_points(name: str, grid: Mapping[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, hyper-parameters) of every point of a selection grid, in grid order.

    The name shows the first key and every key with more than one value (``{alpha: [0.5], beta: [0.5]}``
    -> ``a0.5``). Each point is checked by the method (an error names the key and the value)."""
    keys = list(grid)
    shown = [k for i, k in enumerate(keys) if i == 0 or len(grid[k]) > 1]
    method = get_method(name)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values, strict=True))
        method.validate_params(params)
        points.append((hp_folder_name(name, params, shown), params))
    return points
