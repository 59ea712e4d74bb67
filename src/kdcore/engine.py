"""The training engine: one run from a resolved config to metrics.json and checkpoints.

Design points:
- The prepared dataset sits on the training device as uint8; augmentation is batched tensor work there.
- Random streams (student init, projection init, data order, augmentation) come from the run seed
  through kdcore.seeds, one generator per stream and epoch, so runs are paired across methods and a
  resumed run replays exactly what an uninterrupted one would have done.
- No host synchronisation inside the step loop: sums, accuracies and gradient norms accumulate on the
  device and are read once per epoch.
- The method (baseline, logit, feature, ...) is looked up by name in kdcore.methods; this module never
  imports a method module directly.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.atomic import atomic_torch_save, atomic_write_json
from kdcore.augment import NORMALISATION, augment_batch, normalize_batch
from kdcore.checkpoint import load_model, read_checkpoint, save_model_checkpoint, save_weights, state_dict_mismatch
from kdcore.config import resolve_config, training_digest
from kdcore.data import PreparedData, load_dataset
from kdcore.devices import Placement, autocast_context, configure_backend, make_placement
from kdcore.errors import CheckpointError, ConfigError, DataError, TrainingError
from kdcore.methods import get_method
from kdcore.methods.base import ForwardOutputs, Method
from kdcore.models import build_model, model_profile
from kdcore.predictions import write_test_logits
from kdcore.provenance import environment_info, file_sha256, run_code_digest
from kdcore.runfolder import (
    BEST_FILE,
    FINAL_FILE,
    METRICS_FILE,
    RESUME_FILE,
    TEST_LOGITS_FILE,
    claim_run_folder,
    clear_run_files,
    lock_run_folder,
    move_aside,
)
from kdcore.seeds import derive_seed, generator
from kdcore.teacher_cache import TeacherCache, cached_teacher_outputs, expected_header, load_teacher_cache

__all__ = ["RunState", "make_step_fn", "predict_logits", "train_one_epoch", "train_run"]

log = logging.getLogger("kdcore.train")

#: (mean, std) per channel of a dataset (``PreparedData.normalisation``)
Normalisation = tuple[tuple[float, ...], tuple[float, ...]]

METRICS_SCHEMA_VERSION = 1
RESUME_FORMAT = "kdcore-resume/3"
#: The best weights that last.pt refers to: ``last-best-e<epoch>.pt``, a hard link of best.pt as it was at the
#: checkpoint (no second copy on disk), which survives the deletion of best.pt by a scheduler after a failure.
RESUME_BEST_PREFIX = "last-best-e"
#: Seconds between checkpoints (last.pt) on a CUDA device when ``KDCORE_CHECKPOINT_INTERVAL_S`` is not set;
#: on the CPU, where an epoch takes far longer than writing a checkpoint, every epoch is checkpointed.
CUDA_CHECKPOINT_INTERVAL_S = 300.0
CHECKPOINT_INTERVAL_ENV = "KDCORE_CHECKPOINT_INTERVAL_S"


# ----------------------------------------------------------------------------- models
def build_student(model_spec: dict[str, Any], seed: int) -> nn.Module:
    """The student, initialised from its own random stream (independent of the method)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "student_init"))
        return build_model(model_spec["arch"], model_spec["width"], model_spec["stem"], model_spec["num_classes"])


