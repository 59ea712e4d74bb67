"""An eight-minute check of kdcore on one GPU (or, CPU-sized, on any machine): speed, full-scale accuracy, workflow.

    python3 tools/gpucheck.py run OUTDIR [--data ARCHIVE] [--cpu]      (what scripts/gpu-check.sh calls)
    python3 tools/gpucheck.py concurrency --procs 1 2 4 [--steps N] [--width W] [--device D]

``run`` checks first that every module the steps import imports and that the data archive is readable (a
problem ends it with exit status 2), then executes the steps, each in its own subprocess with its own time
budget, cut to what is left of the check's total (``--total-s``; steps with nothing left are skipped):

1. ``bench``: ``python -m kdcore.bench`` for every case (fast path against the standard recipe);
2. ``r18``: prepares the full CIFAR-10 split (45k/5k/10k) from the JPEG archive with the ``folder`` data
   source and trains a width-64 ResNet-18 baseline for as many epochs as fit in the step's budget;
3. ``smoke``: the smoke study's training runs (config/smoke.yaml) through Snakemake, on CUDA with 4 slots per
   GPU, bf16 and channels_last left on ``auto``; every run's metrics.json must report the expected device;
4. ``concurrency``: 1, 2 and 4 ResNet-18 training processes side by side on the device (aggregate images/s);
5. results: ``results.json`` (everything) and ``results.md`` (tables) in OUTDIR, rewritten after each step.

A failed or timed-out step is recorded with its error text and the check goes on; the exit status is 1 when
any step failed. The last line printed says how the check ended: ``all steps ok``, the steps that are not ok,
the pre-flight's problems, or the signal that stopped it. ``--cpu`` runs the same steps CPU-sized (quick bench,
synthetic data, width 8, a few Snakemake training jobs, 1 and 2 processes) in about a minute on 2 cores.

An operations tool, not part of the library: it imports kdcore (this repository's src/, which every
subprocess gets first on PYTHONPATH), and no kdcore module imports it (tests/test_import_contract.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcore.atomic import atomic_write_json, atomic_write_text

#: This file: the concurrency step and its workers run it as ``python3 tools/gpucheck.py ...``.
SELF = Path(__file__).resolve()
REPO = SELF.parents[1]
WORKFLOW_PARTS = ("Snakefile", "config.yaml", "config", "workflow", "src", "profiles")
STEP_NAMES = ("bench", "r18", "smoke", "concurrency")


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class CheckPlan:
    """Sizes and time budgets (seconds) of one check: GPU-sized or CPU-sized."""

    cpu: bool
    budgets: dict[str, float]
    bench_args: tuple[str, ...]
    r18_width: int
    r18_default_epochs: int
    smoke_until: tuple[str, ...]  # the training rules the smoke step runs (and what they need): run outputs only
    concurrency_procs: tuple[int, ...]
    concurrency_steps: int
    concurrency_width: int
    total_s: float  # the whole check, pre-flight to results; enforced (steps are cut short or skipped)
    batch_size: int = 128
    threads: int | None = None  # torch CPU threads per process of the bench, R18 and concurrency steps (None: default)
    concurrency_warmup: int = 5  # untimed steps of each concurrency process before the common start
    deadline: float | None = None  # time.monotonic() by which everything must end (set by run_check)

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    def remaining(self) -> float:
        """Seconds left of the total budget (infinite before run_check sets the deadline)."""
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def time_for(self, key: str) -> float:
        """A step's budget, cut to what is left of the total (less a margin for writing the results)."""
        return max(0.0, min(self.budgets[key], self.remaining() - RESULTS_MARGIN_S))


#: Rules of the smoke study the smoke step runs: every kind of training run (and what they need), no analysis.
SMOKE_TRAINING_RULES = ("train_baseline", "train_final", "train_stem", "train_clip")
#: Smoke-study jobs per GPU: its 14 training jobs are small, so 4 at a time fit the step's budget.
SMOKE_SLOTS = 4
#: Seconds kept back from every step for writing results.json/results.md at the end.
RESULTS_MARGIN_S = 5.0
#: The whole GPU check, in seconds, as the check itself enforces it: scripts/gpu-check.sh gives it 25 s less than
#: its 8-minute (480 s) wall-clock limit, which it enforces with `timeout` as a backstop.
GPU_TOTAL_S = 455.0


def gpu_plan() -> CheckPlan:
    # 30 (pre-flight) + 120 + 40 + 100 + 110 + 50 = 450 s of step budgets in the 455 s total
    return CheckPlan(
        cpu=False,
        budgets={"preflight": 30, "bench": 120, "r18_data": 40, "r18": 100, "smoke": 110, "concurrency": 50},
        bench_args=("--device", "cuda", "--steps", "30", "--warmup", "5"),  # every case within the budget
        r18_width=64,
        r18_default_epochs=10,
        smoke_until=SMOKE_TRAINING_RULES,
        concurrency_procs=(1, 2, 4),
        concurrency_steps=100,
        concurrency_width=64,
        total_s=GPU_TOTAL_S,
    )


