"""``kdcore status``: where a study stands, read from its results folder while it runs.

A run is ``done`` when its metrics.json exists, and ``damaged`` when it finished but best.pt or final.pt is
missing or its metrics.json was edited afterwards (kdcore.runfolder's digests); ``failed`` when its log
holds a traceback or an ERROR record; ``running`` when it has made progress (an epoch line in its log, or
a last.pt) and its log or last.pt changed within ``stale_after`` seconds; ``interrupted`` when it made
progress but nothing changed for longer (a killed job: the next run of the study resumes it from last.pt);
``pending`` when the study config expects it and it has not started. Progress comes from the engine's per-epoch log line
(``epoch k/N ... val x% ... ETA ...``), else from last.pt.

The study's time left is the work left (the ETAs of started runs plus, for each pending run, its epochs
times the mean seconds per epoch observed in its stage) divided by the number of runs now running.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from kdcore.errors import DataError
from kdcore.runfolder import BEST_FILE, FINAL_FILE, METRICS_FILE, RESUME_FILE, verify_run_record
from kdcore.study import STAGES, Run, build_study, folder_root

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) .*? val ([\d.]+)% .*? ETA (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")
FAILURE = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL)\b")
STATES = ("done", "damaged", "running", "interrupted", "failed", "pending")
MIN_STALE_AFTER = 600.0


@dataclass
class RunStatus:
    """What is known about one run."""

    stage: str
    path: str
    state: str
    epoch: int | None = None
    epochs: int | None = None
    val_acc: float | None = None
    eta_s: float | None = None
    seconds_per_epoch: float | None = None
    last_line: str | None = None
    log: str | None = None
    problem: str | None = None


@dataclass
class StudyStatus:
    results: str
    runs: list[RunStatus]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    time_left_s: float | None = None


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``datetime.timedelta``'s format, days included); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def _parse_eta(match: re.Match[str]) -> float:
    days, hours, minutes, seconds = (int(g or 0) for g in match.group(4, 5, 6, 7))
    return float(timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds())


def _last_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _from_log(status: RunStatus, log: Path, now: float) -> None:
    """Fill progress, ETA and failure from the run's log file."""
    text = log.read_text(encoding="utf-8", errors="replace")
    status.log, status.last_line = str(log), _last_line(text)
    matches = list(EPOCH_LINE.finditer(text))
    if matches:
        last = matches[-1]
        status.epoch, status.epochs, status.val_acc = int(last.group(1)), int(last.group(2)), float(last.group(3)) / 100
        eta_at_line = _parse_eta(last)
        status.eta_s = max(eta_at_line - (now - log.stat().st_mtime), 0.0)
        if status.epoch < status.epochs:
            status.seconds_per_epoch = eta_at_line / (status.epochs - status.epoch)
    if FAILURE.search(text.split(matches[-1].group(0))[-1] if matches else text):
        status.state = "failed"


def _from_last_pt(status: RunStatus, last_pt: Path, epochs: int | None) -> None:
    """Progress from last.pt (the engine's resume state), when the log had none."""
    from kdcore.checkpoint import read_checkpoint
    from kdcore.errors import CheckpointError

    try:
        payload = read_checkpoint(last_pt)
    except CheckpointError:
        return
    history = payload.get("history") or []
    status.epoch = int(payload.get("epochs_done", len(history)))
    status.epochs = epochs
    if history:
        status.val_acc = float(history[-1]["val_acc"])
        status.seconds_per_epoch = sum(h["seconds"] for h in history) / len(history)
        if epochs is not None:
            status.eta_s = status.seconds_per_epoch * max(epochs - status.epoch, 0)


def finished_run_problem(folder: Path, record: Any) -> str | None:
    """What is wrong with a finished run folder: a missing checkpoint, or a metrics.json edited after the run
    finished; None when nothing is."""
    missing = [name for name in (BEST_FILE, FINAL_FILE) if not (folder / name).is_file()]
    if missing:
        return f"{' and '.join(missing)} missing (restore it, or remove {METRICS_FILE} to train the run again)"
    if isinstance(record, dict):
        try:
            verify_run_record(folder / METRICS_FILE, record)
        except DataError:
            return f"{METRICS_FILE} was edited after the run finished (python -m kdcore accept-edit to keep the edit)"
    return None


