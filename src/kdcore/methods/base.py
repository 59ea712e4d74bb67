"""What every training method provides, and the cross-entropy term they share.

Loss = alpha * L_kd + (1 - alpha) * L_ce. Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import ConfigError


@dataclass(frozen=True)
class ForwardOutputs:
    """What the engine hands a method for one batch."""

    targets: torch.Tensor
    student_logits: torch.Tensor
    student_features: list[torch.Tensor] | None = None
    teacher_logits: torch.Tensor | None = None
    teacher_features: list[torch.Tensor] | None = None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float32."""
    return F.cross_entropy(logits.float(), targets)


def check_unit_interval(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"config key '{key}': {value!r} is outside [0, 1]")
    return float(value)


def check_positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) > 0.0:
        raise ConfigError(f"config key '{key}': {value!r} must be a number > 0")
    return float(value)


class Method:
    """A training method. Subclasses set the class attributes and implement ``loss``."""

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, params: Mapping[str, Any]):
        self.params = self.validate_params(params)

    @classmethod
    def validate_params(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and check values; unknown keys are errors naming ``method.<key>``."""
        unknown = sorted(set(raw) - set(cls.defaults))
        if unknown:
            allowed = ", ".join(["name", *sorted(cls.defaults)])
            raise ConfigError(f"unknown config key 'method.{unknown[0]}' for method '{cls.name}' (allowed: {allowed})")
        params = {**cls.defaults, **raw}
        return cls.check_params(params)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def build_trainable(
        self, student: nn.Module, teacher: nn.Module | None, generator: torch.Generator
    ) -> nn.Module | None:
        """Extra trainable modules (optimised and clipped with the student), or None."""
        return None

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its named parts (at least ``ce`` and ``kd``), all float32 scalars."""
        raise NotImplementedError