def cpu_plan() -> CheckPlan:
    return CheckPlan(
        cpu=True,
        # generous: a shared 2-core machine can be several times slower than the ~45 s an idle one needs
        budgets={"preflight": 60, "bench": 300, "r18_data": 90, "r18": 240, "smoke": 300, "concurrency": 180},
        bench_args=("--quick", "--device", "cpu", "--steps", "1", "--workers", "1", "--batch-size", "32"),
        r18_width=8,
        r18_default_epochs=1,
        smoke_until=("train_baseline",),
        concurrency_procs=(1, 2),
        concurrency_steps=2,
        concurrency_width=8,
        total_s=1175.0,
        batch_size=32,
        # one thread per process: with two, a bench, R18 run or lone concurrency process of these tiny models could
        # take several times longer on a busy 2-core machine (a parallel test suite); with one, about as long as idle
        threads=1,
        concurrency_warmup=1,  # as the quick bench: on the CPU the first step is the only slow one
    )


# ----------------------------------------------------------------------------- subprocesses
class StepTimeout(RuntimeError):
    """A step's subprocess ran past its budget and was killed."""


@dataclass
class Console:
    """Progress to stdout and to OUTDIR/check.log at once."""

    log_path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    lines: list[str] = field(default_factory=list)

    def lines_of(self, tag: str) -> list[str]:
        return [line for line in self.lines if line.startswith(f"[{tag}] ")]

    def say(self, text: str) -> None:
        with self.lock:
            self.lines.append(text)
            print(text, flush=True)
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")


def child_env() -> dict[str, str]:
    """The environment of every subprocess: this kdcore first on PYTHONPATH, unbuffered output."""
    src = str(REPO / "src")
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, *parts]), "PYTHONUNBUFFERED": "1"}


def run_logged(
    cmd: list[str], timeout: float, console: Console, tag: str, cwd: Path | None = None, env: dict | None = None
) -> list[str]:
    """Run ``cmd``, echoing its output lines with ``[tag]``; return them. Raises on failure or timeout."""
    console.say(f"[{tag}] $ {' '.join(cmd)}  (budget {timeout:.0f} s)")
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills its children too
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            console.say(f"[{tag}] {lines[-1]}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        raise StepTimeout(f"{tag}: killed after its budget of {timeout:.0f} s") from None
    except BaseException:  # the check itself is stopped (SIGTERM, Ctrl-C): its children go with it
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    reader.join(5)
    if proc.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"{tag}: exit status {proc.returncode}\n{tail}")
    return lines


def kdcore_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def self_cmd(*args: str) -> list[str]:
    """A subcommand of this tool in a fresh Python process."""
    return [sys.executable, str(SELF), *args]


# ----------------------------------------------------------------------------- step 1: bench
def step_bench(plan: CheckPlan, outdir: Path, tmp: Path, console: Console, results: dict) -> dict[str, Any]:
    out = outdir / "bench.json"
    cmd = kdcore_cmd("kdcore.bench", *plan.bench_args, "--out", str(out))
    cmd += ["--threads", str(plan.threads)] if plan.threads else []
    try:
        run_logged(cmd, plan.time_for("bench"), console, "bench")
    except StepTimeout as exc:  # bench.json is written at the end: keep the rows it printed
        rows = [
            line.removeprefix("[bench] ") for line in console.lines_of("bench") if line.startswith("[bench] resnet")
        ]
        raise PartialResult(str(exc), {"printed_rows": rows}) from None
    bench = json.loads(out.read_text(encoding="utf-8"))
    keys = ("case", "fast_images_per_s", "standard_images_per_s", "speedup", "fast_epoch_s", "standard_epoch_s")
    optional = ("cached_gain", "precision", "standard_precision", "host_sync_in_steps")
    rows = [
        {k: row[k] for k in keys} | {k: row.get(k) for k in optional} | {"utilisation": row["utilisation"]}
        for row in bench["rows"]
    ]
    result = {"file": out.name, "device_name": bench["device_name"], "width": bench["width"], "rows": rows}
    if plan.cpu:  # `kdcore plan` refuses epoch times measured at another width than the study's, as the quick bench's
        return result | {"study_estimate_error": f"not run: the CPU-sized bench measures width {bench['width']}"}
    return result | study_estimate(out, console, min(PLAN_S, plan.remaining() - RESULTS_MARGIN_S))


#: Seconds the bench step gives `kdcore plan` (within the step's own budget: it runs after the bench).
PLAN_S = 30.0


