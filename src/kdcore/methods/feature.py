"""Feature-KD: 1x1 projections of the student's stage outputs onto the teacher's channels.

L_kd = mean over matched stages of MSE(proj(s_l), t_l)
       + beta * mean over matched stages of (1 - cos(GAP(proj(s_l)), GAP(t_l))).

Works for any teacher/student pair whose models follow the feature contract of kdcore.models.base:

* channels: the 1x1 projection maps the student's channels to the teacher's;
* spatial size: where the maps differ, the larger one is adaptive-average-pooled to the smaller;
* stage count: the deepest stages are matched, i.e. with n_s student and n_t teacher stages the last
  k = min(n_s, n_t) of each are paired in order (:func:`matched_stages`); shallower extra stages are unused.
  E.g. ResNet-50 (4 stages) -> resnet20 (3 stages): teacher layer2..4 with student layer1..3.
  With equal counts every stage is matched, as before.

With ``normalize`` both maps are divided by the teacher map's standard deviation before the MSE.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import ConfigError
from kdcore.methods.base import ForwardOutputs, HyperParameter, Method, cross_entropy


def matched_stages(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student stage, teacher stage) index pairs: the last min(n_student, n_teacher) stages of each, in order."""
    if n_student < 1 or n_teacher < 1:
        raise ConfigError(
            f"feature-KD needs at least one stage on each side ({n_student} student, {n_teacher} teacher)"
        )
    k = min(n_student, n_teacher)
    return [(n_student - k + i, n_teacher - k + i) for i in range(k)]


class FeatureProjections(nn.Module):
    """One bias-free 1x1 convolution per matched stage, student channels -> teacher channels, Xavier-uniform.

    ``forward`` projects the matched student stages; :meth:`teacher_stages` picks the teacher stages they
    are compared with (see :func:`matched_stages`).
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int], generator: torch.Generator):
        super().__init__()
        self.pairs = matched_stages(len(student_channels), len(teacher_channels))
        self.n_student, self.n_teacher = len(student_channels), len(teacher_channels)
        self.projections = nn.ModuleList(
            nn.Conv2d(student_channels[s], teacher_channels[t], kernel_size=1, bias=False) for s, t in self.pairs
        )
        for conv in self.projections:
            nn.init.xavier_uniform_(conv.weight, generator=generator)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        _check_stage_count("student", features, self.n_student)
        return [proj(features[s]) for proj, (s, _t) in zip(self.projections, self.pairs, strict=True)]

    def teacher_stages(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The teacher's stage outputs that the projected student stages are compared with, in order."""
        _check_stage_count("teacher", features, self.n_teacher)
        return [features[t] for _s, t in self.pairs]


def _check_stage_count(role: str, features: list[torch.Tensor], expected: int) -> None:
    if len(features) != expected:
        raise ValueError(f"feature-KD: the {role} returned {len(features)} stage outputs, expected {expected}")


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two feature maps to the spatial size of the smaller."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


def feature_kd_loss(
    projected: list[torch.Tensor], teacher: list[torch.Tensor], beta: float, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_kd, mean MSE, mean (1 - cosine)) over the stages, in float32."""
    mse_terms, cos_terms = [], []
    for s, t in zip(projected, teacher, strict=True):
        s, t = match_spatial(s.float(), t.float())
        if normalize:
            scale = t.std().clamp_min(1e-6)
            s, t = s / scale, t / scale
        mse_terms.append(F.mse_loss(s, t))
        cosine = F.cosine_similarity(s.mean(dim=(2, 3)), t.mean(dim=(2, 3)), dim=1)
        cos_terms.append((1.0 - cosine).mean())
    mse = torch.stack(mse_terms).mean()
    cos = torch.stack(cos_terms).mean()
    return mse + beta * cos, mse, cos


class FeatureKD(Method):
    name = "feature"
    label = "Feature-KD"
    tex = "Feature-KD"
    needs_teacher = True
    needs_features = True
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
        HyperParameter(
            "beta",
            "b",
            "number",
            0.5,
            minimum=0,
            label="beta",
            tex=r"$\beta$",
            description="weight of the (1 - cosine) term relative to the MSE term",
        ),
        HyperParameter(
            "normalize",
            "normalize",
            "boolean",
            False,
            label="normalize",
            tex="normalize",
            description="divide both maps by the teacher map's standard deviation before the MSE",
        ),
    )

    def build_trainable(
        self, student: nn.Module, teacher: nn.Module | None, generator: torch.Generator
    ) -> nn.Module | None:
        assert teacher is not None
        return FeatureProjections(list(student.feature_channels), list(teacher.feature_channels), generator)

    def loss(
        self, outputs: ForwardOutputs, trainable: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert trainable is not None and outputs.student_features is not None and outputs.teacher_features is not None
        alpha = self.params["alpha"]
        ce = cross_entropy(outputs.student_logits, outputs.targets)
        assert isinstance(trainable, FeatureProjections)
        kd, mse, cos = feature_kd_loss(
            trainable(outputs.student_features),
            trainable.teacher_stages(outputs.teacher_features),
            self.params["beta"],
            self.params["normalize"],
        )
        return alpha * kd + (1.0 - alpha) * ce, {"ce": ce, "kd": kd, "mse": mse, "cos": cos}


METHOD = FeatureKD
