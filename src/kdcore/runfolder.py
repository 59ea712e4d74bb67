"""The run folder: who may write it, when it counts as finished, and how a fresh start clears it.

A run folder holds one run's outputs, ``metrics.json``, ``best.pt`` and ``final.pt``, and while the run is
going, its resume state ``last.pt``. ``metrics.json`` is written last, so a folder that holds it holds a
finished, consistent set; such a folder is never touched again unless the caller asks (``force``), and then
its old results are removed first. While a run is going, an exclusive ``fcntl.flock`` on a lock file in the
folder keeps every other process out; the file names its holder, and the operating system drops the lock
when the holder exits or is killed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdcore.errors import KDCoreError

log = logging.getLogger("kdcore.train")

# A run's output is its folder: kdcore.engine.train_run writes these names into the folder it is given (the
# resume, lock and fresh-start logic below needs to know them), and the workflow declares its outputs with
# the same constants (workflow/rules/common.smk, run_outputs), so the names live here only.
METRICS_FILE = "metrics.json"  # written last: marks a finished run
BEST_FILE = "best.pt"  # weights at the best validation epoch
FINAL_FILE = "final.pt"  # weights after the last epoch
RESUME_FILE = "last.pt"  # resume state, removed when the run finishes
LOCK_FILE = ".kdcore-run.lock"
#: What a run leaves in its folder, removed in this order on a fresh start (metrics.json, the marker, first).
RUN_FILES: tuple[str, ...] = (METRICS_FILE, BEST_FILE, FINAL_FILE, RESUME_FILE)


class RunFolderError(KDCoreError):
    """A run folder is in use by another process, or holds a finished run that may not be overwritten."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process"


def _open_locked(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (still linked at that name), or None if it is held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder unlinked the file between our open and flock: try again


@contextmanager
def lock_run_folder(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``out_dir`` for the block; RunFolderError at once if another process has it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = _open_locked(path)
    if fd is None:
        raise RunFolderError(f"run folder {out_dir} is in use by {_holder(path)}; wait for that run or stop it")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%F %T')}\n".encode())
        yield out_dir
    finally:
        path.unlink(missing_ok=True)  # while still locked, so no process can lock a file about to vanish
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_finished(out_dir: str | os.PathLike[str]) -> bool:
    """Whether ``out_dir`` holds a finished run (its metrics.json)."""
    return (Path(out_dir) / METRICS_FILE).exists()


def clear_run_files(out_dir: str | os.PathLike[str], keep_resume: bool = False) -> list[str]:
    """Remove a run's files from ``out_dir`` (metrics.json first); return the names removed."""
    removed = []
    for name in RUN_FILES:
        if keep_resume and name == RESUME_FILE:
            continue
        path = Path(out_dir) / name
        if path.is_dir():
            raise RunFolderError(f"{path} is a folder where the run's {name} file belongs; move it away")
        if path.exists():
            path.unlink()
            removed.append(name)
    return removed


def remove_stale_temporaries(out_dir: str | os.PathLike[str]) -> list[str]:
    """Remove temporary files that an atomic write killed mid-way left behind (only call under the lock)."""
    removed = []
    for name in RUN_FILES:
        for tmp in Path(out_dir).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed


def claim_run_folder(out_dir: str | os.PathLike[str], force: bool) -> None:
    """Refuse a folder that holds a finished run, unless ``force``: then remove its results first.

    Temporary files of writes interrupted by a crash are removed either way.
    """
    remove_stale_temporaries(out_dir)
    if not is_finished(out_dir):
        return
    if not force:
        raise RunFolderError(
            f"run folder {out_dir} already holds a finished run ({METRICS_FILE}); "
            "use --force (train_run(force=True)) to remove its results and train again"
        )
    removed = clear_run_files(out_dir)
    log.info("--force: removed the previous results in %s (%s)", out_dir, ", ".join(removed))


def move_aside(path: str | os.PathLike[str]) -> Path:
    """Rename an unusable file to ``<name>.corrupt-<YYYYmmdd-HHMMSS>`` beside it and return the new path."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target
