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

import logging
import math
import os
import platform
import socket
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore import __version__
from kdcore.atomic import atomic_torch_save, atomic_write_json
from kdcore.augment import augment_batch, normalize_batch
from kdcore.checkpoint import load_model, read_checkpoint, save_model_checkpoint, save_weights
from kdcore.config import resolve_config, training_digest
from kdcore.data import load_dataset
from kdcore.errors import TrainingError
from kdcore.methods import get_method
from kdcore.methods.base import ForwardOutputs, Method
from kdcore.models import build_model, count_parameters
from kdcore.seeds import derive_seed, generator

log = logging.getLogger("kdcore.train")

METRICS_SCHEMA_VERSION = 1
RESUME_FORMAT = "kdcore-resume/1"


# ----------------------------------------------------------------------------- placement
def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"runtime.device is {requested!r} but CUDA is not available on this machine")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 / AMX), where bf16 autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """bf16 autocast on CUDA and on CPUs with native bf16 when 'auto'; float32 otherwise."""
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda" or cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Placement:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def make_placement(runtime: dict[str, Any]) -> Placement:
    device = resolve_device(runtime["device"])
    dtype = resolve_precision(runtime["precision"], device)
    channels_last = runtime["channels_last"]
    if channels_last == "auto":
        channels_last = device.type == "cuda"
    return Placement(device, dtype, bool(channels_last))


