"""Shared pytest fixtures: a tiny synthetic prepared dataset (never the real CIFAR-10 files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdcore.data import prepare_dataset

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
