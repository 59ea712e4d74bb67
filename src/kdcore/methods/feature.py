"""Feature-KD: 1x1 projections of the student's layer1..4 outputs onto the teacher's channels.

L_kd = mean over layers of MSE(proj(s_l), t_l) + beta * mean over layers of (1 - cos(GAP(proj(s_l)), GAP(t_l))).
Spatial sizes that differ are matched by adaptive average pooling of the larger map to the smaller.
With ``normalize`` both maps are divided by the teacher map's standard deviation before the MSE.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import ConfigError
from kdcore.methods.base import ForwardOutputs, Method, check_unit_interval, cross_entropy


class FeatureProjections(nn.Module):
    """One bias-free 1x1 convolution per stage, student channels -> teacher channels, Xavier-uniform."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], generator: torch.Generator):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ConfigError(
                "feature-KD needs as many student stages as teacher stages "
                f"({len(student_channels)} vs {len(teacher_channels)})"
            )
        self.projections = nn.ModuleList(
            nn.Conv2d(s, t, kernel_size=1, bias=False) for s, t in zip(student_channels, teacher_channels, strict=False)
        )
        for conv in self.projections:
            nn.init.xavier_uniform_(conv.weight, generator=generator)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(f) for proj, f in zip(self.projections, features, strict=False)]


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
    for s, t in zip(projected, teacher, strict=False):
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
    needs_teacher = True
    needs_features = True
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.5, "beta": 0.5, "normalize": False}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        params["alpha"] = check_unit_interval("method.alpha", params["alpha"])
        beta = params["beta"]
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ConfigError(f"config key 'method.beta': {beta!r} must be a number >= 0")
        params["beta"] = float(beta)
        if not isinstance(params["normalize"], bool):
            raise ConfigError(f"config key 'method.normalize': expected true or false, got {params['normalize']!r}")
        return params

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
        kd, mse, cos = feature_kd_loss(
            trainable(outputs.student_features), outputs.teacher_features, self.params["beta"], self.params["normalize"]
        )
        return alpha * kd + (1.0 - alpha) * ce, {"ce": ce, "kd": kd, "mse": mse, "cos": cos}


METHOD = FeatureKD
