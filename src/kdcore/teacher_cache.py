"""Teacher-output cache: a frozen teacher's logits for every augmented view of every training image.

In eval mode a teacher's logits depend only on its input, and the training augmentation (pad-4 random crop
+ horizontal flip, :mod:`kdcore.augment`) has only 162 distinct views of an image (9 x 9 crop offsets x 2
flips; view index ``flip * 81 + dy * 9 + dx``). A logit-based run (logit-KD and any method that reads only
the teacher's logits) can therefore read the teacher's output by (image, view) from a table computed once
per teacher, instead of running the teacher's forward pass in every step of every run.

The table is ``[n_train_images, 162, num_classes]``, stored in the dtype the live teacher's logits have in
the build precision: bfloat16 for ``precision: bf16`` (under bf16 autocast the teacher's last layer already
returns bf16, so storing bf16 loses nothing), float32 for ``precision: fp32``. Sizes for the 45,000-image
training split of the study:

==============  =====================================  =====================================
dataset         bf16 (2 bytes)                          fp32 (4 bytes)
==============  =====================================  =====================================
CIFAR-10        45,000 x 162 x 10 x 2 B = 146 MB        292 MB
CIFAR-100       45,000 x 162 x 100 x 2 B = 1.46 GB      2.92 GB
==============  =====================================  =====================================

The file (written atomically, read with ``weights_only=True``) holds the table and a header recording what
the logits depend on: the teacher checkpoint's content hash (architecture + weights, see
:func:`checkpoint_content_hash`), the prepared dataset's fingerprint and training-set size, the digests
(:mod:`kdcore.codehash`) of the augmentation code and of the model code, the build precision, the storage
dtype, the number of classes and of views. :func:`load_teacher_cache` compares the header with what a run
expects (:func:`expected_header`) and raises one error naming every field that differs.

Build::

    python -m kdcore.teacher_cache --teacher teacher/best.pt --data dataset.pt --out teacher_cache.pt \\
        [--device auto] [--precision bf16|fp32] [--batch-size N]

In a run: ``cache = load_teacher_cache(path, device, expected_header(...))``; per batch,
``augment_batch(x, gen, return_views=True)`` gives the views and :func:`cached_teacher_outputs` the
teacher's logits.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kdcore
from kdcore.atomic import atomic_torch_save
from kdcore.augment import CIFAR10_MEAN, CIFAR10_STD, PAD, n_views, render_views
from kdcore.checkpoint import ARCH_KEYS, load_model, read_checkpoint
from kdcore.codehash import code_digest
from kdcore.data import load_dataset
from kdcore.errors import CheckpointError, ConfigError, KDCoreError

log = logging.getLogger("kdcore.teacher_cache")

CACHE_FORMAT = "kdcore-teacher-cache/1"
PRECISIONS = ("fp32", "bf16")
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class TeacherCacheError(CheckpointError):
    """A teacher cache file is missing, unreadable, or was built for another teacher, dataset or code."""


# ----------------------------------------------------------------------------- what the logits depend on
def checkpoint_content_hash(path: str | os.PathLike[str]) -> str:
    """sha256 hex of a model checkpoint's architecture (arch, width, stem, num_classes) and weights.

    Covers exactly what determines the model's outputs: the architecture keys, then every state-dict entry
    in key order (name, dtype, shape, raw bytes). Other metadata (epoch, val_acc) and the file's byte layout
    (``torch.save`` writes a random serialisation id) do not enter.
    """
    payload = read_checkpoint(path)
    if "state_dict" not in payload:
        raise CheckpointError(f"{path} holds no model weights (format {payload['format']})")
    digest = hashlib.sha256()
    digest.update(repr({k: payload.get(k) for k in ARCH_KEYS}).encode())
    for name in sorted(payload["state_dict"]):
        tensor = payload["state_dict"][name].detach().cpu().contiguous()
        digest.update(f"\n{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _src_root() -> Path:
    return Path(kdcore.__file__).resolve().parent.parent


def augment_code_digest() -> str:
    """Digest of the augmentation code (``kdcore.augment`` and its imports): it defines the views."""
    return code_digest(["kdcore.augment"], _src_root())


def model_code_digest() -> str:
    """Digest of the model code (``kdcore.models`` and its imports): it defines the teacher's forward."""
    return code_digest(["kdcore.models"], _src_root())


def expected_header(
    teacher_checkpoint: str | os.PathLike[str],
    dataset_fingerprint: str,
    n_images: int,
    num_classes: int,
    precision: str,
) -> dict[str, Any]:
    """The verified header fields a cache must have to serve a run with this teacher, data and precision."""
    if precision not in PRECISIONS:
        raise ConfigError(f"teacher cache precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return {
        "teacher_sha256": checkpoint_content_hash(teacher_checkpoint),
        "dataset_fingerprint": dataset_fingerprint,
        "n_images": int(n_images),
        "n_views": n_views(PAD),
        "num_classes": int(num_classes),
        "augment_code_digest": augment_code_digest(),
        "model_code_digest": model_code_digest(),
        "precision": precision,
    }


