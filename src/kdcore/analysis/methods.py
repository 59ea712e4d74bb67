"""Display labels and hyper-parameter columns of a study's methods, as the analysis sees them (no torch).

Methods declare their labels and hyper-parameters in their modules (:mod:`kdcore.methods`), which import
torch; the analysis runs without it. So the workflow reads the declarations
(:func:`kdcore.methods.describe_methods`) and hands them to every analysis job as a plain catalog, which the
job registers here with :func:`use_catalog`. A catalog is JSON-like::

    {"methods": {"logit": {"label": "Logit-KD", "tex": "Logit-KD"}, ...},
     "hyperparameters": [{"name": "alpha", "label": "alpha", "tex": "$\\alpha$"}, ...]}

``hyperparameters`` are the run table's hyper-parameter columns, in order. Without a registered catalog
(direct library use, where torch is available), labels are read from :mod:`kdcore.methods` and the run
table has the paper study's columns, :data:`PAPER_HYPERPARAMETERS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from kdcore.errors import DataError

#: The hyper-parameter columns of the paper's run tables (what its two methods were tuned on).
PAPER_HYPERPARAMETERS = ("alpha", "temperature", "beta")

_registered: dict[str, dict[str, Any]] = {}  # "catalog" -> the registered catalog


def check_catalog(catalog: Mapping[str, Any]) -> dict[str, Any]:
    """``catalog`` as a plain dict, or a DataError naming what is wrong with it."""
    methods, hps = catalog.get("methods"), catalog.get("hyperparameters")
    if not isinstance(methods, Mapping) or not isinstance(hps, (list, tuple)):
        raise DataError("method catalog: expected keys 'methods' (a mapping) and 'hyperparameters' (a list)")
    for name, info in methods.items():
        if not isinstance(info, Mapping) or not all(isinstance(info.get(k), str) for k in ("label", "tex")):
            raise DataError(f"method catalog: method {name!r} needs string fields label and tex")
    for hp in hps:
        if not isinstance(hp, Mapping) or not all(isinstance(hp.get(k), str) for k in ("name", "label", "tex")):
            raise DataError(f"method catalog: hyper-parameter {hp!r} needs string fields name, label and tex")
    return {
        "methods": {str(n): {"label": i["label"], "tex": i["tex"]} for n, i in methods.items()},
        "hyperparameters": [{k: hp[k] for k in ("name", "label", "tex")} for hp in hps],
    }


def use_catalog(catalog: Mapping[str, Any] | None) -> None:
    """Register the study's method catalog for this process (None: forget it, read kdcore.methods again)."""
    _registered.clear()
    if catalog is not None:
        _registered["catalog"] = check_catalog(catalog)


def current_catalog() -> dict[str, Any] | None:
    """The registered catalog, if any."""
    return _registered.get("catalog")


def _registry() -> Any:
    return importlib.import_module("kdcore.methods")  # imports torch: only without a registered catalog


def _method_info(name: str) -> dict[str, str]:
    catalog = current_catalog()
    if catalog is not None:
        if name not in catalog["methods"]:
            known = ", ".join(catalog["methods"])
            raise DataError(f"method {name!r} is not in the study's method catalog (known: {known})")
        return catalog["methods"][name]
    registry = _registry()
    return {"label": registry.method_label(name), "tex": registry.method_tex(name)}


def method_label(name: str) -> str:
    """Plain-text label of a method (figures)."""
    return _method_info(name)["label"]


def method_tex(name: str) -> str:
    """LaTeX label of a method (tables)."""
    return _method_info(name)["tex"]


def hyperparameter_columns() -> list[str]:
    """The run table's hyper-parameter columns, in order."""
    catalog = current_catalog()
    if catalog is not None:
        return [hp["name"] for hp in catalog["hyperparameters"]]
    return list(PAPER_HYPERPARAMETERS)


def hyperparameter_tex(name: str, methods: Iterable[str] = ()) -> str:
    """LaTeX heading of a hyper-parameter column: from the catalog, else from the first of ``methods`` that
    declares it, else the name itself."""
    catalog = current_catalog()
    if catalog is not None:
        for hp in catalog["hyperparameters"]:
            if hp["name"] == name:
                return hp["tex"]
        return name
    registry = _registry()
    for method in methods:
        for hp in registry.hyperparameters(method):
            if hp.name == name:
                return hp.tex or hp.label or name
    return name
