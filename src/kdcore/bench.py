"""Training-speed benchmark: kdcore's fast path against the standard PyTorch recipe.

    python -m kdcore.bench [--quick] [--out bench.json] [--device auto] [--width 64] [--steps N]

For each case (ResNet-18/34/50/101 baselines and the four teacher->student pairs with logit- and
feature-KD) it measures, in one process, images/s and seconds per 45k-image epoch of

  (a) kdcore's fast path: the engine's own epoch loop (uint8 data on the device, batched augmentation,
      bf16 autocast and channels_last where they apply, no host synchronisation inside the loop), and
  (b) the standard recipe of the paper's code: torchvision Dataset + DataLoader with PIL transforms
      (pad-4 random crop, flip, ToTensor, Normalize), fp32, deterministic cuDNN, and a host sync per
      step for logging (loss.item(), accuracy.item()),

with the same models, batch size and number of steps; and it reports the ratio a/b, peak device
memory, and achieved TFLOP/s from torch.utils.flop_counter with utilisation against the device's peak
when it is known. For logit-KD cases it also times

  (c) the fast path with a cached teacher (kdcore.teacher_cache): the teacher's logits are looked up by
      (image, view) in a pre-built table instead of computed. The table has the real shape and dtype
      ([n_images, 162, 10], bf16 under bf16 autocast) but random values: building the real one costs 162
      teacher forwards per image, and a lookup costs the same whatever the values are.

A table goes to stdout, everything to JSON.
"""

from __future__ import annotations

import argparse
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdcore.atomic import atomic_write_json
from kdcore.augment import CIFAR10_MEAN, CIFAR10_STD
from kdcore.config import resolve_config
from kdcore.devices import configure_backend, make_placement
from kdcore.engine import RunState, make_step_fn, train_one_epoch
from kdcore.methods import get_method
from kdcore.models import build_model
from kdcore.provenance import device_name
from kdcore.seeds import generator
from kdcore.teacher_cache import STORAGE_DTYPES, TeacherCache

EPOCH_IMAGES = 45_000

