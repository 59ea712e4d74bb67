"""Model checkpoints: a state dict plus the architecture it belongs to.

Checkpoints are data, never code: they are always read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.atomic import atomic_torch_save
from kdcore.errors import CheckpointError

CHECKPOINT_FORMAT = "kdcore-checkpoint/1"
ARCH_KEYS = ("arch", "width", "stem", "num_classes")


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], spec: dict[str, Any], **extra: Any) -> Path:
    """Write a model state dict with its architecture ``spec`` (arch, width, stem, num_classes)."""
    payload = {"format": CHECKPOINT_FORMAT, **{k: spec[k] for k in ARCH_KEYS}, **extra}
    payload["state_dict"] = {k: v.detach().cpu() for k, v in state_dict.items()}
    return atomic_torch_save(path, payload)


def save_model_checkpoint(path: str | Path, model: nn.Module, spec: dict[str, Any], **extra: Any) -> Path:
    """Write ``model``'s weights with its architecture ``spec`` (arch, width, stem, num_classes)."""
    return save_weights(path, model.state_dict(), spec, **extra)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read any kdcore checkpoint file; a missing or unreadable one is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path} is not a kdcore checkpoint")
    return payload


def _shape(value: Any) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str:
    """One line describing how ``found`` differs from ``expected`` in names and shapes ('' if it fits)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and _shape(found[k]) != _shape(expected[k])]
    parts = []
    if wrong:
        first = wrong[0]
        parts.append(
            f"{len(wrong)} tensor(s) of the wrong shape (first: {first} is {_shape(found[first])} in the file, "
            f"{_shape(expected[first])} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return "; ".join(parts)


def load_model(path: str | Path, spec: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights (on the CPU).

    When ``spec`` is given, the checkpoint's architecture must match it exactly; otherwise this is a
    CheckpointError naming the path and both architectures. Returns (model, checkpoint metadata).
    """
    from kdcore.models import build_model

    payload = read_checkpoint(path)
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a {payload['format']} file, not a model checkpoint ({CHECKPOINT_FORMAT})")
    found = {k: payload.get(k) for k in ARCH_KEYS}
    if spec is not None:
        wanted = {k: spec[k] for k in ARCH_KEYS}
        if found != wanted:
            raise CheckpointError(f"checkpoint {path} holds {found}, but the config asks for {wanted}")
    model = build_model(found["arch"], width=found["width"], stem=found["stem"], num_classes=found["num_classes"])
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"checkpoint {path} holds no state_dict")
    problem = state_dict_mismatch(model.state_dict(), state_dict)
    if problem:
        raise CheckpointError(f"checkpoint {path} says it holds {found}, but its weights do not fit: {problem}")
    model.load_state_dict(state_dict)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
