"""DKD, Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

The KD loss is split into a target-class and a non-target-class term, at temperature T:

* TCKD = T^2 * KL(b_t || b_s), with b = (p_target, 1 - p_target) the binary split of softmax(z / T);
* NCKD = T^2 * KL(q_t || q_s), with q = softmax over the non-target classes only of z / T;

both averaged over the batch. Loss = ce_weight * CE + w(epoch) * (alpha * TCKD + beta * NCKD), where the
warm-up factor w(e) = min((e + 1) / warmup, 1) rises linearly over the first ``warmup`` epochs (``e`` is the
0-based epoch; the authors' trainer counts epochs from 1 and uses min(epoch / warmup, 1), the same
schedule). The engine passes the epoch through :meth:`Method.set_epoch`.

Defaults are the authors' CIFAR-100 settings (mdistiller, ``mdistiller/engine/cfg.py`` and
``configs/cifar100/dkd/*.yaml``): CE weight 1.0, alpha 1.0, beta 8.0, T 4, warm-up 20 epochs. Beta is set
per teacher there: 8.0 for resnet32x4 -> resnet8x4 (the default), 2.0 for resnet56 -> resnet20 and
resnet110 -> resnet32, 6.0 for wrn_40_2 -> wrn_16_2 and wrn_40_2 -> wrn_40_1. With ``standardize``
(logit standardization, Sun et al., CVPR 2024) the authors' README runs DKD at base temperature 2 with
``--kd-weight 9`` (resnet32x4 -> resnet8x4).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.methods.base import (
    CE_WEIGHT,
    ForwardOutputs,
    HyperParameter,
    Method,
    cross_entropy,
    logit_hyperparameters,
    prepared_logits,
)


def _binary_log_probs(scaled: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log (p_target, 1 - p_target) of softmax(scaled), per row, computed stably with logsumexp."""
    target_mask = F.one_hot(targets, scaled.shape[1]).bool()
    log_total = torch.logsumexp(scaled, dim=1)
    log_target = scaled.gather(1, targets[:, None]).squeeze(1) - log_total
    log_others = torch.logsumexp(scaled.masked_fill(target_mask, float("-inf")), dim=1) - log_total
    return torch.stack([log_target, log_others], dim=1)


def _non_target(scaled: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The (batch, classes - 1) matrix of each row without its target column."""
    keep = ~F.one_hot(targets, scaled.shape[1]).bool()
    return scaled[keep].view(scaled.shape[0], scaled.shape[1] - 1)


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    standardize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) in float32, each T^2 * batch-mean KL(teacher || student)."""
    s = prepared_logits(student_logits, standardize) / temperature
    t = prepared_logits(teacher_logits, standardize) / temperature
    tckd = F.kl_div(
        _binary_log_probs(s, targets), _binary_log_probs(t, targets), reduction="batchmean", log_target=True
    )
    log_q_s = F.log_softmax(_non_target(s, targets), dim=1)
    log_q_t = F.log_softmax(_non_target(t, targets), dim=1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return tckd * temperature**2, nckd * temperature**2


def warmup_factor(epoch: int, warmup: int) -> float:
    """min((epoch + 1) / warmup, 1) for a 0-based epoch; 1 without warm-up."""
    return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)


class DKD(Method):
    name = "dkd"
    label = "DKD"
    tex = "DKD"
    needs_teacher = True
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = (
        HyperParameter(
            "alpha", "a", "number", 1.0, minimum=0, label="alpha", tex=r"$\alpha$", description="weight of TCKD"
        ),
        HyperParameter(
            "beta", "b", "number", 8.0, minimum=0, label="beta", tex=r"$\beta$", description="weight of NCKD"
        ),
        *logit_hyperparameters(temperature=4.0),
        HyperParameter(
            "warmup",
            "w",
            "integer",
            20,
            minimum=0,
            label="warm-up",
            tex="warm-up",
            description="epochs over which the KD weight rises linearly to 1 (0: none)",
        ),
        CE_WEIGHT,
    )

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert outputs.teacher_logits is not None
        p = self.params
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        tckd, nckd = dkd_terms(
            outputs.student_logits, outputs.teacher_logits, outputs.targets, p["temperature"], p["standardize"]
        )
        factor = warmup_factor(self.current_epoch(), p["warmup"])
        kd = factor * (p["alpha"] * tckd + p["beta"] * nckd)
        parts = {"ce": ce, "kd": kd, "tckd": tckd, "nckd": nckd, "warmup": torch.full_like(ce, factor)}
        return p["ce_weight"] * ce + kd, parts


METHOD = DKD
