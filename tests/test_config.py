"""The configuration schema as the single source: run-config validation, defaults, the generated reference."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from kdcore import config as C
from kdcore import schema as config_schema
from kdcore.configdoc import render
from kdcore.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TEACHER = {"arch": "resnet34", "width": 8, "checkpoint": "t/best.pt"}


def run_config(**sections: Any) -> dict[str, Any]:
    return {"data": "results/data/dataset.pt", "model": {"arch": "resnet18", "width": 8}, **sections}


def logit(**params: Any) -> dict[str, Any]:
    return {"method": {"name": "logit", **params}, "teacher": TEACHER}


def test_docs_config_md_is_generated_from_the_schema():
    text = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert text == render(), "docs/config.md is stale: run `python -m kdcore.configdoc > docs/config.md`"


def test_schema_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(config_schema.load_schema())


def _keys(schema: Mapping[str, Any], prefix: str, inherited: Any) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    """(dotted key, schema, has a default or is required) of every key below ``schema``."""
    full = config_schema.resolved(schema)
    required = set(full.get("required", []))
    for name, sub in config_schema.properties_of(schema).items():
        key = f"{prefix}.{name}" if prefix else name
        own = config_schema.resolved(sub)
        default = own.get("default", inherited.get(name) if isinstance(inherited, Mapping) else None)
        has_default = "default" in own or (isinstance(inherited, Mapping) and name in inherited)
        yield key, own, has_default or name in required or key == "run.teacher"
        yield from _keys(sub, key, default)


def all_keys() -> list[tuple[str, Mapping[str, Any], bool]]:
    return [
        *_keys(config_schema.load_schema(), "", None),
        *_keys(config_schema.lookup(config_schema.RUN_CONFIG_REF), "run", None),
    ]


def test_every_key_has_a_description_a_type_a_range_and_a_default():
    keys = all_keys()
    assert len(keys) > 90
    for key, schema, has_default in keys:
        assert schema.get("description"), key
        assert "type" in schema or "enum" in schema, key
        assert has_default, key
        types = config_schema.resolved(schema).get("type")
        if types in ("integer", "number") or (isinstance(types, list) and {"integer", "number"} & set(types)):
            assert {"minimum", "exclusiveMinimum"} & set(schema), f"{key} has no lower bound"


def test_a_default_beside_a_ref_equals_the_referenced_default():
    def walk(node: Any) -> Iterator[Mapping[str, Any]]:
        if isinstance(node, Mapping):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    checked = 0
    for node in walk(config_schema.load_schema()):
        if "$ref" in node and "default" in node and "default" in config_schema.lookup(node["$ref"]):
            assert node["default"] == config_schema.lookup(node["$ref"])["default"], node["$ref"]
            checked += 1
    assert checked >= 1


def test_config_yaml_is_the_schema_defaults():
    study = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    assert C.validate_study_config(study) == C.validate_study_config({})


@pytest.mark.parametrize("overlay", ["config/smoke.yaml", "config/quick.yaml"])
def test_snakemake_fills_the_same_defaults_as_kdcore(overlay):
    from snakemake.utils import validate

    base = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    study = C.merge_config(base, yaml.safe_load((REPO / overlay).read_text(encoding="utf-8")))
    del study["selection"]["metric"]
    by_snakemake = copy.deepcopy(study)
    validate(by_snakemake, str(config_schema.schema_path()), set_default=True)
    assert by_snakemake == C.validate_study_config(study)
    assert by_snakemake["selection"]["metric"] == "best_val_acc"  # filled in by both


def test_python_defaults_come_from_the_schema():
    train = config_schema.lookup(config_schema.RUN_CONFIG_REF)["properties"]["train"]
    assert C.TRAIN_DEFAULTS["lr"] == config_schema.lookup(train["$ref"])["properties"]["lr"]["default"] == 0.1
    assert C.TRAIN_DEFAULTS["epochs"] == 100 and C.TRAIN_DEFAULTS["clip_scope"] == "all"
    assert C.RUNTIME_DEFAULTS == {
        "precision": "auto",
        "channels_last": "auto",
        "compile": False,
        "deterministic": False,
        "eval_batch_size": 1000,
        "device": "auto",
        "threads": None,
        "log_every_epoch": True,
        "teacher_cache": None,
        "audit_test_every_epoch": False,
    }
    assert C.data_defaults() == {
        "dataset": "cifar10",
        "path": None,
        "download": False,
        "synthetic": None,
        "val_size": 5000,
        "split_seed": 1234,
        "subset": None,
    }


def test_resolve_config_fills_every_default_and_normalises_numbers():
    cfg = C.resolve_config(run_config(train={"epochs": 3.0, "lr": 1}, **logit(temperature=4)))
    assert cfg["train"] == {**C.TRAIN_DEFAULTS, "epochs": 3, "lr": 1.0}
    assert isinstance(cfg["train"]["epochs"], int) and isinstance(cfg["train"]["lr"], float)
    assert cfg["model"] == {"arch": "resnet18", "width": 8, "stem": "cifar", "num_classes": None}
    assert cfg["teacher"] == {**TEACHER, "stem": "cifar", "num_classes": None}
    assert cfg["method"] == {"name": "logit", "alpha": 0.5, "temperature": 4.0, "standardize": False}
    assert cfg["runtime"] == C.RUNTIME_DEFAULTS and cfg["labels"] == {}
    baseline = C.resolve_config(run_config(method=None, teacher=None, train=None))
    assert baseline["method"] == {"name": "baseline"} and baseline["teacher"] is None


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (logit(alpha=1.5), "config key 'method.alpha': 1.5 is outside [0, 1]"),
        (logit(temperature=0), "config key 'method.temperature': 0 is outside (0, inf]"),
        (
            logit(gamma=1),
            "unknown config key 'method.gamma' for method 'logit' (allowed: name, alpha, standardize, temperature)",
        ),
        ({"train": {"momentum": 1.5}}, "config key 'train.momentum': 1.5 is outside [0, 1]"),
        ({"train": {"clip_norm": None}}, "config key 'train.clip_norm': expected a number, got None"),
        ({"train": {"lr": math.nan}}, "config key 'train.lr': nan is not a finite number"),
        ({"train": {"lr": math.inf}}, "config key 'train.lr': inf is not a finite number"),
        ({"train": {"lr": 0}}, "config key 'train.lr': 0 is outside (0, inf]"),
        ({"train": {"lr": -0.1}}, "config key 'train.lr': -0.1 is outside (0, inf]"),
        ({"train": {"epochs": 2.5}}, "config key 'train.epochs': expected a whole number, got 2.5"),
        ({"train": {"nesterov": "yes"}}, "config key 'train.nesterov': expected true or false, got 'yes'"),
        ({"runtime": {"threads": 0}}, "config key 'runtime.threads': 0 is outside [1, inf]"),
        ({"model": {"width": 8}}, "missing config key 'model.arch'"),
        ({"teacher": {**TEACHER, "depth": 3}, "method": {"name": "logit"}}, "unknown config key 'teacher.depth'"),
        ({"method": {"name": "feature", "beta": math.nan}, "teacher": TEACHER}, "'method.beta': nan is not a finite"),
        ({"teacher": TEACHER}, "config key 'teacher' must be empty for method 'baseline', which uses no teacher"),
        ({"data": ""}, "config key 'data': '' should be non-empty"),
    ],
)
def test_bad_run_config_is_one_line_naming_key_and_value(sections, message):
    with pytest.raises(ConfigError) as info:
        C.resolve_config(run_config(**sections))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"val_size": 0}, "data spec key 'val_size': 0 is outside [1, inf]"),
        ({"subset": {"train": 55}}, "data spec key 'subset.train': 55 is not a multiple of 10"),
        ({"subset": {"trian": 50}}, "unknown data spec key 'subset.trian' (allowed: seed, test, train, val)"),
        ({"source": "s3"}, "data spec key 'source': 's3' is not allowed (allowed: synthetic, folder, torchvision)"),
    ],
)
def test_bad_data_spec_is_one_line(patch, message):
    with pytest.raises(ConfigError) as info:
        C.check_data_spec({"source": "synthetic", **patch})
    assert str(info.value) == message


def test_data_spec_defaults_are_filled_inside_given_mappings():
    spec = C.check_data_spec({"source": "synthetic", "synthetic": {"n_train": 700}, "subset": {"test": 100}})
    assert spec["synthetic"] == {"n_train": 700, "n_test": 10000, "seed": 0}
    assert spec["subset"] == {"test": 100, "train": None, "val": None, "seed": 0}
    assert spec["val_size"] == 5000 and spec["path"] is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"data": {"source": "synthetic", "subset": {"train": 55}}}, "'data.subset.train': 55 is not a multiple of 10"),
        ({"data": {"source": "synthetic", "val_size": 0}}, "'data.val_size': 0 is outside [1, inf]"),
        (
            {"train": {"epochs": 3}},
            "unknown config key 'train.epochs' (allowed: batch_size, clip_norm, lr, lr_gamma, lr_milestones, lr_min",
        ),
        ({"compute": {"device": "tpu"}}, "config key 'compute.device': 'tpu' is not allowed"),
        (
            {"ablations": {"clip": {"pairs": [{"teacher": "resnet101", "student": "resnet18"}]}}},
            "config key 'ablations.clip.pairs[0]': {teacher: resnet101, student: resnet18} is not in pairs",
        ),
        (
            {"ablations": {"clip": {"method": "dkd"}}},
            "config key 'ablations.clip.method': 'dkd' is not a key of methods",
        ),
        ({"teachers": {"seeds": [0, 1], "distill_seed": 2}}, "'teachers.distill_seed': 2 is not one of teachers.seeds"),
        (
            {"pairs": [{"teacher": "resnet50 ", "student": "resnet18"}]},
            "config key 'pairs.0.teacher': 'resnet50 ' is not allowed (expected the teacher of a pair; "
            "it has a leading or trailing blank)",
        ),
    ],
)
def test_bad_study_config_names_the_key(patch, message):
    with pytest.raises(ConfigError) as info:
        C.validate_study_config(patch)
    assert message in str(info.value)
    assert len(str(info.value)) < 200 and "\n" not in str(info.value)


def test_a_clip_pair_outside_pairs_fails_at_parse_time_not_in_select_winner():
    base = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    config = C.merge_config(base, yaml.safe_load((REPO / "config" / "smoke.yaml").read_text(encoding="utf-8")))
    config["ablations"]["clip"]["pairs"] = [{"teacher": "resnet101", "student": "resnet18"}]
    with pytest.raises(ConfigError, match=r"'ablations.clip.pairs\[0\]': \{teacher: resnet101, student: resnet18\}"):
        C.validate_study_config(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model:\n  width: !!python/object:builtins.dict {}\n",
            "overlay.yaml: line 2, column 10: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object:builtins.dict' (only plain YAML values are read",
        ),
        ("model: {width: 8\n", "overlay.yaml: YAML syntax error at line 2, column 1:"),
    ],
)
def test_config_file_errors_are_one_line_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "overlay.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        C.load_config_file(path)
    assert str(info.value).startswith(f"config file {tmp_path}/") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_schema_lives_in_the_package_and_the_snakefile_validates_with_it():
    assert (
        config_schema.schema_path() == Path(config_schema.__file__).resolve().parent / "schemas" / "config.schema.yaml"
    )
    snakefile = (REPO / "Snakefile").read_text(encoding="utf-8")
    assert 'validate(config, "src/kdcore/schemas/config.schema.yaml"' in snakefile


def test_an_overlay_removes_a_method_with_null():
    base = C.merge_config(
        yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8")),
        {"methods": {"feature": None}, "ablations": {"clip": {"enabled": False}}},
    )
    study = C.validate_study_config(base)
    assert list(study["methods"]) == ["logit"]
    assert base["methods"]["feature"] is None  # validation works on a copy
    C.drop_removed_methods(base)
    assert "feature" not in base["methods"]
