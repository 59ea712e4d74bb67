"""Shared pytest fixtures: a tiny synthetic prepared dataset (never the real CIFAR-10 files), and the finished
smoke study and analysed hand-made study that the workflow tests share (tests/_smoke_study.py,
tests/_analysis_study.py)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _analysis_study import build_analysis_study
from _smoke_study import SmokeStudy, build_smoke_study

from kdcore.codehash import CACHE_ENV as CODEHASH_CACHE_ENV
from kdcore.data import prepare_dataset

# One torch thread in each pytest(-xdist) process: the workers and the jobs they start already keep every core
# busy, and a second thread per worker only contends with them (the training runs set their own threads).
torch.set_num_threads(1)

#: The spec behind ``synthetic_dataset``: 500 synthetic training images (400 train + 100 val) and 100 test.
SYNTHETIC_SPEC: dict[str, Any] = {
    "source": "synthetic",
    "synthetic": {"n_train": 500, "n_test": 100, "seed": 0},
    "val_size": 100,
    "split_seed": 1234,
}


@pytest.fixture
def synthetic_spec() -> dict[str, Any]:
    """A fresh copy of the data spec of ``synthetic_dataset`` (safe to modify)."""
    return {**SYNTHETIC_SPEC, "synthetic": dict(SYNTHETIC_SPEC["synthetic"])}


@pytest.fixture
def synthetic_dataset(tmp_path: Path, synthetic_spec: dict[str, Any]) -> Path:
    """Path of a prepared synthetic dataset artefact in tmp_path: 400 train / 100 val / 100 test, 10 classes."""
    path = tmp_path / "data" / "dataset.pt"
    prepare_dataset(synthetic_spec, path)
    return path


def _shared_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this pytest run that every pytest-xdist worker sees (above the workers' own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def codehash_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The code digests' parse cache (kdcore.codehash, KDCORE_CODEHASH_CACHE) in a folder that every pytest-xdist
    worker and every process they start shares: the workflow copies hash the same sources in hundreds of
    Snakemake processes and training jobs; each text is parsed once per run instead."""
    folder = _shared_temp(tmp_path_factory) / "codehash-cache"
    previous = os.environ.get(CODEHASH_CACHE_ENV)
    os.environ[CODEHASH_CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CODEHASH_CACHE_ENV, None)
    else:
        os.environ[CODEHASH_CACHE_ENV] = previous


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> SmokeStudy:
    """The smoke study, trained once per pytest run and shared by every pytest-xdist worker: read its
    ``root``, never change it; ``copy`` it (or ``seed`` a study from it) to change anything."""
    return build_smoke_study(_shared_temp(tmp_path_factory) / "smoke-study")


@pytest.fixture(scope="session")
def analysis_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-made study of tests/_analysis_study.py with its analysis and HTML report finished (once per
    pytest run, shared by every pytest-xdist worker; read only)."""
    return build_analysis_study(_shared_temp(tmp_path_factory) / "analysis-study")


#: The session fixtures that build a study (minutes, once per run): their users are slow tests.
SHARED_STUDIES = ("smoke_study", "analysis_study")
#: What a test's own code calls to run Snakemake (a dry run or a study): such a test takes seconds to minutes.
SNAKEMAKE_CALLS = (
    "dry_run(",
    "snakemake(",
    "snakemake_cmd(",
    "dry_run_with_profile(",
    "LAUNCHER.run(",
    '"-m", "snakemake"',
)


def _runs_snakemake(item: pytest.Item) -> bool:
    """Whether the test function's source calls Snakemake (see :data:`SNAKEMAKE_CALLS`)."""
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return False
    return any(call in source for call in SNAKEMAKE_CALLS)


def _uses_module_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture made once per module (or class): its tests must share one worker."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(d.scope in ("module", "class") for defs in info.name2fixturedefs.values() for d in defs)


def _xdist_group(item: pytest.Item) -> str | None:
    """The pytest-xdist group of a test: the tests of a module-scoped (or class-scoped) fixture run on one
    worker, which builds it once. Users of the session-wide shared studies need no group: the first worker to
    ask builds the study under a file lock, and any other waits for it and reads the same folder."""
    if _uses_module_fixture(item) and item.module is not None:
        return item.module.__name__
    return None


def _start_order(items: list[pytest.Item]) -> dict[str, int]:
    """Where each test starts, by what it waits for (lower first). pytest-xdist hands the tests out in this
    order (``--no-loadscope-reorder``), so the long, parallel parts begin at once and no worker sits on a
    study's file lock: 0 the first user of each shared study (it builds the study), 1 the cluster tests
    (their study waits on SLURM's status checks, which the other worker's work fills), 2 the other tests of a
    module-scoped study (each builds its own, in minutes), 3 the rest of the slow tests (many read a shared
    study, finished by then), 4 the quick tests, which fill the gaps at the end."""
    order: dict[str, int] = {}
    builders: set[str] = set()
    for item in items:
        names = getattr(item, "fixturenames", ())
        shared = [name for name in SHARED_STUDIES if name in names]
        if item.get_closest_marker("slow") is None:
            order[item.nodeid] = 4
        elif any(name not in builders for name in shared):
            builders.update(shared)
            order[item.nodeid] = 0
        elif item.get_closest_marker("slurm") is not None and _uses_module_fixture(item):
            order[item.nodeid] = 1
        elif _uses_module_fixture(item) and not shared:
            order[item.nodeid] = 2
        else:
            order[item.nodeid] = 3
    return order


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that run Snakemake or read a shared study are ``slow`` (``-m "not slow"`` is the inner loop), a
    module-scoped study's tests share one xdist group (``--dist loadgroup``), and the tests start in the order
    of :func:`_start_order` (the order of the rest is kept)."""
    for item in items:
        uses_a_study = any(name in getattr(item, "fixturenames", ()) for name in SHARED_STUDIES)
        if item.get_closest_marker("slow") is None and (_runs_snakemake(item) or uses_a_study):
            item.add_marker(pytest.mark.slow)
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    order = _start_order(items)
    items.sort(key=lambda item: order[item.nodeid])