def study_estimate(bench_file: Path, console: Console, timeout: float = PLAN_S) -> dict[str, Any]:
    """GPU-hours of the paper's whole study (config.yaml) from the bench's measured epoch times (kdcore plan)."""
    config = REPO / "config.yaml"
    if not config.is_file():
        return {}
    if timeout <= 1:
        return {"study_estimate_error": "not run: the check's total budget is spent"}
    cmd = [sys.executable, "-m", "kdcore", "plan", str(config), "--bench", str(bench_file), "--json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        console.say(f"[bench] kdcore plan did not finish in {timeout:.0f} s")
        return {"study_estimate_error": f"kdcore plan did not finish in {timeout:.0f} s"}
    if done.returncode != 0:
        console.say(f"[bench] kdcore plan failed: {done.stderr.strip()[-500:]}")
        return {"study_estimate_error": done.stderr.strip()[-500:]}
    plan = json.loads(done.stdout)
    console.say(
        f"[bench] whole study (config.yaml) from measured epoch times: {plan['totals']['gpu_hours']:.1f} GPU-hours"
    )
    return {"study_gpu_hours": plan["totals"]["gpu_hours"], "study_jobs": plan["totals"]["jobs"]}


# ----------------------------------------------------------------------------- step 2: R18 on full CIFAR-10
def r18_data_spec(plan: CheckPlan, archive: Path | None) -> dict[str, Any]:
    if plan.cpu:
        return {"source": "synthetic", "synthetic": {"n_train": 600, "n_test": 200, "seed": 0}, "val_size": 100}
    return {"source": "folder", "path": str(archive), "val_size": 5000, "split_seed": 1234}


def parse_printed_row(line: str) -> dict[str, Any] | None:
    """Case and fast s/epoch of a row as ``kdcore.bench`` prints it (28-character case column), else None."""
    fields = line[28:].split()
    try:
        return {"case": line[:28].strip(), "fast_epoch_s": float(fields[3])}
    except (IndexError, ValueError):
        return None


def estimate_epochs(plan: CheckPlan, results: dict) -> tuple[int, str]:
    """Epochs that fit the R18 budget, from the bench's R18 epoch time when it ran (with eval and slack)."""
    bench = (results["steps"].get("bench") or {}).get("result") or {}
    r18 = [r for r in bench.get("rows", []) if r["case"] == "resnet18"]
    r18 += [row for row in map(parse_printed_row, bench.get("printed_rows", [])) if row and row["case"] == "resnet18"]
    if plan.cpu or not r18:
        return plan.r18_default_epochs, "default (no bench R18 time)"
    epoch_s = 1.3 * r18[0]["fast_epoch_s"] + 1.5  # + validation pass and per-epoch checkpointing
    usable = plan.time_for("r18") - 40  # process start, data to the device, final test evaluation
    return max(1, min(200, math.floor(usable / epoch_s))), f"from bench R18 epoch {r18[0]['fast_epoch_s']:.1f} s"


def read_history(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Per-epoch history (metrics.json, or last.pt of a run cut short) and the final results if any."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        data = json.loads(metrics.read_text(encoding="utf-8"))
        return data["history"], {**data["results"], "environment": data["environment"]}
    last = run_dir / "last.pt"
    if last.exists():
        from kdcore.checkpoint import read_checkpoint

        return list(read_checkpoint(last)["history"]), None
    return [], None


def step_r18(plan: CheckPlan, outdir: Path, tmp: Path, console: Console, results: dict) -> dict[str, Any]:
    spec_path, dataset = tmp / "data.yaml", tmp / "dataset.pt"
    spec_path.write_text(json.dumps(r18_data_spec(plan, results["archive_path"])), encoding="utf-8")
    start = time.perf_counter()
    run_logged(
        kdcore_cmd("kdcore", "prepare-data", "--config", str(spec_path), "--out", str(dataset)),
        plan.time_for("r18_data"),
        console,
        "r18-data",
    )
    prepare_s = time.perf_counter() - start
    epochs, why = estimate_epochs(plan, results)
    console.say(f"[r18] {epochs} epoch(s): {why}")
    run_config = {
        "data": str(dataset),
        "model": {"arch": "resnet18", "width": plan.r18_width},
        "method": {"name": "baseline"},
        "train": {"epochs": epochs, "seed": 0, "batch_size": plan.batch_size},
        "runtime": {"device": plan.device, "threads": plan.threads},
    }
    (tmp / "r18.yaml").write_text(json.dumps(run_config), encoding="utf-8")
    run_dir = tmp / "r18"
    error = None
    try:
        run_logged(
            kdcore_cmd("kdcore", "train", "--config", str(tmp / "r18.yaml"), "--out", str(run_dir)),
            plan.time_for("r18"),
            console,
            "r18",
            env=child_env() | {"KDCORE_CHECKPOINT_INTERVAL_S": "0"},  # a run cut short keeps every epoch's history
        )
    except StepTimeout as exc:
        error = exc
    history, final = read_history(run_dir)
    per_epoch = [
        {"epoch": h["epoch"], "seconds": h["seconds"], "images_per_s": h["images_per_s"], "val_acc": h["val_acc"]}
        for h in history
    ]
    for row in per_epoch:
        console.say(f"[r18] epoch {row['epoch']:>3}: {row['seconds']:.1f} s/epoch, val acc {100 * row['val_acc']:.2f}%")
    summary = {"prepare_seconds": prepare_s, "epochs_planned": epochs, "epochs_done": len(per_epoch)}
    summary |= {"width": plan.r18_width, "per_epoch": per_epoch, "final": final}
    if error is not None:  # partial history is kept in the result, but the step failed
        raise PartialResult(str(error), summary)
    return summary


class PartialResult(RuntimeError):
    """A step failed after producing part of its result."""

    def __init__(self, message: str, partial: dict[str, Any]):
        super().__init__(message)
        self.partial = partial


# ----------------------------------------------------------------------------- step 3: smoke study
def smoke_overlay(plan: CheckPlan, lock_dir: Path) -> dict[str, Any]:
    return {
        "compute": {"device": plan.device, "slots_per_gpu": SMOKE_SLOTS, "lock_dir": str(lock_dir)},
        "runtime": {"precision": "auto", "channels_last": "auto"},
    }


def copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dst / part, ignore=ignore)
        else:
            shutil.copy2(src, dst / part)
    return dst


def smoke_run_placements(root: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((root / "results" / "runs").rglob("metrics.json")):
        env = json.loads(path.read_text(encoding="utf-8"))["environment"]
        rel = path.parent.relative_to(root / "results" / "runs").as_posix()
        rows.append({"run": rel} | {k: env[k] for k in ("device", "device_name", "precision", "channels_last")})
    return rows


def placement_as_expected(plan: CheckPlan, run: dict[str, Any]) -> bool:
    """On the CPU: the CPU; on a GPU: CUDA with what ``auto`` means there (bf16 autocast, channels_last)."""
    if plan.cpu:
        return run["device"] == "cpu"
    return run["device"].startswith("cuda") and run["precision"] == "bfloat16" and run["channels_last"] is True


def step_smoke(plan: CheckPlan, outdir: Path, tmp: Path, console: Console, results: dict) -> dict[str, Any]:
    import torch

    root = copy_workflow(tmp / "smoke")
    (root / "gpucheck.yaml").write_text(json.dumps(smoke_overlay(plan, tmp / "locks")), encoding="utf-8")
    n_gpus = 0 if plan.cpu else torch.cuda.device_count()
    cmd = kdcore_cmd("snakemake", "--configfile", "config/smoke.yaml", "gpucheck.yaml", "--cores", str(os.cpu_count()))
    cmd += ["--resources", f"gpu={SMOKE_SLOTS * n_gpus}"] if n_gpus else []
    cmd += ["--until", *plan.smoke_until]
    env = child_env() | {"KDCORE_LOCK_DIR": str(tmp / "locks")}
    start = time.perf_counter()
    run_logged(cmd, plan.time_for("smoke"), console, "smoke", cwd=root, env=env)
    runs = smoke_run_placements(root)
    if not runs:
        raise RuntimeError("smoke: Snakemake finished but no run wrote a metrics.json")
    wrong = [r["run"] for r in runs if not placement_as_expected(plan, r)]
    if wrong:
        expected = plan.device + ("" if plan.cpu else ", bfloat16, channels_last")
        raise PartialResult(f"smoke: runs not placed as expected ({expected}): {wrong}", {"runs": runs})
    placements = sorted({(r["device"], r["precision"], r["channels_last"]) for r in runs})
    return {
        "seconds": time.perf_counter() - start,
        "n_runs": len(runs),
        "placements": [{"device": d, "precision": p, "channels_last": c} for d, p, c in placements],
        "runs": runs,
    }


# ----------------------------------------------------------------------------- step 4: concurrency
def step_concurrency(plan: CheckPlan, outdir: Path, tmp: Path, console: Console, results: dict) -> dict[str, Any]:
    out = tmp / "concurrency.json"
    cmd = self_cmd("concurrency", "--device", plan.device, "--out", str(out))
    cmd += ["--procs", *map(str, plan.concurrency_procs), "--steps", str(plan.concurrency_steps)]
    cmd += ["--width", str(plan.concurrency_width), "--batch-size", str(plan.batch_size)]
    cmd += ["--warmup", str(plan.concurrency_warmup)]
    cmd += ["--threads", str(plan.threads)] if plan.threads else []
    try:
        run_logged(cmd, plan.time_for("concurrency"), console, "concurrency")
    except StepTimeout as exc:
        if out.exists():
            raise PartialResult(str(exc), json.loads(out.read_text(encoding="utf-8"))) from None
        raise
    return json.loads(out.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- the check
STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "bench": step_bench,
    "r18": step_r18,
    "smoke": step_smoke,
    "concurrency": step_concurrency,
}


def environment() -> dict[str, Any]:
    import torch

    from kdcore.provenance import cpu_name

    cuda = torch.cuda.is_available()
    return {
        "device_name": torch.cuda.get_device_name(0) if cuda else cpu_name(),
        "gpus": torch.cuda.device_count() if cuda else 0,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "hostname": platform.node(),
    }


def run_step(name: str, plan: CheckPlan, outdir: Path, tmp: Path, console: Console, results: dict) -> None:
    console.say(f"==== step {name} ====")
    start = time.perf_counter()
    entry: dict[str, Any] = {"status": "ok"}
    try:
        entry["result"] = STEPS[name](plan, outdir, tmp, console, results)
    except Exception as exc:  # a failing step is recorded and the check goes on
        entry["status"] = "timeout" if "budget" in str(exc) else "failed"
        entry["error"] = str(exc) if isinstance(exc, (RuntimeError, OSError)) else traceback.format_exc()
        if isinstance(exc, PartialResult):
            entry["result"] = exc.partial
        console.say(f"[{name}] FAILED: {entry['error']}")
    entry["wall_s"] = time.perf_counter() - start
    results["steps"][name] = entry
    write_outputs(outdir, results)
    console.say(f"==== step {name}: {entry['status']} in {entry['wall_s']:.0f} s ====")


def write_outputs(outdir: Path, results: dict) -> None:
    serialisable = {**results, "archive_path": str(results["archive_path"]) if results["archive_path"] else None}
    atomic_write_json(outdir / "results.json", serialisable)
    atomic_write_text(outdir / "results.md", results_markdown(serialisable))


#: Modules the check's steps import (bench, training, the smoke study's training rules through Snakemake).
NEEDED_MODULES = ("torch", "torchvision", "numpy", "PIL", "yaml", "jsonschema", "snakemake", "kdcore.engine")
#: Modules only the smoke study's analysis rules import: not needed, since the smoke step runs training only (the
#: pre-flight notes those not installed, without importing them).
ANALYSIS_MODULES = ("pandas", "scipy", "statsmodels", "matplotlib", "seaborn")
IMPORT_PROBE = """
import importlib, importlib.util, json, sys
found = {}
for arg in sys.argv[1:]:
    name = arg.removeprefix("?")
    try:
        if arg.startswith("?"):
            found[name] = None if importlib.util.find_spec(name) else "not installed"
        else:
            importlib.import_module(name)
            found[name] = None
    except Exception as exc:
        found[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
print(json.dumps(found))
"""


def import_problems(modules: tuple[str, ...], timeout: float) -> dict[str, str]:
    """``{module: error}`` for the modules that a fresh subprocess (the steps' environment) cannot import; a name
    written ``?name`` is only looked for (installed or not, without the seconds that importing it takes)."""
    cmd = [sys.executable, "-c", IMPORT_PROBE, *modules]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"(imports)": f"importing {', '.join(modules)} took longer than {timeout:.0f} s"}
    if done.returncode != 0:
        return {"(imports)": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return {name: error for name, error in json.loads(done.stdout).items() if error}


def archive_problem(archive: Path | None) -> str | None:
    """Why ``archive`` is not a readable CIFAR-10 archive with train/ and test/ folders, at the top or under one
    top-level folder as the ``folder`` data source accepts them (one line), or None."""
    import tarfile

    if archive is None or not archive.is_file():
        return f"CIFAR-10 archive not found: {archive} (put it in data/ or give it with --data)"
    seen: set[str] = set()
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = [part for part in member.name.split("/") if part not in ("", ".")]
                seen.update(part for part in parts[:2] if part in ("train", "test"))
                if len(seen) == 2:
                    return None
    except (OSError, tarfile.TarError, EOFError) as exc:
        return f"cannot read the archive {archive}: {exc}"
    return f"{archive} holds no {' and '.join(sorted({'train', 'test'} - seen))}/ folder"


def preflight(plan: CheckPlan, archive: Path | None) -> dict[str, Any]:
    """Imports and data, checked before any step: ``{"problems": [...], "analysis_modules_missing": [...]}``."""
    failed = import_problems(NEEDED_MODULES + tuple(f"?{m}" for m in ANALYSIS_MODULES), plan.time_for("preflight"))
    problems = [f"cannot import {name}: {error}" for name, error in failed.items() if name not in ANALYSIS_MODULES]
    if not plan.cpu:
        problem = archive_problem(archive)
        if problem:
            problems.append(problem)
    missing = sorted(name for name in failed if name in ANALYSIS_MODULES)
    return {"problems": problems, "analysis_modules_missing": missing}


class CheckInterrupted(BaseException):
    """The check received SIGTERM (e.g. from the script's timeout backstop). A BaseException, like
    KeyboardInterrupt: a step's ``except Exception`` must not record it as that step's failure and go on."""


def raise_on_sigterm(signum: int, _frame: Any) -> None:
    raise CheckInterrupted(f"stopped by {signal.Signals(signum).name}")


def verdict(results: dict) -> tuple[int, str]:
    """The exit status and the last line of a check: 2 when the pre-flight stopped it (no step ran), 1 when it
    was interrupted or a step failed, timed out or was skipped, 0 when every step ran and is ok."""
    problems = (results.get("preflight") or {}).get("problems") or []
    if problems:
        return 2, "stopped at pre-flight, no step ran: " + "; ".join(problems)
    not_ok = [f"{name} ({step['status']})" for name, step in results["steps"].items() if step["status"] != "ok"]
    failed = f"FAILED steps: {', '.join(not_ok)}" if not_ok else ""
    if "interrupted" in results:
        unfinished = [name for name in STEP_NAMES if name not in results["steps"]]
        parts = [f"interrupted ({results['interrupted']})", f"not finished: {', '.join(unfinished) or 'none'}"]
        return 1, "; ".join([*parts, failed] if failed else parts)
    return (1, failed) if not_ok else (0, "all steps ok")


def finish(outdir: Path, console: Console, results: dict, started: float) -> int:
    """Write the results (whatever they hold), print them and the verdict; return the exit status."""
    results["wall_s"] = time.perf_counter() - started
    write_outputs(outdir, results)
    console.say((outdir / "results.md").read_text(encoding="utf-8"))
    status, line = verdict(results)
    console.say(f"gpu-check: {line}")
    return status


def run_steps(plan: CheckPlan, outdir: Path, console: Console, results: dict) -> None:
    """Every step in order, each within what is left of the total; steps with no time left are skipped."""
    with tempfile.TemporaryDirectory(prefix="kdcore-gpucheck-") as tmp:
        for name in STEP_NAMES:
            if plan.remaining() - RESULTS_MARGIN_S < 1:
                error = f"skipped: the check's total budget of {plan.total_s:.0f} s is spent"
                results["steps"][name] = {"status": "skipped", "error": error, "wall_s": 0.0}
                console.say(f"[{name}] {error}")
                continue
            step_tmp = Path(tmp) / name
            step_tmp.mkdir()
            run_step(name, plan, outdir, step_tmp, console, results)


def run_check(outdir: Path, archive: Path | None, cpu: bool, total_s: float | None = None) -> int:
    """The whole check within ``total_s`` (default: the plan's) seconds; results are written after every step,
    and on any failure or SIGTERM what was measured so far is kept. Exit status 2 when the pre-flight fails."""
    started = time.perf_counter()
    plan = cpu_plan() if cpu else gpu_plan()
    total = plan.total_s if total_s is None else total_s
    plan = dataclasses.replace(plan, total_s=total, deadline=time.monotonic() + total)
    outdir.mkdir(parents=True, exist_ok=True)
    console = Console(outdir / "check.log")
    console.log_path.write_text("", encoding="utf-8")
    results: dict[str, Any] = {
        "schema_version": 1,
        "kind": "gpu-check",
        "mode": "cpu" if cpu else "gpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "budgets_s": plan.budgets,
        "total_budget_s": total,
        "archive_path": archive,
        "steps": {},
    }
    console.say(f"gpu-check ({results['mode']}) on {results['environment']['device_name']}, outputs in {outdir}")
    checked = preflight(plan, archive)
    results["preflight"] = checked
    missing = ", ".join(checked["analysis_modules_missing"]) or "none"
    console.say(f"[preflight] analysis packages missing (not needed by the check): {missing}")
    if checked["problems"]:
        for problem in checked["problems"]:
            console.say(f"[preflight] {problem}")
        return finish(outdir, console, results, started)  # 2, and the last line names the problems
    previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        run_steps(plan, outdir, console, results)
    except (CheckInterrupted, KeyboardInterrupt) as exc:
        results["interrupted"] = str(exc) or type(exc).__name__
        console.say(f"gpu-check: {results['interrupted']}; keeping the results so far")
        return finish(outdir, console, results, started)  # 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return finish(outdir, console, results, started)


def check_inputs(archive: Path | None, cpu: bool) -> str | None:
    """Why the check cannot start (one line), or None."""
    if cpu:
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch; run with --cpu for the CPU-sized check"
    return None


# ----------------------------------------------------------------------------- concurrency subcommand
def build_r18_step(width: int, batch_size: int, device: str, threads: int | None):
    """(run state, step function, placement, config) of a ResNet-18 baseline on the engine's fast path."""
    import torch

    from kdcore.bench import Case, build_case
    from kdcore.devices import configure_backend, make_placement
    from kdcore.engine import RunState, make_step_fn

    runtime = {"device": device, "threads": threads}
    cfg, method, student, teacher, trainable = build_case(Case("resnet18"), width, runtime, batch_size)
    placement = make_placement(cfg["runtime"])
    configure_backend(cfg["runtime"], placement.device)
    student.to(placement.device, memory_format=placement.memory_format)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step_fn = make_step_fn(student, trainable, optimizer, method, teacher, cfg, placement)
    return RunState(student, trainable, optimizer, history=[]), step_fn, placement, cfg


def wait_for(path: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what} ({path})")
        time.sleep(0.01)


def cmd_worker(args: argparse.Namespace) -> int:
    """One training process: warm up, report ready, wait for the common start, time ``steps`` steps."""
    from kdcore.bench import synchronize, synthetic_images
    from kdcore.engine import train_one_epoch
    from kdcore.provenance import device_name

    state, step_fn, placement, cfg = build_r18_step(args.width, args.batch_size, args.device, args.threads)
    images, labels = synthetic_images(args.steps * args.batch_size, seed=args.seed)
    images, labels = images.to(placement.device), labels.to(placement.device)
    warm = args.warmup * args.batch_size
    train_one_epoch(0, state, step_fn, images[:warm], labels[:warm], cfg, placement)
    synchronize(placement.device)
    atomic_write_text(args.ready, "ready\n")
    wait_for(args.go, 300, "the start signal")
    synchronize(placement.device)
    start = time.time()  # wall clock: comparable across the processes
    train_one_epoch(0, state, step_fn, images, labels, cfg, placement)
    synchronize(placement.device)
    end = time.time()
    n_images = int(labels.shape[0])
    record = {"start": start, "end": end, "images": n_images, "images_per_s": n_images / (end - start)}
    record |= {"device": str(placement.device), "device_name": device_name(placement.device)}
    record |= {"precision": str(placement.dtype).replace("torch.", ""), "channels_last": placement.channels_last}
    atomic_write_json(args.out, record)
    return 0


def worker_cmd(args: argparse.Namespace, folder: Path, index: int, threads: int) -> list[str]:
    return self_cmd(
        "worker", "--device", args.device, "--width", str(args.width),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--threads", str(threads), "--seed", str(index), "--ready", str(folder / f"ready{index}"),
        "--go", str(folder / "go"), "--out", str(folder / f"worker{index}.json"),
    )  # fmt: skip


def run_concurrent(args: argparse.Namespace, n_procs: int, folder: Path) -> dict[str, Any]:
    """Start ``n_procs`` workers, release them together once all are warm, aggregate their throughput."""
    folder.mkdir(parents=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // n_procs)
    procs = [subprocess.Popen(worker_cmd(args, folder, i, threads), env=child_env()) for i in range(n_procs)]
    try:
        deadline = time.monotonic() + 300
        while not all((folder / f"ready{i}").exists() for i in range(n_procs)):
            failed = [p.returncode for p in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"{n_procs} processes: a worker failed before starting (exit {failed})")
            time.sleep(0.01)
        (folder / "go").write_text("go\n", encoding="utf-8")
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(codes):
        raise RuntimeError(f"{n_procs} processes: worker exit statuses {codes}")
    records = [json.loads((folder / f"worker{i}.json").read_text(encoding="utf-8")) for i in range(n_procs)]
    window = max(r["end"] for r in records) - min(r["start"] for r in records)
    total = sum(r["images"] for r in records)
    return {
        "processes": n_procs,
        "aggregate_images_per_s": total / window,
        "per_process_images_per_s": [r["images_per_s"] for r in records],
        "window_s": window,
        "threads_per_process": threads,
        "device": records[0]["device"],
        "device_name": records[0]["device_name"],
        "precision": records[0]["precision"],
        "channels_last": records[0]["channels_last"],
    }


def cmd_concurrency(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdcore-concurrency-") as tmp:
        for n_procs in args.procs:
            row = run_concurrent(args, n_procs, Path(tmp) / f"n{n_procs}")
            rows.append(row)
            print(
                f"{n_procs} process(es): {row['aggregate_images_per_s']:.0f} img/s aggregate "
                f"({', '.join(f'{v:.0f}' for v in row['per_process_images_per_s'])} per process)",
                flush=True,
            )
            if args.out:  # after each row, so that a run cut short keeps what it measured
                atomic_write_json(args.out, concurrency_result(args, rows))
    return 0


def concurrency_result(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"width": args.width, "batch_size": args.batch_size, "steps": args.steps, "rows": rows}


def add_concurrency_arguments(sub: Any) -> None:
    p = sub.add_parser("concurrency", help="aggregate images/s of N ResNet-18 training processes side by side")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--device", default="cuda", help="cpu, cuda, cuda:N (every process uses this device)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per process first")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default: CPUs / processes)")
    p.add_argument("--out", type=Path, help="JSON file to write")
    p.set_defaults(func=cmd_concurrency)
    p = sub.add_parser("worker", help="(internal) one process of `concurrency`")
    for name in ("--device", "--ready", "--go", "--out"):
        p.add_argument(name, required=True, type=str if name == "--device" else Path)
    for name in ("--width", "--batch-size", "--steps", "--warmup", "--threads", "--seed"):
        p.add_argument(name, type=int, required=True)
    p.set_defaults(func=cmd_worker)


# ----------------------------------------------------------------------------- markdown
def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def bench_lines(result: dict[str, Any]) -> list[str]:
    if "rows" not in result:
        return ["Rows printed before the bench was stopped:", "", "```", *result.get("printed_rows", []), "```"]
    rows = [
        [r["case"], fmt(r["fast_images_per_s"]), fmt(r["standard_images_per_s"]), fmt(r["speedup"], 2) + "x",
         fmt(r["fast_epoch_s"], 1), fmt(r["standard_epoch_s"], 1),
         "-" if r.get("cached_gain") is None else fmt(r["cached_gain"], 2) + "x",
         "-" if r["utilisation"] is None else f"{100 * r['utilisation']:.0f}%",
         fmt(r.get("precision")), fmt(r.get("host_sync_in_steps"))]
        for r in result["rows"]
    ]  # fmt: skip
    header = ["case", "fast img/s", "standard img/s", "ratio", "fast s/epoch", "standard s/epoch", "cached teacher",
              "util", "precision", "host syncs in steps"]  # fmt: skip
    lines = [f"Width {result['width']}, 45k-image epochs.", "", *table(header, rows)]
    if "study_gpu_hours" in result:
        lines += ["", f"Whole study (config.yaml, {result['study_jobs']} training jobs) from these epoch times: "
                  f"{result['study_gpu_hours']:.1f} GPU-hours (`kdcore plan --bench`)."]  # fmt: skip
    return lines


def r18_lines(result: dict[str, Any]) -> list[str]:
    head = (
        f"ResNet-18 width {result['width']}: {result['epochs_done']} of {result['epochs_planned']} epoch(s), "
        f"data preparation {result['prepare_seconds']:.0f} s."
    )
    rows = [
        [str(e["epoch"]), fmt(e["seconds"], 1), fmt(e["images_per_s"]), fmt(100 * e["val_acc"], 2)]
        for e in result["per_epoch"]
    ]
    lines = [head, "", *table(["epoch", "s/epoch", "img/s", "val acc %"], rows)]
    final = result.get("final")
    if final:
        lines += ["", f"Test accuracy at best val: {100 * final['test_acc_best']:.2f}%; "
                  f"device {final['environment']['device']}, {final['environment']['precision']}."]  # fmt: skip
    return lines


def smoke_lines(result: dict[str, Any]) -> list[str]:
    placements = result.get("placements") or sorted(
        ({"device": r["device"], "precision": r["precision"], "channels_last": r["channels_last"]}
         for r in result.get("runs", [])), key=str,
    )  # fmt: skip
    rows = [[p["device"], p["precision"], str(p["channels_last"])] for p in placements]
    head = f"{result.get('n_runs', len(result.get('runs', [])))} training run(s) through Snakemake"
    if "seconds" in result:
        head += f" in {result['seconds']:.0f} s"
    return [head + ".", "", *table(["device", "precision", "channels_last"], rows)]


def concurrency_lines(result: dict[str, Any]) -> list[str]:
    rows = [
        [str(r["processes"]), fmt(r["aggregate_images_per_s"]),
         ", ".join(fmt(v) for v in r["per_process_images_per_s"]), r["precision"]]
        for r in result["rows"]
    ]  # fmt: skip
    head = f"ResNet-18 width {result['width']}, batch {result['batch_size']}, {result['steps']} timed steps each."
    return [head, "", *table(["processes", "aggregate img/s", "per process img/s", "precision"], rows)]


SECTION_LINES = {"bench": bench_lines, "r18": r18_lines, "smoke": smoke_lines, "concurrency": concurrency_lines}
SECTION_TITLES = {
    "bench": "Benchmark: fast path against the standard recipe",
    "r18": "ResNet-18 baseline on the full CIFAR-10 split",
    "smoke": "Smoke study through Snakemake",
    "concurrency": "Concurrent ResNet-18 training processes",
}


def results_markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# kdcore GPU check ({results['mode']})",
        "",
        f"{env['device_name']}, torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, "
        f"{env['cpus']} CPUs; started {results['started']}.",
        "",
        *table(
            ["step", "status", "wall s"],
            [[n, s["status"], fmt(s["wall_s"])] for n, s in results["steps"].items()],
        ),
    ]
    for name, step in results["steps"].items():
        lines += ["", f"## {SECTION_TITLES[name]}", ""]
        if step["status"] != "ok":
            lines += [f"**{step['status']}**: " + step["error"].strip().splitlines()[0], ""]
        if step.get("result"):
            lines += SECTION_LINES[name](step["result"])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 tools/gpucheck.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the whole check")
    p.add_argument("outdir", type=Path)
    p.add_argument("--data", type=Path, help="CIFAR-10 JPEG archive (train/<class>/*, test/<class>/*)")
    p.add_argument("--cpu", action="store_true", help="CPU-sized check (synthetic data, small models)")
    p.add_argument(
        "--total-s", type=float, help=f"seconds for the whole check (default {GPU_TOTAL_S:.0f}; CPU-sized: 1175)"
    )
    add_concurrency_arguments(sub)
    args = parser.parse_args(argv)
    if args.command != "run":
        return args.func(args)
    archive = args.data.resolve() if args.data else None
    problem = check_inputs(archive, args.cpu)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return run_check(args.outdir.resolve(), archive, args.cpu, args.total_s)


if __name__ == "__main__":
    raise SystemExit(main())
