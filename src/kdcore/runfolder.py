"""The run folder: who may write it, when it counts as finished, and how a fresh start clears it.

A run folder holds one run's outputs, ``metrics.json``, ``best.pt``, ``final.pt`` and ``test_logits.npz``,
and while the run is going, its resume state ``last.pt``. ``metrics.json`` is written last, so a folder that
holds it holds a finished, consistent set; such a folder is never touched again unless the caller asks
(``force``), and then its old results are removed first. While a run is going, an exclusive ``fcntl.flock``
on a lock file in the folder keeps every other process out; the file names its holder, and the operating
system drops the lock when the holder exits or is killed.

A finished run's metrics.json carries an ``integrity`` block, written in the same atomic write: the sha256
of the record itself (everything but that block) and of best.pt, final.pt and test_logits.npz as they were
when the run finished. :func:`verify_run_record` checks the record (the analysis reads no metrics.json that was edited
afterwards), :func:`verify_run_file` a checkpoint; :func:`accept_edit` is the explicit, logged way to keep
an edit made on purpose.
"""

from __future__ import annotations

import copy
import fcntl
import getpass
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdcore.atomic import atomic_write_text, claim_outputs
from kdcore.errors import ConfigError, DataError, KDCoreError

log = logging.getLogger("kdcore.train")

# A run's output is its folder: kdcore.engine.train_run writes these names into the folder it is given (the
# resume, lock and fresh-start logic below needs to know them), and the workflow declares its outputs with
# the same constants (workflow/rules/common.smk, run_outputs), so the names live here only.
METRICS_FILE = "metrics.json"  # written last: marks a finished run
BEST_FILE = "best.pt"  # weights at the best validation epoch
FINAL_FILE = "final.pt"  # weights after the last epoch
RESUME_FILE = "last.pt"  # resume state, removed when the run finishes
#: test-set logits at the best-val checkpoint and after the last epoch, with the test labels
#: (format: kdcore.predictions), written by the run's two test evaluations, before metrics.json
TEST_LOGITS_FILE = "test_logits.npz"
LOCK_FILE = ".kdcore-run.lock"
#: What a run leaves in its folder, removed in this order on a fresh start (metrics.json, the marker, first).
RUN_FILES: tuple[str, ...] = (METRICS_FILE, BEST_FILE, FINAL_FILE, TEST_LOGITS_FILE, RESUME_FILE)


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
    """Refuse a folder that holds a finished run, or a metrics.json, best.pt or final.pt that no kdcore
    training made (kdcore.atomic.claim_outputs), unless ``force``: then remove them first.

    Temporary files of writes interrupted by a crash are removed either way.
    """
    claim_outputs([Path(out_dir) / name for name in (METRICS_FILE, BEST_FILE, FINAL_FILE)], "train", force)
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


def check_inputs_are_not_outputs(out_dir: str | os.PathLike[str], inputs: Mapping[str, Any]) -> None:
    """ConfigError when an input of a run (``{config key: path}``, e.g. its teacher checkpoint) is one of the
    files the run writes into ``out_dir``: training would overwrite what it reads."""
    outputs = {(Path(out_dir) / name).resolve(): name for name in RUN_FILES}
    for key, value in inputs.items():
        if value is None:
            continue
        name = outputs.get(Path(value).resolve())
        if name is not None:
            raise ConfigError(
                f"config key '{key}': {value} is the {name} this run writes into {out_dir}; "
                "training would overwrite its own input (choose another --out)"
            )


