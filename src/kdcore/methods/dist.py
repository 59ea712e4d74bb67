"""DIST, distillation from a stronger teacher (Huang et al., NeurIPS 2022).

With y = softmax(z / T) of student (s) and teacher (t), rows = samples, columns = classes:

* inter-class loss = T^2 * (1 - mean over samples of Pearson(y_s[i, :], y_t[i, :]));
* intra-class loss = T^2 * (1 - mean over classes of Pearson(y_s[:, c], y_t[:, c])).

Loss = ce_weight * CE + beta * inter + gamma * intra, in float32. The Pearson correlation is the cosine
similarity of the mean-centred vectors, with eps = 1e-8 added to the product of norms as in the authors'
code (a constant column then has correlation 0 instead of NaN).

Defaults are the authors' CIFAR-100 settings (``configs/strategies/distill/dist_cifar.yaml`` of their
classification code, hunto/image_classification_sota): loss ``dist_t4`` = beta 1, gamma 1, T 4 inside
the loss, KD weight 2 and CE weight 1 outside, i.e. beta 2, gamma 2, T 4, CE weight 1 here.
``standardize`` z-scores each sample's logits first (logit standardization, Sun et al., CVPR 2024).
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

PEARSON_EPS = 1e-8


def mean_row_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the Pearson correlation of a[i, :] with b[i, :]."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)).mean()


def dist_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, standardize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter-class, intra-class) losses in float32, each scaled by T^2."""
    y_s = F.softmax(prepared_logits(student_logits, standardize) / temperature, dim=1)
    y_t = F.softmax(prepared_logits(teacher_logits, standardize) / temperature, dim=1)
    inter = 1.0 - mean_row_correlation(y_s, y_t)
    intra = 1.0 - mean_row_correlation(y_s.T, y_t.T)
    return inter * temperature**2, intra * temperature**2


class DIST(Method):
    name = "dist"
    label = "DIST"
    tex = "DIST"
    needs_teacher = True
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = (
        HyperParameter(
            "beta",
            "b",
            "number",
            2.0,
            minimum=0,
            label="beta",
            tex=r"$\beta$",
            description="weight of the inter-class loss",
        ),
        HyperParameter(
            "gamma",
            "g",
            "number",
            2.0,
            minimum=0,
            label="gamma",
            tex=r"$\gamma$",
            description="weight of the intra-class loss",
        ),
        *logit_hyperparameters(temperature=4.0),
        CE_WEIGHT,
    )

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert outputs.teacher_logits is not None
        p = self.params
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        inter, intra = dist_terms(outputs.student_logits, outputs.teacher_logits, p["temperature"], p["standardize"])
        kd = p["beta"] * inter + p["gamma"] * intra
        return p["ce_weight"] * ce + kd, {"ce": ce, "kd": kd, "inter": inter, "intra": intra}


METHOD = DIST
