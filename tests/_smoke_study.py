"""The finished smoke study that the workflow tests share (no tests here).

The smoke study (config/smoke.yaml with the teacher-output cache on) is trained once per pytest run, in a
folder shared by every pytest-xdist worker (a file lock makes the first worker build it and the others wait).
Tests that only read it use ``root``; tests that change anything work on a ``copy`` (mtimes and the
``.snakemake`` metadata kept, so Snakemake sees the same finished study) or ``seed`` a study of their own with
its data, teacher and baseline runs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from _workflow_tools import REPO, Plan, copy_workflow, dry_run, parse_dry_run, snakemake
from filelock import FileLock
from snakemake.utils import update_config

SMOKE = "config/smoke.yaml"
# the teacher-output cache on (under `auto`, 1-epoch runs never repay a build), so that it is exercised
CACHE_ON = "config/cache-on.yaml"
CONFIGS = ("--configfile", SMOKE, CACHE_ON)
#: What a study seeded from the smoke study reuses: the prepared data, the teacher and the baseline runs.
SEED_PARTS = ("results/data", "results/runs/teachers", "results/runs/baselines")


def smoke_config() -> dict:
    """config.yaml with config/smoke.yaml and the cache switch merged in, as Snakemake merges overlays."""
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    update_config(config, yaml.safe_load((REPO / SMOKE).read_text(encoding="utf-8")))
    update_config(config, {"teacher_cache": {"enabled": True}})
    return config


@dataclass(frozen=True)
class SmokeStudy:
    """The finished smoke study: its folder (never to be changed), the plan of its first run, its config."""

    root: Path
    plan: Plan
    config: dict

    def copy(self, dst: Path) -> Path:
        """A copy of the finished folder (mtimes and .snakemake metadata kept) to change freely."""
        shutil.copytree(self.root, dst, symlinks=True)
        return dst

    def seed(self, dst: Path) -> None:
        """Put the smoke study's data, teacher and baseline runs (files, logs, benchmarks and their Snakemake
        records) into the workflow folder ``dst``: a study whose runs of these kinds have the same settings
        and code finds them finished instead of training them again."""
        for part in SEED_PARTS:
            shutil.copytree(self.root / part, dst / part, dirs_exist_ok=True)
        for kind in ("logs", "benchmarks"):
            for part in ("data", "teachers", "baselines"):
                src = self.root / "results" / kind / part
                if src.exists():
                    shutil.copytree(src, dst / "results" / kind / part, dirs_exist_ok=True)
        shutil.copytree(self.root / ".snakemake/metadata", dst / ".snakemake/metadata", dirs_exist_ok=True)

    def analysis_counts(self) -> dict[str, int]:
        """Jobs per analysis rule in the first run."""
        return {r: n for r, n in self.plan.counts.items() if r.startswith("analysis_")}


def build_smoke_study(base: Path) -> SmokeStudy:
    """The smoke study finished in ``base/wf``: trained by the first caller, found by the others."""
    base.mkdir(parents=True, exist_ok=True)
    root, plan_file = base / "wf", base / "first-plan.txt"
    with FileLock(str(base / "build.lock")):
        if not plan_file.exists():
            shutil.rmtree(root, ignore_errors=True)
            copy_workflow(root)
            (root / CACHE_ON).write_text("teacher_cache: {enabled: true}\n", encoding="utf-8")
            plan = dry_run(root, *CONFIGS)
            snakemake(root, *CONFIGS, "--cores", "2", timeout=2400)
            plan_file.write_text(plan.text, encoding="utf-8")
    return SmokeStudy(root, parse_dry_run(plan_file.read_text(encoding="utf-8")), smoke_config())