# ----------------------------------------------------------------------------- integrity of finished runs
INTEGRITY_KEY = "integrity"
#: The files whose sha256 a finished run records (metrics.json's ``integrity.files``; those that exist).
SEALED_FILES: tuple[str, ...] = (BEST_FILE, FINAL_FILE, TEST_LOGITS_FILE)
ACCEPT_EDIT_HINT = "python -m kdcore accept-edit {path} --reason '<why it was edited>'"


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_digest(record: Mapping[str, Any]) -> str:
    """sha256 of a metrics record without its integrity block, as canonical JSON (sorted keys)."""
    body = {k: v for k, v in record.items() if k != INTEGRITY_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def metrics_text(record: Mapping[str, Any]) -> str:
    """The text of a metrics.json file (as kdcore.atomic.atomic_write_json writes it)."""
    return json.dumps(record, indent=2, sort_keys=False, allow_nan=True) + "\n"


def seal_record(record: Mapping[str, Any], out_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``record`` with its integrity block: the digest of the record and of the run's checkpoints in
    ``out_dir`` (those that exist; none for ``out_dir`` None, e.g. an imported run)."""
    plain = json.loads(metrics_text({k: v for k, v in record.items() if k != INTEGRITY_KEY}))
    files = {}
    if out_dir is not None:
        files = {name: file_digest(Path(out_dir) / name) for name in SEALED_FILES if (Path(out_dir) / name).is_file()}
    integrity = {"algorithm": "sha256", "record": record_digest(plain), "files": files, "overrides": []}
    return {**plain, INTEGRITY_KEY: integrity}


def write_run_record(out_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> dict[str, Any]:
    """Seal ``record`` (:func:`seal_record`) and write it as ``out_dir/metrics.json`` (atomically, one write:
    a metrics.json never exists without its digests). Returns the record written."""
    sealed = seal_record(record, out_dir)
    atomic_write_text(Path(out_dir) / METRICS_FILE, metrics_text(sealed))
    return sealed


def _edited_message(path: Path, what: str) -> str:
    return f"{path}: {what}; to use it anyway, accept the edit explicitly: {ACCEPT_EDIT_HINT.format(path=path)}"


def verify_run_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """DataError naming ``path`` when a metrics record was changed after its run finished (its digest differs
    from the one recorded in its integrity block), or when a record written by kdcore's engine lacks the
    block. Edits accepted with :func:`accept_edit` pass and are logged as a warning."""
    path = Path(path)
    integrity = record.get(INTEGRITY_KEY)
    if not isinstance(integrity, Mapping):
        if isinstance(record.get("environment"), Mapping) and record["environment"].get("code_digest"):
            raise DataError(
                _edited_message(
                    path,
                    "written by kdcore's engine but has no integrity digest (the run finished before kdcore sealed "
                    "its runs, or the block was removed)",
                )
            )
        return  # a record not written by kdcore's engine (made by hand or by a test)
    if record_digest(record) != integrity.get("record"):
        raise DataError(
            _edited_message(path, "edited after its run finished (its content differs from the sha256 recorded then)")
        )
    for override in integrity.get("overrides") or []:
        log.warning("%s: edited by hand, accepted on %s: %s", path, override.get("time"), override.get("reason"))


def verify_run_file(path: str | os.PathLike[str]) -> None:
    """DataError when a checkpoint of a finished run is missing or differs from the sha256 its metrics.json
    recorded when the run finished (no record of it: nothing to check)."""
    path = Path(path)
    metrics = path.parent / METRICS_FILE
    try:
        recorded = json.loads(metrics.read_text(encoding="utf-8")).get(INTEGRITY_KEY, {}).get("files", {})
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(recorded, Mapping) or path.name not in recorded:
        return
    if not path.is_file():
        raise DataError(f"{path} is missing, but its run finished ({metrics} records it); restore it, "
                        f"or remove {metrics} to train the run again")  # fmt: skip
    if file_digest(path) != recorded[path.name]:
        raise DataError(
            f"{path} changed after its run finished (its sha256 differs from the one {metrics} recorded): "
            f"the file is corrupted or was replaced; restore it, or remove {metrics} to train the run again"
        )


def accept_edit(path: str | os.PathLike[str], reason: str) -> dict[str, Any]:
    """Accept a metrics.json edited on purpose: record the new digest with who, when and why in its
    integrity block (``overrides``), log it, and return the override. ConfigError without a reason."""
    path = Path(path)
    if not reason.strip():
        raise ConfigError("accept-edit: --reason must say why the file was edited")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable metrics.json ({exc})") from exc
    if not isinstance(record, dict) or record.get("kind") != "train":
        raise DataError(f"{path}: not a metrics.json of a training run (kind 'train')")
    before = copy.deepcopy(record.get(INTEGRITY_KEY)) if isinstance(record.get(INTEGRITY_KEY), dict) else None
    sealed = seal_record(record, None)
    override = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reason": reason.strip(),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "recorded": before.get("record") if before else None,
        "accepted": sealed[INTEGRITY_KEY]["record"],
    }
    if before:
        sealed[INTEGRITY_KEY]["files"] = before.get("files", {})
        sealed[INTEGRITY_KEY]["overrides"] = [*before.get("overrides", []), override]
    else:
        sealed[INTEGRITY_KEY]["overrides"] = [override]
    atomic_write_text(path, metrics_text(sealed))
    log.warning("%s: edit accepted by %s: %s", path, override["user"], override["reason"])
    return override


# ----------------------------------------------------------------------------- a study's artefacts, before a rerun
def finished_runs(runs_dir: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, metrics record) of every finished run under ``runs_dir``; DataError naming an unreadable one."""
    found = []
    for metrics in sorted(Path(runs_dir).rglob(METRICS_FILE)):
        try:
            record = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{metrics}: not a readable metrics.json ({exc}); restore it or remove it") from None
        if isinstance(record, dict) and record.get("kind") == "train":
            found.append((metrics.parent, record))
    return found


def _consumed_checkpoints(runs: list[tuple[Path, dict[str, Any]]]) -> dict[Path, int]:
    """Teacher checkpoint -> number of finished runs distilled from it."""
    counts: dict[Path, int] = {}
    for _, record in runs:
        teacher = record.get("teacher") if isinstance(record.get("teacher"), dict) else {}
        if teacher.get("checkpoint"):
            path = Path(teacher["checkpoint"])
            counts[path] = counts.get(path, 0) + 1
    return counts


def _verify_dataset(dataset: Path, users: int) -> None:
    from kdcore.data import load_dataset

    try:
        load_dataset(dataset, verify=True)
    except DataError as exc:
        raise DataError(
            f"{exc}; {users} finished run(s) were trained on it: restore it (nothing was deleted), or remove it "
            "to have it rebuilt and every run trained again"
        ) from None


def verify_study_artefacts(runs_dir: str | os.PathLike[str], dataset: str | os.PathLike[str]) -> None:
    """Check, before a workflow schedules anything, that what finished runs were made from is intact:

    - every finished run (metrics.json) still has its best.pt and final.pt;
    - every teacher checkpoint a finished run was distilled from matches the sha256 its own run recorded
      when it finished (:func:`verify_run_file`);
    - the dataset artefact finished runs were trained on still reads and matches its content fingerprint.

    One DataError naming the file. A changed upstream file would otherwise make the workflow delete every
    run downstream of it and then fail on the corruption.
    """
    runs = finished_runs(runs_dir)
    for folder, _ in runs:
        for name in (BEST_FILE, FINAL_FILE):
            if not (folder / name).is_file():
                raise DataError(
                    f"{folder / name} is missing, but its run finished ({folder / METRICS_FILE}); restore it, "
                    f"or remove {folder / METRICS_FILE} to train the run again"
                )
    for checkpoint, users in sorted(_consumed_checkpoints(runs).items()):
        if checkpoint.is_file():
            try:
                verify_run_file(checkpoint)
            except DataError as exc:
                raise DataError(
                    f"{exc} ({users} finished run(s) were distilled from it; nothing was deleted)"
                ) from None
    dataset = Path(dataset)
    users = sum(1 for _, record in runs if Path(str((record.get("config") or {}).get("data"))) == dataset)
    if users and dataset.exists():
        _verify_dataset(dataset, users)