def header_mismatches(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``field: cache has X, run expects Y`` for each expected field whose value differs (empty: all agree)."""
    return [
        f"{key}: cache has {found.get(key)!r}, run expects {value!r}"
        for key, value in expected.items()
        if found.get(key) != value
    ]


# ----------------------------------------------------------------------------- building
def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@torch.inference_mode()
def compute_view_logits(
    teacher: nn.Module,
    images: torch.Tensor,
    *,
    precision: str = "fp32",
    batch_size: int = 1024,
    memory_format: torch.memory_format = torch.contiguous_format,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] = (CIFAR10_MEAN, CIFAR10_STD),
) -> torch.Tensor:
    """The teacher's logits for all 162 views of each uint8 image: ``[N, 162, num_classes]`` on the CPU.

    The teacher runs in eval mode on the device of ``images`` (its own device must match), in batches of
    ``batch_size`` (image, view) pairs taken in order (image-major), under bf16 autocast for
    ``precision='bf16'``. The table's dtype is that of :data:`STORAGE_DTYPES` for the precision.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"teacher cache precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if batch_size < 1:
        raise ConfigError(f"teacher cache batch size must be >= 1, got {batch_size}")
    was_training = teacher.training
    teacher.eval()
    device = images.device
    views_per_image = n_views(PAD)
    n_pairs = images.shape[0] * views_per_image
    table: torch.Tensor | None = None
    started, next_report = time.perf_counter(), 0.1
    for start in range(0, n_pairs, batch_size):
        pairs = torch.arange(start, min(start + batch_size, n_pairs), device=device)
        mean, std = normalisation
        batch = render_views(
            images[pairs // views_per_image], pairs % views_per_image, memory_format=memory_format, mean=mean, std=std
        )
        with _autocast(device, precision):
            logits = teacher(batch)
        if table is None:
            table = torch.empty((n_pairs, logits.shape[1]), dtype=STORAGE_DTYPES[precision])
        table[start : start + pairs.numel()] = logits.to("cpu", STORAGE_DTYPES[precision])
        if (start + pairs.numel()) / n_pairs >= next_report:
            log.info("teacher cache: %.0f%% after %.0f s", 100 * (start + pairs.numel()) / n_pairs,
                     time.perf_counter() - started)  # fmt: skip
            next_report += 0.1
    teacher.train(was_training)
    if table is None:
        raise KDCoreError("teacher cache: no training images to compute logits for")
    return table.view(images.shape[0], views_per_image, -1)


def _resolve_device(requested: str) -> torch.device:
    """As a training run resolves ``runtime.device``: a job that asked for a GPU and has none fails."""
    from kdcore.devices import resolve_device

    return resolve_device(requested)


#: (image, view) pairs per forward pass of a cache build by device type. A CPU is fastest at small batches
#: (measured for ResNet-34 at width 8 on one core of a 2-core AMD EPYC: 597 views/s at 1024, 1,092 at 256,
#: 1,349 at 128, 1,314 at 64); a GPU needs large ones to fill.
BUILD_BATCH_SIZE = {"cpu": 128, "cuda": 1024}


def build_batch_size(device: torch.device) -> int:
    """The default batch of a cache build on ``device`` (:data:`BUILD_BATCH_SIZE`; 1024 for another kind)."""
    return BUILD_BATCH_SIZE.get(device.type, 1024)


def build_teacher_cache(
    teacher_checkpoint: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    device: str = "auto",
    precision: str = "bf16",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Compute the cache of ``teacher_checkpoint`` over the training split of ``dataset``; write it to ``out``.

    Inputs are checked (readable checkpoint and dataset, matching number of classes) before any compute.
    ``batch_size`` None: :func:`build_batch_size` of the device. Returns the header that was written.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"teacher cache precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = _resolve_device(device)
    teacher, meta = load_model(teacher_checkpoint)
    data = load_dataset(dataset)
    if meta["num_classes"] != data.num_classes:
        raise CheckpointError(
            f"teacher {teacher_checkpoint} has {meta['num_classes']} classes, dataset {dataset} has {data.num_classes}"
        )
    header = expected_header(teacher_checkpoint, data.fingerprint, data.n_train, data.num_classes, precision)
    memory_format = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    teacher.to(dev, memory_format=memory_format).requires_grad_(False)
    started = time.perf_counter()
    table = compute_view_logits(
        teacher,
        data.train_images.to(dev),
        precision=precision,
        batch_size=batch_size if batch_size is not None else build_batch_size(dev),
        memory_format=memory_format,
        normalisation=data.normalisation,
    )
    header.update(
        format=CACHE_FORMAT,
        storage_dtype=str(table.dtype).replace("torch.", ""),
        teacher_arch={k: meta[k] for k in ARCH_KEYS},
        teacher_checkpoint=str(teacher_checkpoint),
        dataset=str(dataset),
        device=str(dev),
        seconds=round(time.perf_counter() - started, 3),
    )
    atomic_torch_save(out, {"header": header, "logits": table})
    return header


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True, eq=False)
class TeacherCache:
    """A loaded cache: its header and the logits table ``[n_images, n_views, num_classes]`` on the device."""

    header: dict[str, Any]
    table: torch.Tensor

    def logits(self, image_indices: torch.Tensor, view_indices: torch.Tensor) -> torch.Tensor:
        """The teacher's logits ``[B, num_classes]`` for training images ``image_indices`` in views ``view_indices``.

        Both are int64 ``[B]`` tensors on the table's device; the result has the table's dtype.
        """
        return self.table[image_indices, view_indices]


def read_teacher_cache(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw ``{header, logits}`` of a cache file (memory-mapped); a bad file is a TeacherCacheError."""
    path = Path(path)
    if not path.is_file():
        raise TeacherCacheError(f"teacher cache not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise TeacherCacheError(f"cannot read teacher cache {path}: {exc}") from exc
    header = payload.get("header") if isinstance(payload, dict) else None
    if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(payload).__name__
        raise TeacherCacheError(f"{path} is not a teacher cache of format {CACHE_FORMAT} (found {found!r})")
    table = payload.get("logits")
    shape = (header["n_images"], header["n_views"], header["num_classes"])
    if not isinstance(table, torch.Tensor) or tuple(table.shape) != shape:
        found = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise TeacherCacheError(f"{path}: logits table is {found}, its header says {shape}")
    return payload


def load_teacher_cache(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", expected: dict[str, Any] | None = None
) -> TeacherCache:
    """Load a cache, verify its header against ``expected`` (see :func:`expected_header`), move it to ``device``.

    A mismatch is a TeacherCacheError naming the file and every field that differs, raised before the
    table is copied to the device.
    """
    payload = read_teacher_cache(path)
    header = payload["header"]
    if expected is not None:
        differences = header_mismatches(header, expected)
        if differences:
            raise TeacherCacheError(f"teacher cache {path} does not fit this run: " + "; ".join(differences))
    return TeacherCache(header=header, table=payload["logits"].to(device))


def cached_teacher_outputs(
    cache: TeacherCache, image_indices: torch.Tensor, views: torch.Tensor
) -> tuple[torch.Tensor, None]:
    """What the step function gets from the teacher for a logit-only method: ``(logits, no features)``.

    ``image_indices`` are the batch's indices into the training split (the epoch's data order) and
    ``views`` the view indices the augmentation returned for the same batch.
    """
    return cache.logits(image_indices, views), None


# ----------------------------------------------------------------------------- when it pays
def cache_worthwhile(n_logit_runs: int, threshold: int = 3, epochs: int = 100) -> bool:
    """Whether to build a teacher's cache: when at least ``threshold`` logit-based runs of ``epochs`` epochs
    use that teacher and together they would forward it more often than the build does.

    Break-even. A run of E epochs over N images costs E * N teacher forwards; the cache costs
    162 * N forwards once (every view of every image), after which a run pays only a table lookup
    (negligible: one gather of B x num_classes values per step). With the study's E = 100 the cache equals
    162 / 100 = 1.62 runs' worth of teacher forwards, so it breaks even at about 1.6 runs and saves
    (k - 1.62) runs' worth for k runs; short runs need many more (E = 4: 40.5 runs, :func:`break_even_runs`).
    (The build runs in eval mode in large batches without the student, so per forward it is somewhat cheaper
    than in training, which only lowers the break-even.) The default threshold of 3 keeps a margin for what
    the count leaves out: the build is one more job that every cached run must wait for, and the table's
    read and transfer to the device (146 MB for CIFAR-10).
    """
    checks = (("number of logit-based runs", n_logit_runs, 0), ("teacher cache threshold", threshold, 1),
              ("epochs per run", epochs, 1))  # fmt: skip
    for name, value, least in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    return n_logit_runs >= threshold and n_logit_runs > break_even_runs(epochs)


def break_even_runs(epochs: int = 100, views: int = n_views(PAD)) -> float:
    """Runs of ``epochs`` epochs whose teacher forwards equal one cache build (162 / 100 = 1.62)."""
    return views / epochs


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdcore.teacher_cache", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (best.pt of a teacher run)")
    parser.add_argument("--data", required=True, help="prepared dataset file (its training split is cached)")
    parser.add_argument("--out", required=True, help="cache file to write")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="bf16", choices=PRECISIONS, help="the runs' precision (default bf16)")
    parser.add_argument(
        "--batch-size", type=int, help="(image, view) pairs per forward pass (default: 128 on a CPU, 1024 on a GPU)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        header = build_teacher_cache(
            args.teacher, args.data, args.out, device=args.device, precision=args.precision, batch_size=args.batch_size
        )
    except KDCoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size_mb = math.prod((header["n_images"], header["n_views"], header["num_classes"])) * (
        2 if header["storage_dtype"] == "bfloat16" else 4
    )
    print(f"wrote {args.out}: {header['n_images']} images x {header['n_views']} views x {header['num_classes']} "
          f"classes, {header['storage_dtype']}, {size_mb / 1e6:.1f} MB, {header['seconds']:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
