"""Device leasing: which device a workflow job trains on.

Snakemake counts a ``gpu`` resource but assigns no device ids, so each job leases a device itself.
A lease is an exclusive, non-blocking ``fcntl.flock`` on a lock file per (GPU, slot) in a lock folder
shared by all jobs of the machine. The operating system drops the lock when the process exits or
crashes, so a lease can never outlive its job. If every slot is taken the job waits and polls.
Without CUDA GPUs the lease is simply ``"cpu"``.

Placement (the second half of this module) turns a run config's ``runtime`` section into where and how a
run computes: the torch device, the autocast dtype and the memory format, plus the process-wide backend
switches (threads, cuDNN, determinism). torch is imported inside functions, so leasing stays cheap.

GPUs are identified by their UUID when torch can report it (else by their ``CUDA_VISIBLE_DEVICES``
entry, else their index), so jobs that see different subsets of the GPUs (e.g. under SLURM, where
``CUDA_VISIBLE_DEVICES`` is set per job) still lock the same physical device under the same name.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    import torch

LOGGER = logging.getLogger("kdcore.devices")
LOCK_DIR_ENV = "KDCORE_LOCK_DIR"
#: Set (to anything but "" or "0") by the workflow for its GPU jobs: such a job must find a CUDA device.
REQUIRE_GPU_ENV = "KDCORE_REQUIRE_GPU"
#: Variables SLURM sets in a job that was allocated GPUs.
SLURM_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


class NoCudaError(TrainingError):
    """A job that asked for a GPU sees no CUDA device: it must not train on the CPU instead."""


def gpu_expected() -> str | None:
    """Why this process is expected to compute on a GPU (the variable that says so), or None.

    ``$KDCORE_REQUIRE_GPU`` (set by the workflow for jobs with ``gpu`` > 0), a ``CUDA_VISIBLE_DEVICES`` that
    names devices (not empty, ``-1`` or SLURM's ``NoDevFiles``), or a SLURM GPU allocation.
    """
    value = os.environ.get(REQUIRE_GPU_ENV, "").strip()
    if value and value != "0":
        return f"{REQUIRE_GPU_ENV}={value}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible not in ("-1", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    for name in SLURM_GPU_VARS:
        value = os.environ.get(name, "").strip()
        if value and value != "0":
            return f"{name}={value}"
    return None


def cuda_diagnosis() -> str:
    """One line on why torch has no CUDA: its build (``torch.version.cuda``) and its own initialisation
    warning or error (e.g. no driver, a driver older than the build needs, a CPU-only build)."""
    import warnings

    import torch

    built = torch.version.cuda
    if built:
        build = f"torch {torch.__version__} is built for CUDA {built} (torch.version.cuda)"
    else:
        build = f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.is_available()
        error = None
        try:
            torch.cuda.init()
        except Exception as exc:  # torch raises AssertionError for CPU builds, RuntimeError for driver problems
            error = f"{type(exc).__name__}: {exc}"
    said = [str(w.message) for w in caught] + ([error] if error else [])
    firsts = list(dict.fromkeys(m.strip().splitlines()[0] for m in said if m.strip()))
    init = "; ".join(firsts) if firsts else "no warning or error, and no device"
    return f"{build}; torch's CUDA initialisation: {init}"


def require_cuda(requested: str, reason: str) -> None:
    """Raise NoCudaError naming ``reason`` (why a GPU was expected) and :func:`cuda_diagnosis`."""
    raise NoCudaError(
        f"this job asked for a GPU ({reason}; device {requested!r}) but torch sees no CUDA device: "
        f"{cuda_diagnosis()}. Not falling back to the CPU: fix the driver or the torch build, or set "
        "compute.device: cpu (runtime.device: cpu for `kdcore train`) to train on the CPU on purpose"
    )


def gpu_jobs_refusal(device: str, gpu_jobs: int, gpu_minutes: float, cuda_available: bool) -> str | None:
    """Why a workflow run on this machine must not start: ``gpu_jobs`` jobs that ask for a GPU (their runtime
    limits adding up to ``gpu_minutes``) with no CUDA device visible to torch; None when it may start.

    Each such job would fail at once anyway (:func:`check_gpu_request`); refusing before the first job says
    it once, with the size of what was asked for, before data preparation or analysis jobs run. A study on
    ``compute.device: cpu`` plans no GPU job; ``KDCORE_REQUIRE_GPU=0`` lets ``auto`` fall back to the CPU.
    """
    if gpu_jobs == 0 or cuda_available or str(device).strip().lower() == "cpu":
        return None
    if os.environ.get(REQUIRE_GPU_ENV, "").strip() == "0":
        return None
    return (
        f"{gpu_jobs} GPU job(s) to run on this machine (runtime limits adding up to {gpu_minutes / 60:.1f} GPU-hours, "
        f"compute.device {device}) but torch sees no CUDA device: {cuda_diagnosis()}. No job was started. "
        "On a cluster, run with --profile profiles/slurm (docs/slurm.md); to train on this machine's CPU on "
        "purpose, set compute.device: cpu (e.g. --config compute.device=cpu), or KDCORE_REQUIRE_GPU=0 to let "
        "compute.device auto fall back to the CPU"
    )


def check_gpu_request(requested: str, n_gpus: int) -> None:
    """NoCudaError when no CUDA device is visible although one was asked for: ``requested`` names CUDA, or
    it is ``auto`` in a process that :func:`gpu_expected` says should have a GPU. ``cpu`` always passes."""
    text = str(requested).strip().lower()
    if n_gpus or text == "cpu":
        return
    reason = gpu_expected()
    if text.startswith("cuda"):
        reason = reason or "the device names CUDA"
    if reason:
        require_cuda(requested, reason)


def default_lock_dir() -> Path:
    """The machine-wide lock folder: ``$KDCORE_LOCK_DIR`` or ``<tmp>/kdcore-gpu-locks-<uid>``."""
    env = os.environ.get(LOCK_DIR_ENV)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"kdcore-gpu-locks-{os.getuid()}"


def visible_gpu_ids() -> list[str]:
    """Stable identifiers of the CUDA GPUs this process can see, in visible-index order ([] without CUDA)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ids: list[str] = []
    for index in range(count):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            ids.append(f"uuid-{uuid}")
        elif len(visible) == count:
            ids.append(f"visible-{visible[index]}")
        else:
            ids.append(f"index-{index}")
    return ids


def _lock_name(gpu_id: str, slot: int) -> str:
    return f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu_id)}-slot{slot}.lock"


