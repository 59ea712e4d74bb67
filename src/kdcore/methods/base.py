"""What every training method provides: its declarations, its loss, and the terms several methods share.

A method declares, as class attributes, everything the rest of the project needs to know about it:

* ``name`` (the module name), ``label`` (plain text, figures) and ``tex`` (LaTeX tables);
* ``needs_teacher`` (the engine runs the teacher and passes its logits) and ``needs_features`` (the engine
  also passes the stage outputs of student and teacher);
* ``hyperparameters``: an ordered tuple of :class:`HyperParameter` (name, short name for run folder names,
  type, range, default, labels). Run configs are checked against the JSON schema these declarations imply
  (:meth:`Method.params_schema`), with the same error messages as the rest of the config.

Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from torch import nn

from kdcore.errors import ConfigError, TrainingError
from kdcore.schema import check_finite, describe_error

HyperParameterType = Literal["number", "integer", "boolean"]


@dataclass(frozen=True)
class HyperParameter:
    """One hyper-parameter of a method.

    ``short`` names it in run folder names (``a0.5-T4``); ``label`` and ``tex`` are its plain and LaTeX
    column headings. The range is JSON-schema style: ``minimum``/``maximum`` inclusive,
    ``exclusive_minimum`` exclusive.
    """

    name: str
    short: str
    type: HyperParameterType
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    label: str = ""
    tex: str = ""
    description: str = ""

    def schema(self) -> dict[str, Any]:
        """The JSON schema of this hyper-parameter's value."""
        schema: dict[str, Any] = {"type": self.type, "default": self.default}
        if self.description:
            schema["description"] = self.description
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("exclusiveMinimum", self.exclusive_minimum),
        ):
            if value is not None:
                schema[key] = value
        return schema

    def coerce(self, value: Any) -> Any:
        """A valid value in its canonical Python type (whole numbers of integer keys as int, numbers as float)."""
        if self.type == "integer":
            return int(value)
        if self.type == "number":
            return float(value)
        return value


def logit_hyperparameters(temperature: float) -> tuple[HyperParameter, ...]:
    """The temperature and the logit-standardization switch that every logit-based method has."""
    return (
        HyperParameter(
            "temperature",
            "T",
            "number",
            temperature,
            exclusive_minimum=0,
            label="T",
            tex="$T$",
            description="softmax temperature",
        ),
        HyperParameter(
            "standardize",
            "z",
            "boolean",
            False,
            label="z-score",
            tex="z-score",
            description="z-score each sample's logits before the temperature softmax (Sun et al., CVPR 2024)",
        ),
    )


#: The cross-entropy weight of methods whose loss is ``ce_weight * CE + KD terms`` (DKD, DIST).
CE_WEIGHT = HyperParameter(
    "ce_weight",
    "ce",
    "number",
    1.0,
    minimum=0,
    label="CE weight",
    tex=r"$\lambda_{\mathrm{CE}}$",
    description="weight of the cross-entropy term",
)


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


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored in float32: (z - mean) / (std + eps), with the sample (n - 1) standard deviation.

    The pre-process of logit standardization (Sun et al., CVPR 2024), applied before dividing by the
    temperature; the authors' code uses the same sample standard deviation and eps = 1e-7.
    """
    logits = logits.float()
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + eps)


def prepared_logits(logits: torch.Tensor, standardize: bool) -> torch.Tensor:
    """Logits in float32, z-scored per sample when ``standardize``."""
    return standardize_logits(logits) if standardize else logits.float()


class Method:
    """A training method. Subclasses set the class attributes and implement ``loss``."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    tex: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False
    needs_features: ClassVar[bool] = False
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = ()
    #: name -> default of every hyper-parameter, derived from ``hyperparameters``
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = [hp.name for hp in cls.hyperparameters]
        shorts = [hp.short for hp in cls.hyperparameters]
        for what, values in (("name", names), ("short name", shorts)):
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ConfigError(f"method {cls.__name__}: duplicate hyper-parameter {what} {duplicates[0]!r}")
        cls.defaults = {hp.name: hp.default for hp in cls.hyperparameters}

    def __init__(self, params: Mapping[str, Any]):
        self.params = self.validate_params(params)
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Tell the method which epoch (0-based) the following batches belong to."""
        self.epoch = int(epoch)

    def current_epoch(self) -> int:
        """The epoch set by :meth:`set_epoch`; an error if the engine never set one."""
        if self.epoch is None:
            raise TrainingError(f"method '{self.name}' depends on the epoch, but set_epoch was never called")
        return self.epoch

    @classmethod
    def params_schema(cls) -> dict[str, Any]:
        """The JSON schema of this method's hyper-parameters (without ``name``)."""
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {hp.name: hp.schema() for hp in cls.hyperparameters},
        }

    @classmethod
    def validate_params(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and check values; unknown keys and bad values are errors naming ``method.<key>``."""
        unknown = sorted(set(raw) - set(cls.defaults))
        if unknown:
            allowed = ", ".join(["name", *sorted(cls.defaults)])
            raise ConfigError(f"unknown config key 'method.{unknown[0]}' for method '{cls.name}' (allowed: {allowed})")
        check_finite(dict(raw), "method")
        params = {**copy.deepcopy(dict(cls.defaults)), **raw}
        schema = {"type": "object", "properties": {"method": cls.params_schema()}}
        error = best_match(Draft202012Validator(schema).iter_errors({"method": params}))
        if error is not None:
            raise ConfigError(describe_error(error))
        params = {hp.name: hp.coerce(params[hp.name]) for hp in cls.hyperparameters}
        return cls.check_params(params)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Rules across hyper-parameters that a per-key range cannot express (none by default)."""
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
