"""Logit-KD (Hinton et al., 2015): T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean, in float32.

Loss = alpha * L_kd + (1 - alpha) * L_ce. The paper's defaults: alpha 0.5, T 4.

``standardize`` z-scores each sample's logits before the temperature softmax (logit standardization,
Sun et al., CVPR 2024). The authors' CIFAR-100 setting for KD with standardization is a base temperature
of 2 (3 for some pairs) with KD weight 9 and CE weight 0.1 (their README and mdistiller's KD default);
here that is ``temperature: 2, standardize: true`` with alpha 9 / 9.1 ~ 0.99 (the same ratio of the two
terms, the total scaled by 1 / 9.1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.methods.base import (
    ForwardOutputs,
    HyperParameter,
    Method,
    cross_entropy,
    logit_hyperparameters,
    prepared_logits,
)


def logit_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, standardize: bool = False
) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch.

    Logits are cast to float32 (and z-scored per sample when ``standardize``) before dividing by T, so the
    loss is exact under bf16 autocast.
    """
    log_p_student = F.log_softmax(prepared_logits(student_logits, standardize) / temperature, dim=1)
    log_p_teacher = F.log_softmax(prepared_logits(teacher_logits, standardize) / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class LogitKD(Method):
    name = "logit"
    label = "Logit-KD"
    tex = "Logit-KD"
    needs_teacher = True
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = (
        HyperParameter(
            "alpha",
            "a",
            "number",
            0.5,
            minimum=0,
            maximum=1,
            label="alpha",
            tex=r"$\alpha$",
            description="weight of the KD term; the CE term gets 1 - alpha",
        ),
        *logit_hyperparameters(temperature=4.0),
    )

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert outputs.teacher_logits is not None
        alpha = self.params["alpha"]
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        kd = logit_kd_loss(
            outputs.student_logits, outputs.teacher_logits, self.params["temperature"], self.params["standardize"]
        )
        return alpha * kd + (1.0 - alpha) * ce, {"ce": ce, "kd": kd}


METHOD = LogitKD
