"""The workflow reused as a Snakemake module: an outer workflow in another folder includes it with
`module kdcap: snakefile: ...` and its own config, runs the smoke study, and the module still runs and
hashes its own src/ (an edit there reruns exactly what it should)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _workflow_tools import REPO, append_code, copy_workflow, dry_run, snakemake
from snakemake.utils import update_config

pytestmark = pytest.mark.slow

OUTER_SNAKEFILE = """\
configfile: "study.yaml"


module kdcap:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from kdcap


rule everything:
    default_target: True
    input:
        rules.all.input,
"""


def smoke_config() -> dict:
    """config.yaml with config/smoke.yaml merged in, as Snakemake merges an overlay."""
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    update_config(config, yaml.safe_load((REPO / "config/smoke.yaml").read_text(encoding="utf-8")))
    return config


def test_smoke_study_runs_as_a_module(tmp_path: Path) -> None:
    module = copy_workflow(tmp_path / "kdcap")
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "study.yaml").write_text(yaml.safe_dump(smoke_config()), encoding="utf-8")
    (outer / "Snakefile").write_text(OUTER_SNAKEFILE.format(snakefile=module / "Snakefile"), encoding="utf-8")

    plan = dry_run(outer)
    assert plan.counts["train_teacher"] == 1 and plan.counts["train_final"] == 4
    snakemake(outer, "--cores", "2", timeout=900)
    runs = outer / "results/runs"
    assert (runs / "final/resnet34-resnet18/feature/seed1/metrics.json").is_file()
    assert (outer / "results/runs/baselines/resnet18/seed0/fidelity-resnet34.json").is_file()
    assert not (module / "results").exists()  # results land in the outer workflow's folder
    assert dry_run(outer).counts == {}

    # the module's own src/ is what its rules hash: a feature-KD edit there reruns the feature branch
    append_code(module / "src/kdcore/methods/feature.py", "FEATURE_KD_REVISION = 2")
    rerun = dry_run(outer)
    assert rerun.counts["train_final"] == 2 and rerun.counts["train_clip"] == 1
    assert all(w["method"] == "feature" for rule, w in rerun.jobs if "method" in w)
