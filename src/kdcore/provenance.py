"""Provenance of a run: the software and machine it ran on, and content digests of what it used.

Everything here describes a run without changing it. Nothing may fail a run: a missing ``git``, a source
tree that is not a git checkout or an unreadable ``/proc/cpuinfo`` give ``None`` or a generic name.
The content digests (:func:`file_sha256`, :func:`run_code_digest`) also key resumption: a partial run is
resumed only when the data, the teacher file and the code it executes are the ones it started with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore import __version__
from kdcore.codehash import code_digest, module_path
from kdcore.errors import KDCoreError

if TYPE_CHECKING:
    import torch

    from kdcore.devices import Placement

#: The folder that holds the ``kdcore`` package (the ``src`` root the workflow hashes too).
SRC_ROOT = Path(__file__).resolve().parent.parent
_CHUNK = 1 << 20


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
    """The GPU's name for a CUDA device, else the CPU's model name."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def git_commit(where: str | os.PathLike[str] | None = None) -> str | None:
    """The commit of the git checkout holding ``where`` (default: this package), '-dirty' if modified.

    None when git is not installed, ``where`` is not inside a git checkout, or git fails in any other way.
    """
    here = Path(where) if where is not None else Path(__file__).resolve().parent
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
    return (commit + ("-dirty" if dirty else "")) or None


def environment_info(placement: Placement) -> dict[str, Any]:
    """The ``environment`` block of metrics.json: versions, device, precision, threads, host, commit."""
    import torch
    import torchvision

    return {
        "kdcore": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_cuda": torch.version.cuda,  # the CUDA version torch was built for (None: a CPU-only build)
        "cudnn": torch.backends.cudnn.version() if placement.device.type == "cuda" else None,
        "python": platform.python_version(),
        "device": str(placement.device),
        "device_name": device_name(placement.device),
        "precision": str(placement.dtype).replace("torch.", ""),
        "channels_last": placement.channels_last,
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "git_commit": git_commit(),
    }


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def training_modules(method: str, archs: Iterable[str] = ()) -> tuple[str, ...]:
    """The kdcore modules whose import closure a training run of ``method`` executes.

    ``archs`` are the architectures the run builds (student, teacher): their family modules
    (kdcore.models.architecture_module) are imported by name, so they are not in the engine's static
    closure and are added here, sorted and without duplicates. The workflow's training rules hash the
    same modules (plus their script) with kdcore.codehash.
    """
    from kdcore.models import architecture_module

    families = sorted({architecture_module(arch) for arch in archs})
    return ("kdcore.engine", "kdcore.methods", f"kdcore.methods.{method}", *families)


def run_code_digest(
    method: str,
    src_root: str | os.PathLike[str] = SRC_ROOT,
    archs: Iterable[str] = (),
    extra_files: Iterable[str | os.PathLike[str]] = (),
) -> str:
    """Digest (kdcore.codehash) of the kdcore code a training run of ``method`` building ``archs`` executes
    (plus ``extra_files``, e.g. the workflow's training script).

    A method module from an added method directory (kdcore.methods.add_method_directory) lies outside
    ``src_root``: its file enters the digest as an extra file.
    """
    modules = training_modules(method, archs)
    in_tree = [m for m in modules if module_path(m, src_root) is not None]
    outside = []
    for module in modules:
        if module not in in_tree:
            spec = importlib.util.find_spec(module)
            if spec is None or spec.origin is None:
                raise KDCoreError(f"module {module!r} not found under {src_root} nor on the method path")
            outside.append(spec.origin)
    return code_digest(in_tree, src_root, [*outside, *extra_files])
