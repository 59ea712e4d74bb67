"""Bad study input fails at parse time (`snakemake -n`), before any job, with one message naming the key
and the value; good input given the documented ways (--config overrides, overlays) is accepted; a dataset
artefact that was not made from this config is rebuilt. Dry runs only, apart from one data preparation."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from _workflow_tools import REPO, copy_workflow, dry_run, snakemake

from kdcore.data import prepare_dataset

SMOKE = "config/smoke.yaml"
SMOKE_DATA = yaml.safe_load((REPO / SMOKE).read_text())["data"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def overlay(workdir: Path, name: str, content: dict) -> str:
    path = workdir / "config" / name
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return f"config/{name}"


def refused(workdir: Path, *args: str) -> str:
    """The output of a dry run that must fail before scheduling any job."""
    proc = snakemake(workdir, "-n", "--cores", "1", *args, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "Job stats" not in output
    return output


# ----------------------------------------------------------------------------- --config overrides
def test_nested_config_override_is_typed(workdir: Path) -> None:
    plan = dry_run(workdir, "--configfile", SMOKE, "--config", 'model={"width": 8}')
    assert plan.counts["train_teacher"] == 1
    output = refused(workdir, "--configfile", SMOKE, "--config", 'model={"width": 0}')
    assert "model.width" in output and "outside" in output  # typed: the schema's range check, not its type check


def test_config_override_numbers_booleans_and_null(workdir: Path) -> None:
    args = ("--configfile", SMOKE, "--config", 'train={"lr_min": 1e-4, "nesterov": false, "clip_norm": 2}')
    assert dry_run(workdir, *args).counts["train_final"] == 4
    output = refused(workdir, "--configfile", SMOKE, "--config", 'train={"clip_norm": null}')
    assert "train.clip_norm" in output and "None" in output


def readme_override_recipes() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"`(snakemake [^`]*--config [^`]*)`", text)


def test_readme_has_override_recipes() -> None:
    assert any("torchvision" in recipe for recipe in readme_override_recipes())


@pytest.mark.parametrize("recipe", readme_override_recipes())
def test_readme_override_recipe_resolves(workdir: Path, recipe: str) -> None:
    args = shlex.split(recipe)[1:]
    plan = dry_run(workdir, *args)
    assert plan.counts["prepare_data"] == 1 and plan.counts["all"] == 1


# ----------------------------------------------------------------------------- run settings at parse time
BAD_RUN_SETTINGS = [
    pytest.param({"methods": {"logit": {"grid": {"alpha": [0.5, 1.5], "temperature": [4]}}}}, ("methods.logit.grid", "alpha", "1.5"), id="grid-alpha-1.5"),
    pytest.param(
        {"selection": {"enabled": False}, "methods": {"logit": {"fixed": {"alpha": 1.5, "temperature": 4}}, "feature": {"fixed": {"alpha": 0.5, "beta": 0.5}}}},
        ("methods.logit.fixed", "alpha", "1.5"),
        id="fixed-alpha-1.5",
    ),
    pytest.param({"methods": {"logit": {"grid": {"alpha": [0.5], "temperature": [0]}}}}, ("methods.logit.grid", "temperature", "0"), id="temperature-0"),
    pytest.param({"methods": {"feature": {"grid": {"alpha": [0.5], "gamma": [1]}}}}, ("methods.feature.grid", "gamma"), id="unknown-hp-name"),
    pytest.param({"train": {"momentum": 1.5}}, ("train.momentum", "1.5"), id="momentum-1.5"),
    pytest.param({"train": {"clip_norm": None}}, ("train.clip_norm", "None"), id="clip_norm-null"),
    pytest.param({"data": {"subset": {"train": 55, "val": None, "test": None, "seed": 0}}}, ("subset", "55"), id="subset-55"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "named"), BAD_RUN_SETTINGS)
def test_bad_run_setting_fails_at_parse_time_naming_key_and_value(workdir: Path, bad: dict, named: tuple) -> None:
    output = refused(workdir, "--configfile", SMOKE, overlay(workdir, "bad-run.yaml", bad))
    for text in named:
        assert text in output, (text, output[-2000:])


# ----------------------------------------------------------------------------- YAML syntax errors
BROKEN_YAML = "data:\n  source: synthetic\n  val_size: [100\nmodel: {width: 8}\n"


def test_yaml_syntax_error_in_workflow_config_names_file_and_line(tmp_path: Path) -> None:
    root = copy_workflow(tmp_path / "wf")
    text = (root / "config.yaml").read_text(encoding="utf-8")
    (root / "config.yaml").write_text(text.replace("  val_size: 5000", "  val_size: [5000", 1), encoding="utf-8")
    line = 1 + next(i for i, row in enumerate(text.splitlines()) if row.startswith("  val_size: 5000"))
    output = refused(root)
    assert re.search(rf"config file config\.yaml: YAML syntax error at line {line + 1}\b", output), output[-2000:]


def test_yaml_syntax_error_in_configfile_fails_before_any_job(workdir: Path) -> None:
    output = refused(workdir, "--configfile", overlay_text(workdir, "broken.yaml", BROKEN_YAML))
    assert "not valid JSON or YAML" in output


@pytest.mark.xfail(
    strict=True,
    reason="Snakemake 9 loads --configfile files before the Snakefile runs and reports a syntax error "
    "without the file or the line ('Config file is not valid JSON or YAML')",
)
def test_yaml_syntax_error_in_configfile_names_file_and_line(workdir: Path) -> None:
    output = refused(workdir, "--configfile", overlay_text(workdir, "broken.yaml", BROKEN_YAML))
    assert "broken.yaml" in output and re.search(r"line [34]\b", output)


def overlay_text(workdir: Path, name: str, text: str) -> str:
    (workdir / "config" / name).write_text(text, encoding="utf-8")
    return f"config/{name}"


# ----------------------------------------------------------------------------- shipped configs
def test_paper_exact_config_resolves_to_fp32_deterministic(workdir: Path) -> None:
    plan = dry_run(workdir, "--configfile", "config/paper-exact.yaml")
    assert plan.counts["train_teacher"] == 9 and plan.counts["train_final"] == 40
    runtime = yaml.safe_load((REPO / "config/paper-exact.yaml").read_text())["runtime"]
    assert runtime["precision"] == "fp32" and runtime["deterministic"] is True


# ----------------------------------------------------------------------------- the dataset artefact
def test_dataset_from_another_study_is_rebuilt(tmp_path: Path) -> None:
    root = copy_workflow(tmp_path / "wf")
    dataset = root / "results/data/dataset.pt"
    other = {**SMOKE_DATA, "synthetic": {**SMOKE_DATA["synthetic"], "n_train": 600}}
    prepare_dataset(other, dataset)

    plan = dry_run(root, "--configfile", SMOKE)
    assert plan.counts["prepare_data"] == 1
    assert "results/data/dataset.pt will be rebuilt: it was not made from this config's data section" in plan.text
    assert f"source.n_train: recorded 600, config {SMOKE_DATA['synthetic']['n_train']}" in plan.text

    # the real run rebuilds it from this config; then it is kept
    snakemake(root, "results/data/dataset.pt", "--cores", "1", "--configfile", SMOKE)
    plan = dry_run(root, "--configfile", SMOKE)
    assert "prepare_data" not in plan.counts and "will be rebuilt" not in plan.text
    assert plan.counts["train_teacher"] == 1


def test_dataset_made_from_this_config_is_kept(tmp_path: Path) -> None:
    root = copy_workflow(tmp_path / "wf")
    prepare_dataset(SMOKE_DATA, root / "results/data/dataset.pt")
    plan = dry_run(root, "--configfile", SMOKE)
    assert "prepare_data" not in plan.counts and "will be rebuilt" not in plan.text


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"val_size": 60}, "split.val_size: recorded 50, config 60"),
        ({"split_seed": 7}, "split.seed: recorded 1234, config 7"),
        ({"subset": {"train": 300, "val": None, "test": None, "seed": 0}}, "subset: recorded None"),
    ],
)
def test_dataset_with_other_split_is_rebuilt(tmp_path: Path, change: dict, named: str) -> None:
    root = copy_workflow(tmp_path / "wf")
    prepare_dataset(SMOKE_DATA, root / "results/data/dataset.pt")
    plan = dry_run(root, "--configfile", SMOKE, overlay(root, "data.yaml", {"data": change}))
    assert plan.counts["prepare_data"] == 1 and named in plan.text


def test_unreadable_dataset_is_rebuilt(tmp_path: Path) -> None:
    root = copy_workflow(tmp_path / "wf")
    (root / "results/data").mkdir(parents=True)
    (root / "results/data/dataset.pt").write_bytes(b"not a dataset")
    plan = dry_run(root, "--configfile", SMOKE)
    assert plan.counts["prepare_data"] == 1 and "it is not a readable dataset artefact" in plan.text
