"""The workflow reused as a Snakemake module: an outer workflow in another folder includes it with
`module kdcap: snakefile: ...` and its own config (the smoke study's). The module plans the same jobs as the
workflow run directly and takes the finished smoke study as its own (nothing to do), runs the jobs of a
deleted run into the outer folder, and hashes its own src/ (an edit there reruns exactly what it should)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml
from _smoke_study import SmokeStudy
from _workflow_tools import append_code, copy_workflow, dry_run, snakemake

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


def without_all(counts: dict[str, int]) -> dict[str, int]:
    """Jobs per rule without the workflow's target rule ``all``."""
    return {rule: n for rule, n in counts.items() if rule != "all"}


def test_smoke_study_runs_as_a_module(smoke_study: SmokeStudy, tmp_path: Path) -> None:
    module = copy_workflow(tmp_path / "kdcap")
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "study.yaml").write_text(yaml.safe_dump(smoke_study.config, sort_keys=False), encoding="utf-8")
    (outer / "Snakefile").write_text(OUTER_SNAKEFILE.format(snakefile=module / "Snakefile"), encoding="utf-8")

    plan = dry_run(outer)
    # the module plans the same study as the workflow itself (under the outer workflow's target rule)
    assert plan.counts == {**without_all(smoke_study.plan.counts), "everything": 1}
    # the finished smoke study, copied into the outer folder, is the module's study finished: same jobs,
    # same settings, same code
    shutil.copytree(smoke_study.root / "results", outer / "results", dirs_exist_ok=True)
    shutil.copytree(smoke_study.root / ".snakemake/metadata", outer / ".snakemake/metadata", dirs_exist_ok=True)
    assert dry_run(outer).counts == {}

    # the module runs jobs, and their results land in the outer workflow's folder
    # (the run and two of the analysis jobs that read it, the run table and the statistics: every analysis job
    # ran when the smoke study was built, and the rest of the plan is left to the dry run below)
    final = outer / "results/runs/final/resnet34-resnet18/feature/seed1"
    shutil.rmtree(final)
    rerun = dry_run(outer)
    assert rerun.counts["train_final"] == 1 and rerun.counts["analysis_part_table"] >= 1
    tables = ("results/tables/runs.csv", "results/tables/summary.json")
    started = time.time()
    snakemake(outer, "--cores", "2", str((final / "metrics.json").relative_to(outer)), *tables, timeout=900)
    assert (final / "metrics.json").is_file() and (final / "test_logits.npz").is_file()
    assert all((outer / table).stat().st_mtime >= started for table in tables)  # rebuilt from the new run
    assert not (module / "results").exists()
    assert dry_run(outer, *tables).counts == {}
    left = dry_run(outer).counts  # what is left reads the new run: analysis jobs only
    assert left and all(rule.startswith("analysis_") or rule == "everything" for rule in left), left

    # the module's own src/ is what its rules hash: a feature-KD edit there reruns the feature branch
    append_code(module / "src/kdcore/methods/feature.py", "FEATURE_KD_REVISION = 2")
    rerun = dry_run(outer)
    assert rerun.counts["train_final"] == 2 and rerun.counts["train_clip"] == 1
    assert all(w["method"] == "feature" for rule, w in rerun.jobs if "method" in w)