# Dense peak throughput (FLOP/s) by device-name fragment, most specific first (the first fragment found in the
# device's name wins): bf16 tensor cores, TF32 tensor cores (fp32 training with TF32 allowed, as the fast path
# and PyTorch's default convolutions run on CUDA) and plain fp32. H100/H200 SXM, PCIe and NVL differ in clocks
# and SM count; NVIDIA's data sheets, dense (no sparsity).
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("H200 NVL", {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("H100", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("H200", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),  # SXM
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
)

#: Methods that read only the teacher's logits, which a teacher cache can serve.
CACHEABLE_METHODS = ("logit",)

PAIRS = (("resnet34", "resnet18"), ("resnet50", "resnet18"), ("resnet50", "resnet34"), ("resnet101", "resnet34"))


@dataclass(frozen=True)
class Case:
    student: str
    teacher: str | None = None
    method: str = "baseline"

    @property
    def name(self) -> str:
        return self.student if self.teacher is None else f"{self.teacher}->{self.student} {self.method}"


def all_cases() -> list[Case]:
    cases = [Case(arch) for arch in ("resnet18", "resnet34", "resnet50", "resnet101")]
    for teacher, student in PAIRS:
        cases += [Case(student, teacher, "logit"), Case(student, teacher, "feature")]
    return cases


def quick_cases() -> list[Case]:
    return [Case("resnet18"), Case("resnet50"), Case("resnet34", "resnet50", "feature")]


def synthetic_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return images, labels


def device_peak(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of ``precision`` (bf16, tf32, fp32) on the named device, None where unknown."""
    for fragment, peaks in PEAK_FLOPS:
        if fragment in device_name:
            return peaks.get(precision)
    return None


def compute_precision(dtype: torch.dtype, device: torch.device) -> str:
    """What a training step computes in: bf16 under bf16 autocast; on CUDA without it, TF32 when the
    process allows TF32 matmuls and convolutions (kdcore.devices.configure_backend does), else fp32."""
    if dtype == torch.bfloat16:
        return "bf16"
    tf32 = torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    return "tf32" if device.type == "cuda" and tf32 else "fp32"


def host_sync_check(run_epoch: Any, device: torch.device) -> str | None:
    """Run one epoch with ``torch.cuda.set_sync_debug_mode("error")`` over its step loop (CUDA only).

    Returns ``"none"`` when no step synchronised with the host, the error's first line when one did, and
    None on a device that has no such check (the CPU).
    """
    if device.type != "cuda":
        return None
    try:
        run_epoch("error")
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0][:300]
    return "none"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def build_case(case: Case, width: int, runtime: dict[str, Any], batch_size: int):
    """Resolved config, method, student, teacher and trainable extras of one benchmark case."""
    config: dict[str, Any] = {
        "data": "<synthetic benchmark data>",
        "model": {"arch": case.student, "width": width},
        "method": {"name": case.method},
        "train": {"batch_size": batch_size, "epochs": 1},
        "runtime": runtime,
    }
    if case.teacher is not None:
        config["teacher"] = {"arch": case.teacher, "width": width, "checkpoint": "<random weights>"}
    cfg = resolve_config(config)
    method = get_method(case.method)({k: v for k, v in cfg["method"].items() if k != "name"})
    method.set_epoch(0)
    student = build_model(case.student, width)
    teacher = None
    if case.teacher is not None:
        teacher = build_model(case.teacher, width).eval().requires_grad_(False)
    trainable = method.build_trainable(student, teacher, generator(0, "projection_init"))
    return cfg, method, student, teacher, trainable


def step_flops(
    student: nn.Module, teacher: nn.Module | None, method_name: str, batch_size: int, device: torch.device
) -> float:
    """FLOPs of one training step (student forward+backward, teacher forward), counted at fp32."""
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    need_features = method_name == "feature"
    counter = FlopCounterMode(display=False)
    with counter:
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        out = student(x, return_features=True)[0] if need_features else student(x)
        out.float().sum().backward()
    student.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def engine_takes_teacher_cache() -> bool:
    """Whether the engine's step function can read a teacher cache (``make_step_fn(..., teacher_cache=)``)."""
    return "teacher_cache" in inspect.signature(make_step_fn).parameters


def random_teacher_cache(n_images: int, num_classes: int, dtype: torch.dtype, device: torch.device) -> TeacherCache:
    """A cache of the real shape and dtype filled with random logits: for timing the lookup only."""
    gen = torch.Generator().manual_seed(0)
    table = (2 * torch.randn(n_images, 162, num_classes, generator=gen)).to(device, dtype)
    return TeacherCache(header={"precision": "random values, for timing"}, table=table)


def time_fast_path(
    case: Case,
    width: int,
    batch_size: int,
    steps: int,
    warmup: int,
    runtime: dict[str, Any],
    cached_teacher: bool = False,
) -> dict[str, Any]:
    """Images/s of the engine's own epoch loop on ``steps`` batches (after one warm-up epoch).

    With ``cached_teacher`` (logit methods) the step reads the teacher's logits from a teacher cache.
    """
    cfg, method, student, teacher, trainable = build_case(case, width, runtime, batch_size)
    placement = make_placement(cfg["runtime"])
    configure_backend(cfg["runtime"], placement.device)
    for module in (student, teacher, trainable):
        if module is not None:
            module.to(placement.device, memory_format=placement.memory_format)
    params = list(student.parameters()) + (list(trainable.parameters()) if trainable is not None else [])
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step_model = torch.compile(student) if cfg["runtime"]["compile"] else student
    cache_args: dict[str, Any] = {}
    if cached_teacher:
        precision = "bf16" if placement.dtype == torch.bfloat16 else "fp32"
        n_images = max(steps, warmup, 1) * batch_size
        cache_args["teacher_cache"] = random_teacher_cache(n_images, 10, STORAGE_DTYPES[precision], placement.device)
    step_fn = make_step_fn(step_model, trainable, optimizer, method, teacher, cfg, placement, **cache_args)
    state = RunState(student, trainable, optimizer, history=[])
    flops = step_flops(student, teacher, case.method, batch_size, placement.device)

    def epoch_of(n_steps: int, sync_debug: str | None = None) -> float:
        images, labels = synthetic_images(n_steps * batch_size)
        images, labels = images.to(placement.device), labels.to(placement.device)
        synchronize(placement.device)
        start = time.perf_counter()
        # reads its results once, at the end
        train_one_epoch(0, state, step_fn, images, labels, cfg, placement, sync_debug=sync_debug)
        synchronize(placement.device)
        return time.perf_counter() - start

    epoch_of(max(warmup, 1))
    host_sync = host_sync_check(lambda mode: epoch_of(2, mode), placement.device)
    reset_peak_memory(placement.device)
    seconds = epoch_of(steps)
    return {
        "images_per_s": steps * batch_size / seconds,
        "step_flops": flops,
        "peak_memory_mb": peak_memory_mb(placement.device),
        "precision": compute_precision(placement.dtype, placement.device),
        "channels_last": placement.channels_last,
        "device": str(placement.device),
        "host_sync_in_steps": host_sync,
    }


class UInt8ImageDataset(torch.utils.data.Dataset):
    """Images as the standard recipe sees them: one PIL image per item, transformed per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, like torchvision's CIFAR10
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(np.asarray(self.images[index]))), self.labels[index]


def time_standard_recipe(
    case: Case, width: int, batch_size: int, steps: int, warmup: int, device: torch.device, workers: int
) -> dict[str, Any]:
    """Images/s of the standard recipe: DataLoader + PIL transforms, fp32, a host sync per step.

    Its arithmetic is PyTorch's default: on CUDA, convolutions in TF32 (``cudnn.allow_tf32`` defaults to
    True) and matmuls in full fp32; the row's ``standard_precision`` says which ran."""
    import torchvision.transforms as T

    _cfg, method, student, teacher, trainable = build_case(
        case, width, {"device": str(device), "precision": "fp32"}, batch_size
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's defaults (the fast path sets both True)
        torch.backends.cudnn.allow_tf32 = True
    precision = "fp32, TF32 convolutions (PyTorch default)" if device.type == "cuda" else "fp32"
    for module in (student, teacher, trainable):
        if module is not None:
            module.to(device)
    params = list(student.parameters()) + (list(trainable.parameters()) if trainable is not None else [])
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    transform = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    )
    n_warm = max(warmup, 1)
    images, labels = synthetic_images((steps + n_warm) * batch_size, seed=1)
    loader = torch.utils.data.DataLoader(
        UInt8ImageDataset(images, labels, transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )
    from kdcore.methods.base import ForwardOutputs

    student.train()
    start = None
    done = 0
    for i, (x, y) in enumerate(loader):
        if i == n_warm:
            synchronize(device)
            reset_peak_memory(device)
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        t_logits = t_feats = None
        if teacher is not None:
            with torch.no_grad():
                t_logits, t_feats = teacher(x, return_features=True)
        logits, feats = student(x, return_features=True)
        loss, _ = method.loss(ForwardOutputs(y, logits, feats, t_logits, t_feats), trainable)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss.item()  # the recipe logs loss and accuracy every step: host syncs
        (logits.argmax(1) == y).float().mean().item()
        if i >= n_warm:
            done += 1
    synchronize(device)
    seconds = time.perf_counter() - start if start is not None else float("nan")
    return {
        "images_per_s": done * batch_size / seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "workers": workers,
        "precision": precision,
    }


def run_benchmark(
    cases: list[Case],
    width: int,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str,
    workers: int,
    threads: int | None,
    compile_model: bool = False,
) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    runtime = {"device": device, "compile": compile_model}
    placement = make_placement(
        resolve_config({"data": "-", "model": {"arch": "resnet18"}, "runtime": runtime})["runtime"]
    )
    dev = placement.device
    name = device_name(dev)
    # One discarded pass first: the process's first training steps pay one-off costs (thread pools,
    # oneDNN/cuDNN kernel selection) that would otherwise land on whichever case is measured first.
    time_fast_path(cases[0], width, batch_size, 1, 1, runtime)
    with_cache = engine_takes_teacher_cache()
    if not with_cache:
        print("cached teacher: not measured, the engine's step function does not take a teacher cache", flush=True)
    rows = []
    for case in cases:
        fast = time_fast_path(case, width, batch_size, steps, warmup, runtime)
        cached = None
        if with_cache and case.method in CACHEABLE_METHODS:
            cached = time_fast_path(case, width, batch_size, steps, warmup, runtime, cached_teacher=True)
        standard = time_standard_recipe(case, width, batch_size, steps, warmup, dev, workers)
        achieved = fast["step_flops"] * fast["images_per_s"] / batch_size
        peak = device_peak(name, fast["precision"])
        rows.append(
            {
                "case": case.name,
                "student": case.student,
                "teacher": case.teacher,
                "method": case.method,
                "fast_images_per_s": fast["images_per_s"],
                "standard_images_per_s": standard["images_per_s"],
                "speedup": fast["images_per_s"] / standard["images_per_s"],
                "fast_epoch_s": EPOCH_IMAGES / fast["images_per_s"],
                "cached_images_per_s": cached["images_per_s"] if cached else None,
                "cached_epoch_s": EPOCH_IMAGES / cached["images_per_s"] if cached else None,
                "cached_gain": cached["images_per_s"] / fast["images_per_s"] if cached else None,
                "standard_epoch_s": EPOCH_IMAGES / standard["images_per_s"],
                "fast_peak_memory_mb": fast["peak_memory_mb"],
                "standard_peak_memory_mb": standard["peak_memory_mb"],
                "step_gflops": fast["step_flops"] / 1e9,
                "achieved_tflops": achieved / 1e12,
                "utilisation": achieved / peak if peak else None,
                "precision": fast["precision"],
                "standard_precision": standard["precision"],
                "channels_last": fast["channels_last"],
                "host_sync_in_steps": fast["host_sync_in_steps"],
            }
        )
        print(format_row(rows[-1]), flush=True)
    return {
        "schema_version": 1,
        "kind": "bench",
        "device": str(dev),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "width": width,
        "batch_size": batch_size,
        "steps": steps,
        "workers": workers,
        "compile": compile_model,
        "rows": rows,
    }


HEADER = (
    f"{'case':<28}{'fast img/s':>11}{'std img/s':>11}{'ratio':>7}"
    f"{'fast s/ep':>10}{'std s/ep':>10}{'cached img/s':>13}{'gain':>7}{'TFLOP/s':>9}{'util':>7}{'mem MB':>8}"
)


def format_row(row: dict[str, Any]) -> str:
    util = f"{100 * row['utilisation']:.0f}%" if row["utilisation"] is not None else "-"
    mem = f"{row['fast_peak_memory_mb']:.0f}" if row["fast_peak_memory_mb"] is not None else "-"
    cached = f"{row['cached_images_per_s']:.0f}" if row.get("cached_images_per_s") is not None else "-"
    gain = f"{row['cached_gain']:.2f}x" if row.get("cached_gain") is not None else "-"
    return (
        f"{row['case']:<28}{row['fast_images_per_s']:>11.0f}{row['standard_images_per_s']:>11.0f}"
        f"{row['speedup']:>6.2f}x{row['fast_epoch_s']:>10.1f}{row['standard_epoch_s']:>10.1f}"
        f"{cached:>13}{gain:>7}{row['achieved_tflops']:>9.3f}{util:>7}{mem:>8}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdcore.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 cases, width 8, few steps: about a minute on a CPU")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--width", type=int, help="base width of every model (default 64; 8 with --quick)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, help="timed steps per case (default 50; 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10; 1 with --quick)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the standard recipe (default 4, capped by CPUs)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student on the fast path")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    quick = args.quick
    import os

    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    result = run_benchmark(
        quick_cases() if quick else all_cases(),
        width=args.width or (8 if quick else 64),
        batch_size=args.batch_size if not quick else min(args.batch_size, 64),
        steps=args.steps or (3 if quick else 50),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 10),
        device=args.device,
        workers=workers,
        threads=args.threads,
        compile_model=args.compile,
    )
    print(HEADER)
    for row in result["rows"]:
        print(format_row(row))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
