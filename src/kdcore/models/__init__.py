"""Registry of architectures, looked up by name, and model-level measurements (parameters, FLOPs).

Each architecture family is one module ``kdcore.models.<family>`` that defines ``FAMILY``, a
:class:`kdcore.models.base.Family` listing its architecture names and its builder. Family modules are
found with ``pkgutil`` and imported by name, never statically, so that the code a run depends on is this
registry plus the one family module of its architecture (:func:`architecture_module`, for the
workflow's code digests). A new family is one new file.

Families: ``resnet`` (torchvision ResNet-18/34/50/101, width and stem options), ``cifar_resnet``
(resnet8..110, resnet8x4, resnet32x4) and ``wrn`` (wrn_16_1/16_2/40_1/40_2).

Search path: family modules are found on this package's ``__path__``. A directory can be added with
:func:`add_model_directory` (in-process) or listed in the environment variable ``KDCORE_MODEL_PATH``
(``os.pathsep``-separated, read at import, so it reaches subprocesses such as workflow jobs), as for methods
(kdcore.methods). A family outside src/ enters its runs' code digests by its file (kdcore.provenance).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdcore.errors import ConfigError
from kdcore.models.base import Family, check_num_classes

#: Modules of this package that are not families.
_NOT_FAMILIES = {"base"}
MODEL_PATH_VARIABLE = "KDCORE_MODEL_PATH"


def add_model_directory(directory: str | os.PathLike[str]) -> None:
    """Search ``directory`` for family modules too (each ``<family>.py`` defining ``FAMILY``)."""
    path = str(Path(directory).resolve())
    if not Path(path).is_dir():
        raise ConfigError(f"model directory {path} does not exist")
    if path not in __path__:
        __path__.append(path)
        _family_of_arch.cache_clear()


def available_families() -> list[str]:
    """Names of every family module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_FAMILIES)


def _load_family(name: str) -> Family:
    family = getattr(importlib.import_module(f"kdcore.models.{name}"), "FAMILY", None)
    if not isinstance(family, Family):
        raise ConfigError(f"model family module kdcore.models.{name} defines no FAMILY")
    return family


@cache
def _family_of_arch() -> dict[str, str]:
    """Architecture name -> family module name, over every family; a name in two families is an error."""
    owner: dict[str, str] = {}
    for module in available_families():
        for arch in _load_family(module).architectures:
            if arch in owner:
                raise ConfigError(f"architecture {arch!r} is defined by two families: {owner[arch]} and {module}")
            owner[arch] = module
    return owner


for _directory in filter(None, os.environ.get(MODEL_PATH_VARIABLE, "").split(os.pathsep)):
    add_model_directory(_directory)


def available_architectures() -> list[str]:
    """Every architecture name, family by family (in each family's own order)."""
    return list(_family_of_arch())


def architecture_module(arch: str) -> str:
    """The module that builds ``arch`` (e.g. ``kdcore.models.wrn``); an unknown name is a ConfigError."""
    owner = _family_of_arch()
    if arch not in owner:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; allowed: {', '.join(owner)}")
    return f"kdcore.models.{owner[arch]}"


def get_family(arch: str) -> Family:
    """The family of ``arch``; an unknown name is a ConfigError listing the known ones."""
    return _load_family(architecture_module(arch).rpartition(".")[2])


def build_model(arch: str, width: int | None = None, stem: str | None = None, num_classes: int = 10) -> nn.Module:
    """Build a freshly initialised model (uses the global torch RNG for the init).

    ``width`` and ``stem`` default to the family's own (ResNet-18..101: 64 and ``"cifar"``); a family
    without a width option accepts only None (or 64, the run config's default). Bad values are a
    ConfigError naming the field, the value and the allowed ones.
    """
    if not isinstance(arch, str):
        raise ConfigError(f"model.arch: expected an architecture name, got {arch!r}")
    family = get_family(arch)
    resolved_stem = family.resolve_stem(arch, stem)
    resolved_width = family.resolve_width(arch, width)
    return family.build(arch, resolved_width, resolved_stem, check_num_classes(num_classes))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops_per_image(model: nn.Module, image_size: int = 32) -> int:
    """FLOPs of one forward pass of one ``image_size`` x ``image_size`` RGB image, in eval mode.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, a
    multiply-add counted as 2 FLOPs; BatchNorm, ReLU, pooling and additions are not counted.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    image = torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_profile(model: nn.Module, image_size: int = 32) -> dict[str, Any]:
    """``{"params": int, "flops_per_image": int}`` of a built model (see count_flops_per_image)."""
    return {"params": count_parameters(model), "flops_per_image": count_flops_per_image(model, image_size)}


def __getattr__(name: str) -> Any:
    """Names kept from the single-module ``kdcore.models``: ``ARCHITECTURES`` (every name), ``KDResNet``."""
    if name == "ARCHITECTURES":
        return tuple(available_architectures())
    if name in ("KDResNet", "ArchSpec", "STEMS"):
        return getattr(importlib.import_module("kdcore.models.resnet"), name)
    raise AttributeError(f"module 'kdcore.models' has no attribute {name!r}")
