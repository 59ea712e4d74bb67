"""The method catalog the workflow hands the torch-free analysis: labels and run-table columns come from
the method declarations, and the paper's two methods keep the paper's columns and folder names."""

from __future__ import annotations

import pytest

from kdcore.analysis import methods as catalog
from kdcore.errors import ConfigError, DataError
from kdcore.methods import describe_methods
from kdcore.study import build_study


@pytest.fixture(autouse=True)
def _forget_catalog():
    yield
    catalog.use_catalog(None)


def test_paper_methods_give_the_paper_columns_and_labels():
    described = describe_methods({"logit": ["alpha", "temperature"], "feature": ["alpha", "beta"]})
    assert [hp["name"] for hp in described["hyperparameters"]] == list(catalog.PAPER_HYPERPARAMETERS)
    assert described["methods"]["baseline"] == {"label": "Baseline (CE)", "tex": "Baseline"}
    catalog.use_catalog(described)
    assert catalog.method_tex("feature") == "Feature-KD" and catalog.hyperparameter_tex("alpha") == r"$\alpha$"
    assert catalog.hyperparameter_columns() == ["alpha", "temperature", "beta"]


def test_a_key_the_method_lacks_and_a_method_outside_the_catalog_are_errors():
    with pytest.raises(ConfigError, match="no hyper-parameter 'gamma'"):
        describe_methods({"logit": ["gamma"]})
    catalog.use_catalog(describe_methods({"logit": ["alpha"]}))
    with pytest.raises(DataError, match="'dkd' is not in the study's method catalog"):
        catalog.method_label("dkd")
    with pytest.raises(DataError, match="label and tex"):
        catalog.use_catalog({"methods": {"x": {"label": 1}}, "hyperparameters": []})


def test_without_a_catalog_labels_come_from_the_registry():
    assert catalog.method_label("dkd") == describe_methods({"dkd": []})["methods"]["dkd"]["label"]
    assert catalog.hyperparameter_tex("temperature", ["logit"]) == "$T$"


def test_layout_names_grid_points_as_the_method_declares():
    study = {
        "pairs": [{"teacher": "resnet34", "student": "resnet18"}],
        "epochs": {"teacher": 2, "student": 1},
        "final": {"seeds": [0]},
        "teachers": {"seeds": [0], "distill_seed": 0},
        "selection": {"enabled": True, "seeds": [0]},
        "fidelity": {"final": False, "baseline_controls": False},
        "methods": {
            "logit": {"grid": {"alpha": [0.5, 0.7], "temperature": [4]}},
            "feature": {"grid": {"alpha": [0.5], "beta": [0.5, 1]}},
        },
        "ablations": {"stem": {"enabled": False}, "clip": {"enabled": False}},
    }
    select = sorted(r.folder for r in build_study(study).of_stage("select"))
    assert select == [
        "select/resnet34-resnet18/feature/a0.5-b0.5/seed0",
        "select/resnet34-resnet18/feature/a0.5-b1/seed0",
        "select/resnet34-resnet18/logit/a0.5/seed0",
        "select/resnet34-resnet18/logit/a0.7/seed0",
    ]