def load_teacher(teacher_spec: dict[str, Any]) -> nn.Module:
    """The frozen teacher: weights from its checkpoint, eval mode, no gradients."""
    teacher, _ = load_model(teacher_spec["checkpoint"], teacher_spec)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, placement: Placement, batch_size: int, normalisation: Normalisation
) -> torch.Tensor:
    """Float32 logits of ``model`` (in eval mode) for uint8 ``images`` on the device, normalised with the
    dataset's ``(mean, std)`` (``PreparedData.normalisation``)."""
    mean, std = normalisation
    was_training = model.training
    model.eval()
    outputs = []
    with torch.inference_mode(), autocast_context(placement.device, placement.dtype):
        for start in range(0, images.shape[0], batch_size):
            batch = normalize_batch(
                images[start : start + batch_size], memory_format=placement.memory_format, mean=mean, std=std
            )
            outputs.append(model(batch).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    placement: Placement,
    batch_size: int,
    normalisation: Normalisation,
) -> float:
    if images.shape[0] == 0:
        return float("nan")
    return top1(predict_logits(model, images, placement, batch_size, normalisation), labels)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` (first maximum of each row); NaN for no rows."""
    if labels.numel() == 0:
        return float("nan")
    return (logits.argmax(dim=1) == labels).float().mean().item()


# ----------------------------------------------------------------------------- training
@dataclass
class EpochAccumulator:
    """Per-epoch sums kept on the device; read once with ``summary``."""

    device: torch.device
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    maxima: dict[str, torch.Tensor] = field(default_factory=dict)
    first_bad_step: torch.Tensor | None = None
    step_counter: torch.Tensor | None = None  # the current step's index, counted on the device
    steps: int = 0

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        if name in self.sums:
            self.sums[name] += value
            torch.maximum(self.maxima[name], value, out=self.maxima[name])
        else:
            self.sums[name] = value.clone()
            self.maxima[name] = value.clone()

    def check_finite(self, loss: torch.Tensor) -> None:
        """Remember the index of the first step whose loss is not finite (device-side: no host copy per step)."""
        if self.first_bad_step is None or self.step_counter is None:
            self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
            self.step_counter = torch.zeros((), dtype=torch.int64, device=self.device)
        else:
            self.step_counter.add_(1)
        bad = ~torch.isfinite(loss.detach())
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), self.step_counter, self.first_bad_step)

    def summary(self) -> tuple[dict[str, float], dict[str, float], int]:
        names = list(self.sums)
        stacked = torch.stack([self.sums[n] for n in names] + [self.maxima[n] for n in names]).cpu().tolist()
        sums = dict(zip(names, stacked[: len(names)], strict=False))
        maxima = dict(zip(names, stacked[len(names) :], strict=False))
        bad = -1 if self.first_bad_step is None else int(self.first_bad_step.item())
        return sums, maxima, bad


def grad_norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def clip_gradients(
    student_params: list[nn.Parameter], extra_params: list[nn.Parameter], max_norm: float, scope: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip to ``max_norm`` and return the pre-clip (total, projection) gradient norms.

    ``scope='all'`` clips the union of student and extra (projection) parameters, which is correct;
    ``scope='student_only'`` reproduces the paper's v1 bug: the projections are left out of clipping.
    The returned total norm always covers the union, so both scopes report the same quantity.
    """
    student_norm = grad_norm(student_params)
    extra_norm = grad_norm(extra_params) if extra_params else torch.zeros_like(student_norm)
    total_norm = torch.linalg.vector_norm(torch.stack([student_norm, extra_norm.to(student_norm.device)]))
    if scope == "all":
        torch.nn.utils.clip_grads_with_norm_(student_params + extra_params, max_norm, total_norm)
    else:
        torch.nn.utils.clip_grads_with_norm_(student_params, max_norm, student_norm)
    return total_norm, extra_norm


def lr_at_epoch(epoch: int, train: dict[str, Any]) -> float:
    """The learning rate of epoch ``epoch`` (counted from 0) under ``train["schedule"]`` (default cosine).

    ``cosine``: annealing from lr to lr_min over the run's epochs. ``step``: lr times ``lr_gamma`` for each
    of ``lr_milestones`` reached (``lr * gamma ** #{m <= epoch}``; the CRD protocol decays x0.1 at 150/180/210).
    """
    schedule = train.get("schedule", "cosine")
    if schedule == "step":
        passed = bisect.bisect_right(sorted(train["lr_milestones"]), epoch)
        return train["lr"] * train["lr_gamma"] ** passed
    if schedule != "cosine":
        raise TrainingError(f"train.schedule: unknown schedule {schedule!r}; allowed: cosine, step")
    progress = epoch / train["epochs"]
    return train["lr_min"] + (train["lr"] - train["lr_min"]) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class RunState:
    student: nn.Module
    trainable: nn.Module | None
    optimizer: torch.optim.Optimizer
    history: list[dict[str, Any]]
    best_val_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # CPU copy of the best-val weights


@contextmanager
def cuda_sync_debug(device: torch.device, mode: str | None) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode(mode)`` inside the block on a CUDA device; nothing otherwise."""
    if mode is None or device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def train_one_epoch(
    epoch: int,
    state: RunState,
    step_fn: Any,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    cfg: dict[str, Any],
    placement: Placement,
    normalisation: Normalisation = NORMALISATION["cifar10"],
    sync_debug: str | None = None,
) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's history entry (without val acc).

    ``normalisation`` is the dataset's ``(mean, std)``: a run passes its artefact's; the CIFAR-10 default
    serves the throughput benchmarks, which time random images. ``sync_debug`` (``"warn"`` or ``"error"``)
    runs the step loop, not the epoch's one read of its sums, under ``torch.cuda.set_sync_debug_mode`` on
    a CUDA device (the bench and the tests check with it that no step waits for the GPU)."""
    train = cfg["train"]
    seed, batch_size = train["seed"], train["batch_size"]
    n = train_images.shape[0]
    order = torch.randperm(n, generator=generator(seed, "data_order", epoch)).to(placement.device)
    aug_gen = generator(seed, "augmentation", epoch, device=placement.device)
    lr = lr_at_epoch(epoch, train)
    for group in state.optimizer.param_groups:
        group["lr"] = lr

    state.student.train()
    acc = EpochAccumulator(placement.device)
    start = time.perf_counter()
    with cuda_sync_debug(placement.device, sync_debug):
        for first in range(0, n, batch_size):
            idx = order[first : first + batch_size]
            images, views = augment_batch(
                train_images[idx],
                aug_gen,
                memory_format=placement.memory_format,
                return_views=True,
                mean=normalisation[0],
                std=normalisation[1],
            )
            targets = train_labels[idx]
            loss, parts, correct, norms = step_fn(images, targets, idx, views)
            acc.check_finite(loss)
            acc.add("loss", loss * targets.shape[0])
            for name, value in parts.items():
                acc.add(f"loss_{name}", value * targets.shape[0])
            acc.add("correct", correct)
            acc.add("grad_norm", norms[0])
            acc.add("proj_grad_norm", norms[1])
            acc.steps += 1
    sums, maxima, bad_step = acc.summary()
    seconds = time.perf_counter() - start
    if bad_step >= 0:
        raise TrainingError(f"non-finite loss at epoch {epoch + 1}, step {bad_step + 1}: stopping the run")
    entry: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
    for name in sorted(k for k in sums if k.startswith("loss")):
        entry[name] = sums[name] / n
    entry["train_acc"] = sums["correct"] / n
    entry["grad_norm_mean"] = sums["grad_norm"] / acc.steps
    entry["grad_norm_max"] = maxima["grad_norm"]
    entry["proj_grad_norm_mean"] = sums["proj_grad_norm"] / acc.steps
    entry["proj_grad_norm_max"] = maxima["proj_grad_norm"]
    entry["seconds"] = seconds
    entry["images_per_s"] = n / seconds if seconds > 0 else float("nan")
    return entry


def make_step_fn(
    student: nn.Module,
    trainable: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    method: Method,
    teacher: nn.Module | None,
    cfg: dict[str, Any],
    placement: Placement,
    teacher_cache: TeacherCache | None = None,
):
    """The per-batch step: forward, loss, backward, clip, optimiser step. Returns device tensors only.

    ``student`` may be a torch.compile'd wrapper of the run's student; it shares its parameters. With a
    ``teacher_cache`` (logit-only methods) the teacher's logits are looked up by (image index, view)
    instead of computed.
    """
    student_params = [p for p in student.parameters() if p.requires_grad]
    extra_params = list(trainable.parameters()) if trainable is not None else []
    train = cfg["train"]
    need_features = method.needs_features
    if teacher_cache is not None and need_features:
        raise TrainingError(f"method '{method.name}' needs the teacher's features; a teacher cache holds logits only")

    def step(images: torch.Tensor, targets: torch.Tensor, image_indices=None, views=None):
        with autocast_context(placement.device, placement.dtype):
            teacher_logits = teacher_features = None
            if teacher_cache is not None:
                teacher_logits, teacher_features = cached_teacher_outputs(teacher_cache, image_indices, views)
            elif teacher is not None:
                with torch.no_grad():
                    if need_features:
                        teacher_logits, teacher_features = teacher(images, return_features=True)
                    else:
                        teacher_logits = teacher(images)
            if need_features:
                logits, features = student(images, return_features=True)
            else:
                logits, features = student(images), None
            outputs = ForwardOutputs(targets, logits, features, teacher_logits, teacher_features)
            loss, parts = method.loss(outputs, trainable)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = clip_gradients(student_params, extra_params, train["clip_norm"], train["clip_scope"])
        optimizer.step()
        correct = (logits.detach().argmax(dim=1) == targets).sum()
        return loss.detach(), {k: v.detach() for k, v in parts.items()}, correct, norms

    return step


# ----------------------------------------------------------------------------- run
def model_info(model: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    """Architecture, width and stem of a run's model, with its parameter count and FLOPs per 32x32 image."""
    return {"arch": spec["arch"], "width": spec["width"], "stem": spec["stem"], **model_profile(model)}


@dataclass
class Run:
    """Everything one run needs, built once by :func:`build_run`."""

    cfg: dict[str, Any]
    out_dir: Path
    placement: Placement
    data: PreparedData
    method: Method
    teacher: nn.Module | None
    state: RunState
    resume_key: dict[str, Any]

    @property
    def resume_path(self) -> Path:
        return self.out_dir / RESUME_FILE

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_FILE


def run_archs(cfg: dict[str, Any]) -> list[str]:
    """The architectures a run builds: its student and, if any, its teacher."""
    return [cfg["model"]["arch"]] + ([cfg["teacher"]["arch"]] if cfg["teacher"] else [])


def precision_name(dtype: torch.dtype) -> str:
    """``bf16`` for bf16 autocast, ``fp32`` otherwise (the names of ``runtime.precision``)."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def resume_key(cfg: dict[str, Any], data: PreparedData, placement: Placement) -> dict[str, Any]:
    """What must be unchanged for a partial run to be resumed: the config, the dataset's content,
    the teacher checkpoint's content, the kdcore code the run executes, and where and how it computes
    (the resolved device type and precision: ``runtime.device: auto`` may resolve differently on another
    machine, and with it the precision and the augmentation's random stream)."""
    teacher = cfg["teacher"]
    return {
        "config": training_digest(cfg),
        "data": data.fingerprint,
        "teacher": file_sha256(teacher["checkpoint"]) if teacher else None,
        "code": run_code_digest(cfg["method"]["name"], archs=run_archs(cfg)),
        "device": placement.device.type,
        "precision": precision_name(placement.dtype),
    }


def with_dataset_classes(cfg: dict[str, Any], data: PreparedData) -> dict[str, Any]:
    """``cfg`` with the model's and the teacher's ``num_classes`` taken from the dataset artefact where null;
    a number given there must equal the dataset's classes (else one DataError naming both)."""
    out = dict(cfg)
    for role in ("model", "teacher"):
        if out.get(role) is None:
            continue
        wanted = out[role].get("num_classes")
        if wanted is not None and wanted != data.num_classes:
            shown = ", ".join(data.classes[:12]) + (", ..." if data.num_classes > 12 else "")
            raise DataError(
                f"{cfg['data']}: the dataset has {data.num_classes} classes ({shown}), "
                f"but {role}.num_classes is {wanted}"
            )
        out[role] = {**out[role], "num_classes": data.num_classes}
    return out


def build_run(cfg: dict[str, Any], out_dir: Path) -> Run:
    """Data, method, student, teacher, projections and optimiser, on the run's device."""
    runtime, train = cfg["runtime"], cfg["train"]
    placement = make_placement(runtime)
    configure_backend(runtime, placement.device)
    data = load_dataset(cfg["data"])
    cfg = with_dataset_classes(cfg, data)
    method = get_method(cfg["method"]["name"])({k: v for k, v in cfg["method"].items() if k != "name"})

    student = build_student(cfg["model"], train["seed"])
    teacher = load_teacher(cfg["teacher"]) if method.needs_teacher else None
    trainable = method.build_trainable(student, teacher, generator(train["seed"], "projection_init"))
    for module in (student, teacher, trainable):
        if module is not None:
            module.to(placement.device, memory_format=placement.memory_format)

    params = list(student.parameters()) + (list(trainable.parameters()) if trainable is not None else [])
    optimizer = torch.optim.SGD(
        params,
        lr=train["lr"],
        momentum=train["momentum"],
        nesterov=train["nesterov"],
        weight_decay=train["weight_decay"],
    )
    state = RunState(student, trainable, optimizer, history=[])
    return Run(cfg, out_dir, placement, data, method, teacher, state, resume_key(cfg, data, placement))


def save_resume_state(path: Path, state: RunState, epoch: int, key: dict[str, Any], best_file: str) -> None:
    """Write last.pt: everything but the best weights, which ``best_file`` (beside it) holds."""
    atomic_torch_save(
        path,
        {
            "format": RESUME_FORMAT,
            "resume_key": key,
            "epochs_done": epoch + 1,
            "student": state.student.state_dict(),
            "trainable": state.trainable.state_dict() if state.trainable is not None else None,
            "optimizer": state.optimizer.state_dict(),
            "history": state.history,
            "best_val_acc": state.best_val_acc,
            "best_epoch": state.best_epoch,
            "best_file": best_file,
        },
    )


#: The entries of a last.pt and the types they must have.
RESUME_LAYOUT: dict[str, tuple[type, ...]] = {
    "resume_key": (dict,),
    "epochs_done": (int,),
    "student": (dict,),
    "trainable": (dict, type(None)),
    "optimizer": (dict,),
    "history": (list,),
    "best_val_acc": (float, int),
    "best_epoch": (int,),
    "best_file": (str,),
}

#: How a changed resume-key entry is named in the log.
KEY_NAMES = {
    "config": "run config",
    "data": "dataset",
    "teacher": "teacher checkpoint",
    "code": "kdcore code",
    "device": "device",
    "precision": "precision",
}


def resume_layout_problem(payload: dict[str, Any]) -> str | None:
    """Why a last.pt of the current format cannot be used as one (missing or mistyped entries), or None."""
    missing = [name for name in RESUME_LAYOUT if name not in payload]
    if missing:
        return f"it lacks {', '.join(missing)}"
    wrong = [name for name, types in RESUME_LAYOUT.items() if not isinstance(payload[name], types)]
    if wrong:
        return f"its {', '.join(wrong)} {'has' if len(wrong) == 1 else 'have'} the wrong type"
    name = payload["best_file"]
    if "/" in name or not name.startswith(RESUME_BEST_PREFIX) or payload["epochs_done"] < 1:
        return f"its best_file {name!r} or epochs_done {payload['epochs_done']} is not one this engine writes"
    return None


def describe_key_change(stored: dict[str, Any], key: dict[str, Any]) -> str:
    """The resume-key entries that differ, e.g. ``device (cpu -> cuda) and precision (fp32 -> bf16)``."""
    parts = []
    for name, value in key.items():
        if stored.get(name) == value:
            continue
        shown = KEY_NAMES.get(name, name)
        if name in ("device", "precision"):
            shown += f" ({stored.get(name) or 'not recorded'} -> {value})"
        parts.append(shown)
    return " and ".join(parts)


def set_aside(path: Path, why: str) -> None:
    """Move an unusable last.pt aside (``last.pt.corrupt-<time>``) with one warning naming why."""
    moved = move_aside(path)
    log.warning("%s is unusable (%s); moved it to %s and starting from epoch 0", path, why, moved.name)


def read_resume_state(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The resume payload at ``path`` if it belongs to this run, else None (with one log line saying why).

    An unreadable (e.g. truncated) file, or one of the current format whose layout is not the one this engine
    writes, is moved aside to ``last.pt.corrupt-<time>``.
    """
    if not path.exists():
        return None
    try:
        payload = read_checkpoint(path)
    except CheckpointError as exc:
        set_aside(path, str(exc))
        return None
    if payload.get("format") != RESUME_FORMAT:
        log.warning("%s is a %s file, not %s; starting from epoch 0", path, payload.get("format"), RESUME_FORMAT)
        return None
    problem = resume_layout_problem(payload)
    if problem:
        set_aside(path, f"a {RESUME_FORMAT} file whose layout is unknown: {problem}")
        return None
    changed = describe_key_change(payload["resume_key"], key)
    if changed:
        log.warning("%s was written with a different %s; starting from epoch 0", path, changed)
        return None
    return payload


def resume_best_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(f"{RESUME_BEST_PREFIX}*.pt"))


def remove_resume_best_files(out_dir: Path, keep: str | None = None) -> None:
    """Remove the ``last-best-e*.pt`` links of ``out_dir`` except ``keep``."""
    for path in resume_best_files(out_dir):
        if path.name != keep:
            path.unlink(missing_ok=True)
    for tmp in out_dir.glob(f".{RESUME_BEST_PREFIX}*.tmp"):  # writes killed mid-way
        tmp.unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a hard link of ``source`` (atomically replacing it); a copy where links fail."""
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError as exc:
        log.warning("cannot hard-link %s (%s); copying it instead", source, exc.strerror or exc)
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def restore_best(run: Run, payload: dict[str, Any]) -> str | None:
    """Load the best weights last.pt refers to into the run state and make best.pt that file again;
    returns why that is impossible (missing, unreadable or of another epoch), or None."""
    best_file = run.out_dir / payload["best_file"]
    try:
        best = read_checkpoint(best_file)
    except CheckpointError as exc:
        return str(exc)
    if best.get("epoch") != payload["best_epoch"] or not isinstance(best.get("state_dict"), dict):
        return (
            f"{best_file.name} holds epoch {best.get('epoch')}, last.pt says the best epoch is {payload['best_epoch']}"
        )
    problem = state_dict_mismatch(run.state.student.state_dict(), best["state_dict"])
    if problem:
        return f"{best_file.name} does not fit the student: {problem}"
    run.state.best_state = best["state_dict"]
    link_or_copy(best_file, run.best_path)  # best.pt always matches the resume state (a scheduler may delete it)
    return None


def resume_or_restart(run: Run) -> int:
    """Restore the run from its last.pt if that belongs to it; otherwise clear the folder for a fresh start.

    Returns the number of epochs already done.
    """
    payload = read_resume_state(run.resume_path, run.resume_key)
    problem = None if payload is None else restore_best(run, payload)
    if problem:
        set_aside(run.resume_path, f"its best weights cannot be restored: {problem}")
    if payload is None or problem:
        clear_run_files(run.out_dir)
        remove_resume_best_files(run.out_dir)
        return 0
    state = run.state
    state.student.load_state_dict(payload["student"])
    if state.trainable is not None:
        state.trainable.load_state_dict(payload["trainable"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.history = list(payload["history"])
    state.best_val_acc = float(payload["best_val_acc"])
    state.best_epoch = int(payload["best_epoch"])
    remove_resume_best_files(run.out_dir, keep=payload["best_file"])
    log.info("resuming from epoch %d (%s)", payload["epochs_done"], run.resume_path)
    return int(payload["epochs_done"])


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (datetime.timedelta's text), e.g. ``0:03:07``."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def log_epoch(entry: dict[str, Any], epochs: int, remaining_seconds: float) -> None:
    log.info(
        "epoch %d/%d loss %.4f (ce %.4f kd %.4f) train %.2f%% val %.2f%% lr %.4g %.0f img/s ETA %s",
        entry["epoch"],
        epochs,
        entry["loss"],
        entry["loss_ce"],
        entry["loss_kd"],
        100 * entry["train_acc"],
        100 * entry["val_acc"],
        entry["lr"],
        entry["images_per_s"],
        format_eta(remaining_seconds),
    )


def open_teacher_cache(run: Run) -> TeacherCache | None:
    """The run's teacher-output cache (``runtime.teacher_cache``), verified against its teacher, data, code and
    precision; None when the run has no teacher or no cache."""
    cfg, placement, data = run.cfg, run.placement, run.data
    path = cfg["runtime"].get("teacher_cache")
    if run.teacher is None or not path:
        return None
    precision = "bf16" if placement.dtype == torch.bfloat16 else "fp32"
    expected = expected_header(
        cfg["teacher"]["checkpoint"], data.fingerprint, data.n_train, data.num_classes, precision
    )
    log.info("teacher logits read from the cache %s (%s), not computed", path, precision)
    return load_teacher_cache(path, placement.device, expected)


def checkpoint_interval(device: torch.device) -> float:
    """Seconds between checkpoints: ``$KDCORE_CHECKPOINT_INTERVAL_S`` (0 = every epoch) if set, else every
    epoch on the CPU and :data:`CUDA_CHECKPOINT_INTERVAL_S` on CUDA."""
    text = os.environ.get(CHECKPOINT_INTERVAL_ENV, "").strip()
    if not text:
        return CUDA_CHECKPOINT_INTERVAL_S if device.type == "cuda" else 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{CHECKPOINT_INTERVAL_ENV}={text!r}: expected a number of seconds >= 0 (0: every epoch)")
    return value


@dataclass
class SignalRequests:
    """Signals received during training: SIGUSR1 asks for a checkpoint, SIGTERM for a checkpoint and a stop,
    both at the end of the current epoch (the resume state is per epoch). A repeated SIGTERM changes nothing
    (under SLURM both the scheduler and Snakemake may send one); SIGINT and SIGKILL still stop at once."""

    pending: str | None = None
    stop: bool = False


CHECKPOINT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextmanager
def checkpoint_signals() -> Iterator[SignalRequests]:
    """Catch SIGTERM and SIGUSR1 inside the block (main thread only; elsewhere signals keep their handlers)."""
    requests = SignalRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGTERM:
            requests.stop = True
        requests.pending = signal.Signals(signum).name

    previous = {signum: signal.signal(signum, on_signal) for signum in CHECKPOINT_SIGNALS}
    try:
        yield requests
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Checkpointer:
    """Writes last.pt (and, when the best epoch changed, best.pt and its last-best link) when one is due."""

    run: Run
    interval_s: float
    last_written: float = field(default_factory=time.monotonic)
    best_written: int | None = None  # best epoch whose weights best.pt holds

    def due(self, epoch: int, requests: SignalRequests) -> bool:
        last_epoch = epoch + 1 == self.run.cfg["train"]["epochs"]
        elapsed = time.monotonic() - self.last_written
        return self.interval_s == 0 or last_epoch or requests.pending is not None or elapsed >= self.interval_s

    def write(self, epoch: int) -> None:
        """New best weights first (``last-best-e<epoch>.pt``), then last.pt referring to them, then best.pt
        as a hard link of them: a failure at any point leaves last.pt, its best file and best.pt consistent."""
        run, state = self.run, self.run.state
        best_file = f"{RESUME_BEST_PREFIX}{state.best_epoch:04d}.pt"
        best_path = run.out_dir / best_file
        new_best = self.best_written != state.best_epoch or not best_path.exists()
        if new_best:
            spec = run.cfg["model"]
            save_weights(best_path, state.best_state, spec, epoch=state.best_epoch, val_acc=state.best_val_acc)
        try:
            save_resume_state(run.resume_path, state, epoch, run.resume_key, best_file)
        except BaseException:
            if new_best:
                best_path.unlink(missing_ok=True)  # referred to by no last.pt
            raise
        if new_best or not run.best_path.exists():
            link_or_copy(best_path, run.best_path)
            self.best_written = state.best_epoch
        remove_resume_best_files(run.out_dir, keep=best_file)
        self.last_written = time.monotonic()


def fit(run: Run, start_epoch: int) -> None:
    """Train from ``start_epoch`` to the last epoch, checkpointing (best.pt, last.pt) when due: every
    epoch or every :func:`checkpoint_interval` seconds, after the last epoch, and on SIGUSR1/SIGTERM."""
    cfg, placement, state, data = run.cfg, run.placement, run.state, run.data
    runtime, train = cfg["runtime"], cfg["train"]
    train_images = data.train_images.to(placement.device)
    train_labels = data.train_labels.to(placement.device)
    val_images, val_labels = data.val_images.to(placement.device), data.val_labels.to(placement.device)

    step_model = torch.compile(state.student) if runtime["compile"] else state.student
    teacher_cache = open_teacher_cache(run)
    step_fn = make_step_fn(
        step_model, state.trainable, state.optimizer, run.method, run.teacher, cfg, placement, teacher_cache
    )
    checkpointer = Checkpointer(run, checkpoint_interval(placement.device), best_written=state.best_epoch or None)
    if checkpointer.interval_s:
        log.info("checkpoints every %.0f s, after the last epoch and on SIGUSR1/SIGTERM", checkpointer.interval_s)
    run_start = time.perf_counter()
    with checkpoint_signals() as requests:
        for epoch in range(start_epoch, train["epochs"]):
            run.method.set_epoch(epoch)
            entry = train_one_epoch(
                epoch, state, step_fn, train_images, train_labels, cfg, placement, data.normalisation
            )
            entry["val_acc"] = accuracy(
                state.student, val_images, val_labels, placement, runtime["eval_batch_size"], data.normalisation
            )
            if runtime.get("audit_test_every_epoch"):
                entry["audit_test_acc"] = audit_test_accuracy(run)
            state.history.append(entry)
            if entry["val_acc"] > state.best_val_acc:
                state.best_val_acc, state.best_epoch = entry["val_acc"], epoch + 1
                state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.student.state_dict().items()}
            if checkpointer.due(epoch, requests):
                checkpointer.write(epoch)
                if requests.pending:
                    log.info("%s: checkpoint written after epoch %d (%s)", requests.pending, epoch + 1, run.resume_path)
                    requests.pending = None
                if requests.stop:
                    raise TrainingError(
                        f"stopped by SIGTERM after epoch {epoch + 1}; {run.resume_path} holds it: run again to resume"
                    )
            if runtime["log_every_epoch"]:
                elapsed = time.perf_counter() - run_start
                log_epoch(entry, train["epochs"], elapsed / (epoch + 1 - start_epoch) * (train["epochs"] - epoch - 1))


def audit_test_accuracy(run: Run) -> float:
    """Test accuracy of the current weights, for ``runtime.audit_test_every_epoch`` only: it goes to the
    history's ``audit_test_acc``, which no selection, checkpoint or main statistic reads."""
    placement, eval_bs = run.placement, run.cfg["runtime"]["eval_batch_size"]
    images, labels = run.data.test_images.to(placement.device), run.data.test_labels.to(placement.device)
    return accuracy(run.state.student, images, labels, placement, eval_bs, run.data.normalisation)


def evaluate(run: Run) -> tuple[float, float]:
    """Write final.pt and return (test@best, test@final): the run's only two looks at the test set. Their
    logits are kept in test_logits.npz (kdcore.predictions, float16 with every row's top class kept)."""
    cfg, placement = run.cfg, run.placement
    eval_bs = cfg["runtime"]["eval_batch_size"]
    save_model_checkpoint(run.out_dir / FINAL_FILE, run.state.student, cfg["model"], epoch=cfg["train"]["epochs"])
    test_images = run.data.test_images.to(placement.device)
    test_labels = run.data.test_labels.to(placement.device)
    norm = run.data.normalisation
    logits_final = predict_logits(run.state.student, test_images, placement, eval_bs, norm)
    best_model, _ = load_model(run.best_path, cfg["model"])
    best_model.to(placement.device, memory_format=placement.memory_format)
    logits_best = predict_logits(best_model, test_images, placement, eval_bs, norm)
    write_test_logits(
        run.out_dir / TEST_LOGITS_FILE,
        logits_best.cpu().numpy(),
        logits_final.cpu().numpy(),
        run.data.test_labels.cpu().numpy(),
        run.state.best_epoch,
        cfg["train"]["epochs"],
    )
    return top1(logits_best, test_labels), top1(logits_final, test_labels)


def record(run: Run, test_best: float, test_final: float) -> dict[str, Any]:
    """Write metrics.json (last: it marks the run folder finished), remove last.pt, return the metrics."""
    cfg, state, teacher = run.cfg, run.state, run.teacher
    history = state.history
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "kind": "train",
        "config": cfg,
        "labels": cfg["labels"],
        "environment": {**environment_info(run.placement), "code_digest": run.resume_key["code"]},
        "data": run.data.summary(),
        "model": model_info(state.student, cfg["model"]),
        "teacher": None
        if teacher is None
        else {
            **model_info(teacher, cfg["teacher"]),
            "checkpoint": cfg["teacher"]["checkpoint"],
            "sha256": run.resume_key["teacher"],
        },
        "history": history,
        "results": {
            "epochs": cfg["train"]["epochs"],
            "best_val_acc": state.best_val_acc,
            "best_epoch": state.best_epoch,
            "final_val_acc": history[-1]["val_acc"],
            "test_acc_best": test_best,
            "test_acc_final": test_final,
            "grad_norm_max": max(h["grad_norm_max"] for h in history),
            "proj_grad_norm_max": max(h["proj_grad_norm_max"] for h in history),
            "train_seconds": sum(h["seconds"] for h in history),
        },
    }
    from kdcore.runfolder import seal_record

    metrics = seal_record(metrics, run.out_dir)
    atomic_write_json(run.out_dir / METRICS_FILE, metrics)
    run.resume_path.unlink(missing_ok=True)
    remove_resume_best_files(run.out_dir)
    log.info(
        "done: best val %.2f%% (epoch %d), test@best %.2f%%, test@final %.2f%%",
        100 * state.best_val_acc,
        state.best_epoch,
        100 * test_best,
        100 * test_final,
    )
    return metrics


def train_run(config: dict[str, Any], out_dir: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Train one run described by ``config`` and write metrics.json, best.pt and final.pt to ``out_dir``.

    If ``out_dir/last.pt`` holds a partial run of the same config, data, teacher and code, training
    resumes from it; otherwise it starts from epoch 0. A folder that holds a finished run (metrics.json)
    is refused unless ``force``, which removes its results first. The folder is locked for the whole run.
    Returns the metrics dict that was written.
    """
    cfg = resolve_config(config)
    with lock_run_folder(out_dir) as folder:
        claim_run_folder(folder, force)
        run = build_run(cfg, folder)
        start_epoch = resume_or_restart(run)
        fit(run, start_epoch)
        test_best, test_final = evaluate(run)
        return record(run, test_best, test_final)