def _parse_request(requested: str, n_gpus: int) -> list[int] | None:
    """GPU indices a request may use, or None for the CPU. Raises ConfigError for a bad request."""
    text = str(requested).strip().lower()
    if text == "cpu":
        return None
    if text == "auto":
        return list(range(n_gpus)) or None
    if text == "cuda" or text.startswith("cuda:"):
        if n_gpus == 0:
            raise ConfigError(f"runtime.device: {requested!r} requested but no CUDA GPU is visible")
        if text == "cuda":
            return list(range(n_gpus))
        index_text = text.removeprefix("cuda:")
        if not index_text.isdigit() or int(index_text) >= n_gpus:
            raise ConfigError(
                f"runtime.device: {requested!r} is not one of the {n_gpus} visible GPUs (cuda:0..cuda:{n_gpus - 1})"
            )
        return [int(index_text)]
    raise ConfigError(f"runtime.device: {requested!r} is not one of auto, cpu, cuda, cuda:<index>")


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def lease_device(
    requested: str = "auto",
    slots_per_gpu: int = 1,
    lock_dir: str | os.PathLike[str] | None = None,
    *,
    gpu_ids: Sequence[str] | None = None,
    poll_seconds: float = 5.0,
    timeout_seconds: float | None = None,
) -> Iterator[str]:
    """Lease a device for the duration of the block and yield its torch name (``"cuda:1"`` or ``"cpu"``).

    ``requested``: ``auto`` (a free GPU if there are any, else the CPU), ``cpu``, ``cuda`` (any GPU) or
    ``cuda:<index>`` (that GPU). ``slots_per_gpu``: how many jobs may share one GPU. ``lock_dir``: the
    lock folder (default :func:`default_lock_dir`). ``gpu_ids``: identifiers of the visible GPUs (default
    :func:`visible_gpu_ids`; injectable for tests). Waits, polling every ``poll_seconds``, while all
    allowed slots are taken; raises ``TimeoutError`` after ``timeout_seconds`` (None: wait forever).
    """
    if slots_per_gpu < 1:
        raise ConfigError(f"slots_per_gpu: must be >= 1, got {slots_per_gpu}")
    ids = list(visible_gpu_ids() if gpu_ids is None else gpu_ids)
    check_gpu_request(requested, len(ids))
    indices = _parse_request(requested, len(ids))
    if indices is None:
        LOGGER.info("device lease: cpu (requested %s, %d GPU(s) visible)", requested, len(ids))
        yield "cpu"
        return

    folder = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # slot-major order spreads jobs over GPUs before stacking them on one
    candidates = [(index, slot) for slot in range(slots_per_gpu) for index in indices]
    started = time.monotonic()
    waited = False
    while True:
        for index, slot in candidates:
            path = folder / _lock_name(ids[index], slot)
            fd = _try_lock(path)
            if fd is None:
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} since {time.time():.0f}\n".encode())
                device = f"cuda:{index}"
                LOGGER.info(
                    "device lease: %s (gpu %s, slot %d of %d, lock %s, waited %.0f s)",
                    device,
                    ids[index],
                    slot,
                    slots_per_gpu,
                    path,
                    time.monotonic() - started,
                )
                yield device
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        elapsed = time.monotonic() - started
        if timeout_seconds is not None and elapsed >= timeout_seconds:
            raise TimeoutError(
                f"no free GPU slot among {len(candidates)} for {requested!r} after {elapsed:.0f} s (locks in {folder})"
            )
        if not waited:
            LOGGER.info("device lease: all %d GPU slot(s) busy, waiting (locks in %s)", len(candidates), folder)
            waited = True
        time.sleep(poll_seconds)


