"""Write files atomically: to a temporary name in the same folder, fsync, then rename over the target.

After a crash or power loss at any point, ``target`` is either its previous content or the complete new
content, never a mix: the data is fsync'ed before the rename, and the folder after it (so the rename
itself is durable). A failed write (full disk, read-only folder, a folder where the file should be) is
one :class:`WriteError` line naming the file and the cause, and leaves the previous file intact.

Nothing a command did not make is overwritten: before any work, each writing command passes its outputs to
:func:`claim_outputs`, which refuses an existing file that another command (or no kdcore command) made,
unless the caller asked for it (``--force``). Every kdcore output says what made it in its own content
(:func:`file_maker`: a JSON file's ``kind`` and ``labels.source``, a torch file's ``format`` tag), so the
check needs no marker files beside the outputs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from kdcore.errors import KDCoreError

log = logging.getLogger("kdcore.io")

# a folder fsync that the file system does not support is not an error
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES}


class WriteError(KDCoreError, OSError):
    """An output file could not be written; the message names it, the cause, and what is left."""


class OutputExistsError(KDCoreError):
    """An output path holds a file that the writing command did not make (and ``--force`` was not given)."""


#: The kdcore command behind each format tag of a torch file (kdcore.data, kdcore.checkpoint, kdcore.engine).
TORCH_FORMAT_MAKERS: dict[str, str] = {
    "kdcore-dataset/": "prepare-data",
    "kdcore-checkpoint/": "train",
    "kdcore-resume/": "train",
}
#: ``labels.source`` of the runs that kdcore.reference imports from the paper's zip.
IMPORT_SOURCE = "paper-reference"


def _json_maker(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    labels = data.get("labels") if isinstance(data.get("labels"), dict) else {}
    if labels.get("source") == IMPORT_SOURCE:
        return "import-reference"
    return {"train": "train", "fidelity": "fidelity"}.get(str(data.get("kind")))


def _torch_maker(path: Path) -> str | None:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any file torch cannot read is not a kdcore output
        return None
    tag = obj.get("format") if isinstance(obj, dict) else None
    if not isinstance(tag, str):
        return None
    return next((maker for prefix, maker in TORCH_FORMAT_MAKERS.items() if tag.startswith(prefix)), None)


def file_maker(path: str | os.PathLike[str]) -> str | None:
    """The kdcore command that made the file at ``path``, read from its content: ``train`` (metrics.json,
    best.pt, final.pt, last.pt), ``fidelity``, ``prepare-data`` (dataset.pt) or ``import-reference`` (the
    paper's runs); None for a file no kdcore command makes."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".json":
        return _json_maker(path)
    return _torch_maker(path)


def claim_outputs(targets: Iterable[str | os.PathLike[str]], command: str, force: bool = False) -> None:
    """Refuse, before any work, to overwrite an existing file among ``targets`` that ``kdcore <command>``
    did not make (:func:`file_maker`); with ``force`` such a file is overwritten, and a warning logs it.

    Raises OutputExistsError naming the file and what made it."""
    for target in map(Path, targets):
        if not target.is_file():
            continue  # a missing file is written; a folder fails at the write with one line
        maker = file_maker(target)
        if maker == command:
            continue
        made = f"it was made by `kdcore {maker}`" if maker else "it is not a file that kdcore makes"
        if force:
            log.warning("--force: overwriting %s (%s)", target, made)
            continue
        raise OutputExistsError(
            f"{target} exists and {made}, not by `kdcore {command}`; refusing to overwrite it "
            "(choose another output path, or use --force to replace it)"
        )


def describe_write_failure(exc: OSError, target: Path, existed: bool) -> str:
    """One line: what went wrong while writing ``target`` and what is left of it."""
    if target.is_dir():
        return f"cannot write {target}: it is a folder, not a file"
    cause = (exc.strerror or str(exc)).strip()
    cause = cause[:1].lower() + cause[1:]
    left = f"the previous {target.name} is intact" if existed else f"{target.name} was not written"
    return f"{cause} while writing {target}; {left}"


def fsync_path(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Flush ``path``'s data (or a folder's entries) to stable storage."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (directory and exc.errno in _DIR_FSYNC_UNSUPPORTED):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; fsync it and rename it onto ``target`` if the block succeeds.

    On any exception the temporary file is removed and ``target`` is left untouched; an OSError (from the
    block or from this function) becomes a :class:`WriteError` naming ``target``.
    """
    target = Path(target)
    existed = target.is_file()
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        fsync_path(tmp)
        # mkstemp creates the file 0600; give the result the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
        fsync_path(target.parent, directory=True)
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(describe_write_failure(exc, target, existed)) from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def atomic_write(target: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | os.PathLike[str], data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"
    return atomic_write_text(target, text)


def open_for_writing(path: Path) -> IO[bytes]:
    """The binary file that torch writes into (a Python file, so a full disk is an OSError naming ENOSPC)."""
    return open(path, "wb")


class ErrorKeepingWriter:
    """The file object torch.save writes into: it keeps the OSError of a failed write. torch reports a
    failed write as its own RuntimeError (``unexpected pos ...``), which hides the cause (a full disk)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def atomic_torch_save(target: str | os.PathLike[str], obj: Any) -> Path:
    import torch

    def write(tmp: Path) -> None:
        with open_for_writing(tmp) as fh:
            sink = ErrorKeepingWriter(fh)
            try:
                torch.save(obj, sink)
            except Exception:
                if sink.error is not None:
                    raise sink.error from None  # the file system's own error (ENOSPC), named by atomic_path
                raise

    return atomic_write(target, write)


def is_dry_run(argv: Iterable[str]) -> bool:
    """Whether a Snakemake command line asks for a dry run (``-n``, ``--dry-run``/``--dryrun``, or ``-n``
    among combined short flags such as ``-np``). Snakemake tells a Snakefile nothing about it at parse time."""
    for arg in argv:
        if arg in ("--dry-run", "--dryrun"):
            return True
        if arg.startswith("-") and not arg.startswith("--") and arg[1:].isalpha() and "n" in arg[1:]:
            return True
    return False


def write_parse_time_file(target: str | os.PathLike[str], text: str, *, dry_run: bool) -> bool:
    """Write a file that a workflow keeps in step while it is parsed (atomically); True when written.

    A file system that refuses the write (read-only results/, full disk) is one WriteError line in a real
    run. A dry run is not failed for it: one warning line says what could not be written, and nothing is."""
    try:
        atomic_write_text(target, text)
    except WriteError as exc:
        if not dry_run:
            raise
        print(f"kd-capacity: dry run: {exc} (a real run fails here)", file=sys.stderr)
        return False
    return True
