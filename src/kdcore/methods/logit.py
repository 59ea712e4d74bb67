"""Logit-KD (Hinton et al.): T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean, in float32."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.methods.base import ForwardOutputs, Method, check_positive, check_unit_interval, cross_entropy


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch.

    Logits are cast to float32 before dividing by T, so the loss is exact under bf16 autocast.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class LogitKD(Method):
    name = "logit"
    needs_teacher = True
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.5, "temperature": 4.0}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        params["alpha"] = check_unit_interval("method.alpha", params["alpha"])
        params["temperature"] = check_positive("method.temperature", params["temperature"])
        return params

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert outputs.teacher_logits is not None
        alpha = self.params["alpha"]
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        kd = logit_kd_loss(outputs.student_logits, outputs.teacher_logits, self.params["temperature"])
        return alpha * kd + (1.0 - alpha) * ce, {"ce": ce, "kd": kd}


METHOD = LogitKD