def _from_metrics(status: RunStatus, metrics: Path) -> None:
    record = None
    try:
        record = json.loads(metrics.read_text(encoding="utf-8"))
        results = record["results"]
        status.epoch = status.epochs = int(results["epochs"])
        status.val_acc = float(results["best_val_acc"])
        status.seconds_per_epoch = float(results["train_seconds"]) / max(status.epochs, 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a metrics.json being written or foreign: the run counts as done all the same
    status.problem = finished_run_problem(metrics.parent, record)
    if status.problem is not None:
        status.state = "damaged"


def run_status(results: Path, stage: str, path: str, epochs: int | None, now: float, stale_after: float) -> RunStatus:
    """The state of one run folder ``results/runs/<path>`` (with its log ``results/logs/<path>.log``)."""
    folder, log = results / "runs" / path, results / "logs" / f"{path}.log"
    status = RunStatus(stage, path, "pending", epochs=epochs)
    if (folder / METRICS_FILE).is_file():
        status.state = "done"
        _from_metrics(status, folder / METRICS_FILE)
        return status
    if log.is_file():
        _from_log(status, log, now)
    last_pt = folder / RESUME_FILE
    if status.epoch is None and last_pt.is_file():
        _from_last_pt(status, last_pt, epochs)
    if status.state == "failed" or (status.epoch is None and not log.is_file()):
        return status
    touched = max((p.stat().st_mtime for p in (log, last_pt) if p.is_file()), default=0.0)
    limit = max(stale_after, 3 * (status.seconds_per_epoch or 0.0))
    status.state = "running" if now - touched <= limit else "interrupted"
    return status


def runs_on_disk(results: Path) -> dict[str, str]:
    """``{path: stage}`` of every run with a folder or a log under ``results``."""
    found: dict[str, str] = {}
    for stage in STAGES:
        root = folder_root(stage)
        for marker in (METRICS_FILE, RESUME_FILE, BEST_FILE):
            for file in (results / "runs" / root).glob(f"**/{marker}"):
                found[file.parent.relative_to(results / "runs").as_posix()] = stage
        for file in (results / "logs" / root).glob("**/*.log"):
            found[file.relative_to(results / "logs").as_posix().removesuffix(".log")] = stage
    return found


def _time_left(runs: list[RunStatus]) -> float | None:
    """Work left (started runs' ETAs + pending epochs at their stage's mean pace) over the runs now running."""
    pace: dict[str, list[float]] = {}
    for run in runs:
        if run.seconds_per_epoch:
            pace.setdefault(run.stage, []).append(run.seconds_per_epoch)
    every = [p for values in pace.values() for p in values]
    work = 0.0
    for run in runs:
        if run.state in ("running", "interrupted"):
            if run.eta_s is None:
                return None
            work += run.eta_s
        elif run.state == "pending":
            stage_pace = pace.get(run.stage) or every
            if not stage_pace or run.epochs is None:
                return None
            work += run.epochs * sum(stage_pace) / len(stage_pace)
    running = sum(run.state == "running" for run in runs)
    return work / max(running, 1)


def study_status(
    results: str | Path,
    study: Mapping[str, Any] | None = None,
    *,
    now: float | None = None,
    stale_after: float = MIN_STALE_AFTER,
) -> StudyStatus:
    """The state of every run of the study in ``results``; ``study`` (a validated study config) adds
    the runs not started yet."""
    results = Path(results)
    if not results.is_dir():
        raise DataError(f"results folder {results} does not exist (give the study's results folder)")
    now = time.time() if now is None else now
    expected: dict[str, Run] = {run.folder: run for run in build_study(study).runs} if study else {}
    paths = {path: run.stage for path, run in expected.items()} | runs_on_disk(results)
    runs = [
        run_status(results, stage, path, expected[path].epochs if path in expected else None, now, stale_after)
        for path, stage in sorted(paths.items(), key=lambda item: (STAGES.index(item[1]), item[0]))
    ]
    counts = {stage: dict.fromkeys(STATES, 0) for stage in STAGES}
    for run in runs:
        counts[run.stage][run.state] += 1
    counts = {stage: c for stage, c in counts.items() if any(c.values())}
    status = StudyStatus(str(results), runs, counts)
    status.time_left_s = _time_left(runs) if any(r.state != "done" for r in runs) else 0.0
    return status


def _progress(run: RunStatus) -> str:
    epoch = (
        f"epoch {run.epoch}/{run.epochs if run.epochs is not None else '?'}" if run.epoch is not None else "starting"
    )
    val = f"val {100 * run.val_acc:.2f}%" if run.val_acc is not None else "val -"
    return f"{epoch}  {val}  ETA {format_duration(run.eta_s)}"


def render_text(status: StudyStatus) -> str:
    """The plain-text report of ``kdcore status``."""
    lines = [f"study in {status.results}", "", f"{'stage':<10}" + "".join(f"{s:>13}" for s in STATES)]
    for stage, counts in status.counts.items():
        lines.append(f"{stage:<10}" + "".join(f"{counts[s]:>13}" for s in STATES))
    sections = (
        ("damaged", "damaged (finished, but a result file is missing or was changed):", lambda r: r.problem or ""),
        ("running", "running:", _progress),
        (
            "interrupted",
            "interrupted (no change for a while; resumes from last.pt when the study is rerun):",
            _progress,
        ),
        ("failed", "failed:", lambda r: f"{r.last_line or '(empty log)'}  [{r.log}]"),
    )
    for state, title, describe in sections:
        chosen = [r for r in status.runs if r.state == state]
        if chosen:
            lines += ["", title, *(f"  {r.path}  {describe(r)}" for r in chosen)]
    if not status.runs:
        lines += ["", "no runs found"]
    running = sum(r.state == "running" for r in status.runs)
    lines += ["", f"estimated time left: {format_duration(status.time_left_s)} ({running} running)"]
    return "\n".join(lines) + "\n"


def to_json(status: StudyStatus) -> str:
    record = asdict(status)
    record["time_left"] = format_duration(status.time_left_s)
    return json.dumps(record, indent=2)
