"""What every architecture family provides: its names, a builder and the shape of its stage features.

A family is one module ``kdcore.models.<family>`` that defines ``FAMILY``, a :class:`Family`. Its models

* return logits from ``model(x)`` and ``(logits, [f_1, ..., f_n])`` from ``model(x, return_features=True)``,
  the outputs of their n stages, computed in ``forward`` (no hooks);
* carry ``feature_contract`` (a :class:`FeatureContract`: channels and downsampling factor of each stage),
  ``feature_channels`` (the channels as a list) and ``arch``, ``width``, ``stem``, ``num_classes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdcore.errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """One stage output: its channels and its stride (input side length / feature map side length)."""

    channels: int
    stride: int


@dataclass(frozen=True)
class FeatureContract:
    """The stage outputs a model returns with ``return_features=True``, shallowest first."""

    stages: tuple[StageSpec, ...]

    @property
    def channels(self) -> list[int]:
        return [s.channels for s in self.stages]

    def shapes(self, image_size: int = 32) -> list[tuple[int, int, int]]:
        """``(channels, height, width)`` of each stage output for a square ``image_size`` input."""
        return [(s.channels, -(-image_size // s.stride), -(-image_size // s.stride)) for s in self.stages]


#: ``build(arch, width, stem, num_classes)`` with arguments already checked (width None if the family has none).
Builder = Callable[[str, "int | None", str, int], nn.Module]


@dataclass(frozen=True)
class Family:
    """An architecture family: its names, its options and its builder.

    ``default_width`` is None for families without a width option; ``stems`` lists the stems it offers,
    the first being the default.
    """

    name: str
    architectures: tuple[str, ...]
    build: Builder
    stems: tuple[str, ...] = ("cifar",)
    default_width: int | None = None

    def resolve_width(self, arch: str, width: object) -> int | None:
        """The width to build with; ConfigError for a width a family without widths cannot honour.

        For families without a width option, 64 (the run config's default, torchvision's base width) is
        read as "unset" so that configs written before the family existed keep validating.
        """
        if self.default_width is None:
            if width is None or (width == 64 and isinstance(width, int) and not isinstance(width, bool)):
                return None
            raise ConfigError(
                f"model.width: {arch} has no width option (its channel widths are fixed), got {width!r}; "
                "leave width unset"
            )
        if width is None:
            return self.default_width
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ConfigError(
                f"model.width: must be a positive integer ({self.default_width} = the standard {arch}), got {width!r}"
            )
        return width

    def resolve_stem(self, arch: str, stem: object) -> str:
        if stem is None:
            return self.stems[0]
        if stem not in self.stems:
            raise ConfigError(f"model.stem: unknown stem {stem!r} for {arch}; allowed: {', '.join(self.stems)}")
        return str(stem)


def check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ConfigError(f"model.num_classes: must be a positive integer, got {num_classes!r}")
    return num_classes
