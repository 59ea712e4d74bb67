"""Baseline: the student trained with cross-entropy alone."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.methods.base import ForwardOutputs, Method, cross_entropy


class Baseline(Method):
    name = "baseline"
    label = "Baseline (CE)"
    tex = "Baseline"

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        return ce, {"ce": ce, "kd": torch.zeros_like(ce)}


METHOD = Baseline