def configure_backend(runtime: dict[str, Any], device: torch.device) -> None:
    """Threads and determinism switches for this process."""
    if runtime["threads"]:
        torch.set_num_threads(runtime["threads"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not runtime["deterministic"]
        torch.backends.cudnn.deterministic = runtime["deterministic"]
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if runtime["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


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
def predict_logits(model: nn.Module, images: torch.Tensor, placement: Placement, batch_size: int) -> torch.Tensor:
    """Float32 logits of ``model`` (in eval mode) for uint8 ``images`` on the device."""
    was_training = model.training
    model.eval()
    outputs = []
    with torch.inference_mode(), autocast_context(placement.device, placement.dtype):
        for start in range(0, images.shape[0], batch_size):
            batch = normalize_batch(images[start : start + batch_size], memory_format=placement.memory_format)
            outputs.append(model(batch).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, placement: Placement, batch_size: int
) -> float:
    if images.shape[0] == 0:
        return float("nan")
    logits = predict_logits(model, images, placement, batch_size)
    return (logits.argmax(dim=1) == labels).float().mean().item()


# ----------------------------------------------------------------------------- training
@dataclass
class EpochAccumulator:
    """Per-epoch sums kept on the device; read once with ``summary``."""

    device: torch.device
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    maxima: dict[str, torch.Tensor] = field(default_factory=dict)
    first_bad_step: torch.Tensor | None = None
    steps: int = 0

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        if name in self.sums:
            self.sums[name] += value
            torch.maximum(self.maxima[name], value, out=self.maxima[name])
        else:
            self.sums[name] = value.clone()
            self.maxima[name] = value.clone()

    def check_finite(self, loss: torch.Tensor, step: int) -> None:
        if self.first_bad_step is None:
            self.first_bad_step = torch.tensor(-1, device=self.device)
        bad = ~torch.isfinite(loss.detach())
        step_t = torch.tensor(step, device=self.device)
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), step_t, self.first_bad_step)

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
    """Cosine annealing from lr to lr_min over the run's epochs (epoch counted from 0)."""
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


def train_one_epoch(
    epoch: int,
    state: RunState,
    step_fn: Any,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    cfg: dict[str, Any],
    placement: Placement,
) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's history entry (without val acc)."""
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
    for step, first in enumerate(range(0, n, batch_size)):
        idx = order[first : first + batch_size]
        images = augment_batch(train_images[idx], aug_gen, memory_format=placement.memory_format)
        targets = train_labels[idx]
        loss, parts, correct, norms = step_fn(images, targets)
        acc.check_finite(loss, step)
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
):
    """The per-batch step: forward, loss, backward, clip, optimiser step. Returns device tensors only.

    ``student`` may be a torch.compile'd wrapper of the run's student; it shares its parameters.
    """
    student_params = [p for p in student.parameters() if p.requires_grad]
    extra_params = list(trainable.parameters()) if trainable is not None else []
    train = cfg["train"]
    need_features = method.needs_features

    def step(images: torch.Tensor, targets: torch.Tensor):
        with autocast_context(placement.device, placement.dtype):
            teacher_logits = teacher_features = None
            if teacher is not None:
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
def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment_info(placement: Placement) -> dict[str, Any]:
    import torchvision

    return {
        "kdcore": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(placement.device),
        "device_name": device_name(placement.device),
        "precision": str(placement.dtype).replace("torch.", ""),
        "channels_last": placement.channels_last,
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the kdcore source tree, when it is a git checkout (with '-dirty' if modified)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def model_info(model: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    return {"arch": spec["arch"], "width": spec["width"], "stem": spec["stem"], "params": count_parameters(model)}


def save_resume_state(path: Path, state: RunState, epoch: int, digest: str) -> None:
    atomic_torch_save(
        path,
        {
            "format": RESUME_FORMAT,
            "training_digest": digest,
            "epochs_done": epoch + 1,
            "student": state.student.state_dict(),
            "trainable": state.trainable.state_dict() if state.trainable is not None else None,
            "optimizer": state.optimizer.state_dict(),
            "history": state.history,
            "best_val_acc": state.best_val_acc,
            "best_epoch": state.best_epoch,
            "best_state": state.best_state,
        },
    )


def try_resume(path: Path, state: RunState, digest: str) -> int:
    """Restore from ``path`` if it belongs to this run; return the number of epochs already done."""
    if not path.exists():
        return 0
    payload = read_checkpoint(path)
    if payload.get("format") != RESUME_FORMAT or payload.get("training_digest") != digest:
        log.warning("ignoring %s: it belongs to a different run configuration; starting from scratch", path)
        return 0
    state.student.load_state_dict(payload["student"])
    if state.trainable is not None:
        state.trainable.load_state_dict(payload["trainable"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.history = list(payload["history"])
    state.best_val_acc = float(payload["best_val_acc"])
    state.best_epoch = int(payload["best_epoch"])
    state.best_state = payload["best_state"]
    log.info("resuming from epoch %d (%s)", payload["epochs_done"], path)
    return int(payload["epochs_done"])


def format_eta(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def train_run(config: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Train one run described by ``config`` and write metrics.json, best.pt and final.pt to ``out_dir``.

    If ``out_dir/last.pt`` holds a partial run of the same configuration, training resumes from it.
    Returns the metrics dict that was written.
    """
    cfg = resolve_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime, train = cfg["runtime"], cfg["train"]
    placement = make_placement(runtime)
    configure_backend(runtime, placement.device)
    digest = training_digest(cfg)

    data = load_dataset(cfg["data"])
    method_cls = get_method(cfg["method"]["name"])
    method = method_cls({k: v for k, v in cfg["method"].items() if k != "name"})

    student = build_student(cfg["model"], train["seed"])
    teacher = load_teacher(cfg["teacher"]) if method.needs_teacher else None
    trainable = method.build_trainable(student, teacher, generator(train["seed"], "projection_init"))

    student.to(placement.device, memory_format=placement.memory_format)
    if teacher is not None:
        teacher.to(placement.device, memory_format=placement.memory_format)
    if trainable is not None:
        trainable.to(placement.device, memory_format=placement.memory_format)

    params = list(student.parameters()) + (list(trainable.parameters()) if trainable is not None else [])
    optimizer = torch.optim.SGD(
        params,
        lr=train["lr"],
        momentum=train["momentum"],
        nesterov=train["nesterov"],
        weight_decay=train["weight_decay"],
    )
    state = RunState(student, trainable, optimizer, history=[])
    resume_path = out_dir / "last.pt"
    start_epoch = try_resume(resume_path, state, digest)
    best_path = out_dir / "best.pt"
    if start_epoch and not best_path.exists():
        # a scheduler may delete the outputs of an interrupted job; last.pt carries the best weights
        save_weights(best_path, state.best_state, cfg["model"], epoch=state.best_epoch, val_acc=state.best_val_acc)

    train_images = data.train_images.to(placement.device)
    train_labels = data.train_labels.to(placement.device)
    val_images, val_labels = data.val_images.to(placement.device), data.val_labels.to(placement.device)

    step_model = torch.compile(student) if runtime["compile"] else student
    step_fn = make_step_fn(step_model, trainable, optimizer, method, teacher, cfg, placement)
    eval_bs = runtime["eval_batch_size"]
    run_start = time.perf_counter()
    for epoch in range(start_epoch, train["epochs"]):
        entry = train_one_epoch(epoch, state, step_fn, train_images, train_labels, cfg, placement)
        entry["val_acc"] = accuracy(student, val_images, val_labels, placement, eval_bs)
        state.history.append(entry)
        if entry["val_acc"] > state.best_val_acc:
            state.best_val_acc, state.best_epoch = entry["val_acc"], epoch + 1
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
            save_weights(best_path, state.best_state, cfg["model"], epoch=epoch + 1, val_acc=entry["val_acc"])
        save_resume_state(resume_path, state, epoch, digest)
        if runtime["log_every_epoch"]:
            elapsed = time.perf_counter() - run_start
            remaining = elapsed / (epoch + 1 - start_epoch) * (train["epochs"] - epoch - 1)
            log.info(
                "epoch %d/%d loss %.4f (ce %.4f kd %.4f) train %.2f%% val %.2f%% lr %.4g %.0f img/s ETA %s",
                epoch + 1,
                train["epochs"],
                entry["loss"],
                entry["loss_ce"],
                entry["loss_kd"],
                100 * entry["train_acc"],
                100 * entry["val_acc"],
                entry["lr"],
                entry["images_per_s"],
                format_eta(remaining),
            )

    save_model_checkpoint(out_dir / "final.pt", student, cfg["model"], epoch=train["epochs"])
    test_images, test_labels = data.test_images.to(placement.device), data.test_labels.to(placement.device)
    test_final = accuracy(student, test_images, test_labels, placement, eval_bs)
    best_model, _ = load_model(best_path, cfg["model"])
    best_model.to(placement.device, memory_format=placement.memory_format)
    test_best = accuracy(best_model, test_images, test_labels, placement, eval_bs)

    history = state.history
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "kind": "train",
        "config": cfg,
        "labels": cfg["labels"],
        "environment": environment_info(placement),
        "data": {
            "fingerprint": data.fingerprint,
            "source": data.source,
            "synthetic": data.synthetic,
            "n_train": int(data.train_labels.shape[0]),
            "n_val": int(data.val_labels.shape[0]),
            "n_test": int(data.test_labels.shape[0]),
        },
        "model": model_info(student, cfg["model"]),
        "teacher": None
        if teacher is None
        else {**model_info(teacher, cfg["teacher"]), "checkpoint": cfg["teacher"]["checkpoint"]},
        "history": history,
        "results": {
            "epochs": train["epochs"],
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
    atomic_write_json(out_dir / "metrics.json", metrics)
    resume_path.unlink(missing_ok=True)
    log.info(
        "done: best val %.2f%% (epoch %d), test@best %.2f%%, test@final %.2f%%",
        100 * state.best_val_acc,
        state.best_epoch,
        100 * test_best,
        100 * test_final,
    )
    return metrics
