"""Write files atomically: to a temporary name in the same folder, fsync, then rename over the target.

After a crash or power loss at any point, ``target`` is either its previous content or the complete new
content, never a mix: the data is fsync'ed before the rename, and the folder after it (so the rename
itself is durable). A failed write (full disk, read-only folder, a folder where the file should be) is
one :class:`WriteError` line naming the file and the cause, and leaves the previous file intact.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from kdcore.errors import KDCoreError

# a folder fsync that the file system does not support is not an error
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES}


class WriteError(KDCoreError, OSError):
    """An output file could not be written; the message names it, the cause, and what is left."""


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


def atomic_torch_save(target: str | os.PathLike[str], obj: Any) -> Path:
    import torch

    def write(tmp: Path) -> None:
        with open_for_writing(tmp) as fh:
            torch.save(obj, fh)

    return atomic_write(target, write)