# ----------------------------------------------------------------------------- placement
def resolve_device(requested: str) -> torch.device:
    """The torch device for ``runtime.device`` (auto: CUDA when available, else the CPU, unless the process
    was asked for a GPU: then :func:`check_gpu_request` fails with the reason)."""
    import torch

    available = torch.cuda.is_available()
    check_gpu_request(requested, torch.cuda.device_count() if available else 0)
    if requested == "auto":
        return torch.device("cuda" if available else "cpu")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 / AMX), where bf16 autocast pays off."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """bf16 autocast on CUDA and on CPUs with native bf16 when 'auto'; float32 otherwise."""
    import torch

    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda" or cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``, or nothing for float32."""
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Placement:
    """Where and how a run computes: device, autocast dtype, channels-last memory format or not."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format


def make_placement(runtime: dict[str, Any]) -> Placement:
    """The placement a resolved ``runtime`` section asks for (channels_last auto: on CUDA only).

    channels_last ``true`` on the CPU is a ConfigError: torch's CPU channels-last convolution backward corrupts
    the heap for narrow layers (measured with torch 2.14.1: a ResNet-18 at width 4 or 2 aborts with "free():
    invalid next size" or "double free", at one thread), and a corruption that does not abort could change
    results silently."""
    device = resolve_device(runtime["device"])
    dtype = resolve_precision(runtime["precision"], device)
    channels_last = runtime["channels_last"]
    if channels_last == "auto":
        channels_last = device.type == "cuda"
    if channels_last is True and device.type == "cpu":
        raise ConfigError(
            "runtime.channels_last: true on the CPU is refused (torch's CPU channels-last backward corrupts "
            "memory for narrow convolutions, docs/performance.md); use auto (off on the CPU) or false"
        )
    return Placement(device, dtype, bool(channels_last))


def configure_backend(runtime: dict[str, Any], device: torch.device) -> None:
    """Threads and determinism switches for this process."""
    import torch

    if runtime["threads"]:
        torch.set_num_threads(runtime["threads"])
    if device.type == "cuda":
        # the leased GPU becomes the current device: kernels, allocations and streams without an explicit
        # device (library workspaces, torch.cuda.* helpers) go to it, not to GPU 0 ("cuda" without an index
        # means the current device already, and set_device refuses it)
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not runtime["deterministic"]
        torch.backends.cudnn.deterministic = runtime["deterministic"]
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if runtime["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
