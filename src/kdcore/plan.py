"""``kdcore plan``: what a study will cost before it runs: its training jobs, model-epochs and GPU-hours.

The jobs are the study's training runs (:func:`kdcore.study.build_study`, the runs the workflow trains), each
read as (stage, student, teacher, method, epochs). A job processes ``epochs x training images`` images,
where the training images are the training split after the validation hold-out (45,000 for CIFAR-10 with
``val_size: 5000``) or the subset's size when ``data.subset.train`` is set.

GPU-hours come from one of two cost models:

* **measured** (``--bench bench.json``, the output of ``python -m kdcore.bench``): a job's training time is
  its images times the measured fast-path seconds per image of its (student, teacher, method) case. A
  forward pass of a model (validation, test) costs a third of its baseline case's seconds per
  image. Jobs whose case the benchmark lacks (e.g. ImageNet-stem runs) fall back to FLOPs at the median
  TFLOP/s the benchmark achieved on its device (or at ``--throughput`` when given), and the output counts them.
* **FLOPs** (otherwise): FLOPs per image of each built model (:func:`kdcore.models.count_flops_per_image`),
  a training image costing 3 student forwards (forward + backward) plus 1 forward of the frozen teacher,
  at a stated sustained throughput (default 100 TFLOP/s, a bf16 rate an H100 sustains on these small
  convolutions only in the best case).

Both add the evaluations a run makes: its validation set after every epoch and the test set twice (best
and final weights). Fidelity to the teacher costs no GPU time: the analysis measures it from the test logits
that every run stores (kdcore.fidelity).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from kdcore.errors import ConfigError
from kdcore.labels import chain_network
from kdcore.study import STAGES, Run, build_study

DEFAULT_THROUGHPUT_TFLOPS = 100.0
#: Images of CIFAR-10's training and test sources.
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
#: The images of one epoch that the benchmark's ``fast_epoch_s`` refers to (``kdcore.bench.EPOCH_IMAGES``).
BENCH_EPOCH_IMAGES = 45_000
#: A training step costs this many forward passes of the student (forward + backward).
STUDENT_STEP_FORWARDS = 3
#: Test-set evaluations of every training run (the best and the final weights).
TEST_PASSES = 2


@dataclass(frozen=True)
class DataSizes:
    """Images of the study's train, validation and test splits."""

    train: int
    val: int
    test: int


@dataclass(frozen=True)
class Job:
    """One training run of a study."""

    stage: str
    path: str
    student: str
    teacher: str | None
    method: str
    epochs: int
    stem: str = "cifar"


@dataclass
class JobEstimate:
    job: Job
    images: int
    gpu_hours: float
    source: str  # "bench" or "flops"


@dataclass
class StudyPlan:
    data: DataSizes
    width: int
    basis: str
    jobs: list[JobEstimate]
    flops_fallbacks: list[str] = field(default_factory=list)

    def stages(self) -> dict[str, dict[str, float]]:
        """Per stage (in the study's order): jobs, model-epochs, images and GPU-hours."""
        out: dict[str, dict[str, float]] = {}
        for stage in STAGES:
            chosen = [e for e in self.jobs if e.job.stage == stage]
            if chosen:
                out[stage] = {
                    "jobs": len(chosen),
                    "model_epochs": sum(e.job.epochs for e in chosen),
                    "images": sum(e.images for e in chosen),
                    "gpu_hours": sum(e.gpu_hours for e in chosen),
                }
        return out

    def totals(self) -> dict[str, float]:
        train_hours = sum(e.gpu_hours for e in self.jobs)
        return {
            "jobs": len(self.jobs),
            "model_epochs": sum(e.job.epochs for e in self.jobs),
            "images": sum(e.images for e in self.jobs),
            "gpu_hours": train_hours,
        }


# ----------------------------------------------------------------------------- the study's jobs
def data_sizes(data: Mapping[str, Any]) -> DataSizes:
    """Train/val/test sizes of a (validated) data spec: the source's images, the hold-out, the subsets."""
    if data["source"] == "synthetic":
        synthetic = data.get("synthetic") or {}
        total, test = synthetic.get("n_train", CIFAR10_TRAIN), synthetic.get("n_test", CIFAR10_TEST)
    else:
        total, test = CIFAR10_TRAIN, CIFAR10_TEST
    val = data["val_size"]
    if val >= total:
        raise ConfigError(f"config key 'data.val_size': {val} leaves no training images out of {total}")
    sizes = {"train": total - val, "val": val, "test": test}
    subset = data.get("subset") or {}
    for split, full in sizes.items():
        if subset.get(split) is not None:
            sizes[split] = min(subset[split], full)
    return DataSizes(**sizes)


def job_of(run: Run) -> Job:
    """The models and method of one run of the study (kdcore.study)."""
    return Job(run.stage, run.folder, run.network, run.teacher, run.method, run.epochs, run.stem)


def training_jobs(study: Mapping[str, Any]) -> list[Job]:
    """Every training job of a validated study config, in the study's order."""
    return [job_of(run) for run in build_study(study).runs]


# ----------------------------------------------------------------------------- cost models
class CostModel(Protocol):
    basis: str

    def train_seconds_per_image(self, job: Job) -> tuple[float, str]: ...

    def forward_seconds_per_image(self, arch: str, stem: str) -> float: ...


@cache
def flops_per_image(label: str, width: int, stem: str) -> int:
    """Forward FLOPs of one 32x32 image through a freshly built network ``label`` (an architecture, or
    ``<arch>-w<width>``) of a study whose ``model.width`` is ``width``."""
    from kdcore.config import network_spec
    from kdcore.models import build_model, count_flops_per_image

    spec = network_spec(label, stem, width)
    return count_flops_per_image(build_model(spec["arch"], spec.get("width"), spec["stem"]))


class FlopsCost:
    """Seconds from FLOPs at a stated sustained throughput."""

    def __init__(self, width: int, throughput_tflops: float = DEFAULT_THROUGHPUT_TFLOPS, measured: bool = False):
        if not (isinstance(throughput_tflops, int | float) and math.isfinite(throughput_tflops)) or (
            throughput_tflops <= 0
        ):
            raise ConfigError(f"--throughput: expected a positive number of TFLOP/s, got {throughput_tflops!r}")
        self.width, self.rate = width, throughput_tflops * 1e12
        how = "the benchmark's median achieved" if measured else "a sustained"
        self.basis = f"FLOPs at {how} {throughput_tflops:.3g} TFLOP/s" + ("" if measured else " (stated, not measured)")

    def forward_seconds_per_image(self, arch: str, stem: str = "cifar") -> float:
        return flops_per_image(arch, self.width, stem) / self.rate

    def train_seconds_per_image(self, job: Job) -> tuple[float, str]:
        seconds = STUDENT_STEP_FORWARDS * self.forward_seconds_per_image(job.student, job.stem)
        if job.teacher is not None:
            seconds += self.forward_seconds_per_image(job.teacher)
        return seconds, "flops"


BENCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "width", "rows"],
    "properties": {
        "kind": {"const": "bench"},
        "width": {"type": "integer", "minimum": 1},
        "batch_size": {"type": "integer", "minimum": 1},
        "device_name": {"type": "string"},
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["student", "teacher", "method", "fast_epoch_s"],
                "properties": {
                    "student": {"type": "string"},
                    "teacher": {"type": ["string", "null"]},
                    "method": {"type": "string"},
                    "fast_epoch_s": {"type": "number", "exclusiveMinimum": 0},
                    "achieved_tflops": {"type": ["number", "null"], "exclusiveMinimum": 0},
                },
            },
        },
    },
}


def bench_median_tflops(bench: Mapping[str, Any]) -> float | None:
    """The median achieved TFLOP/s of a benchmark's fast path over its cases (None when it records none)."""
    import statistics

    values = [r["achieved_tflops"] for r in bench["rows"] if r.get("achieved_tflops")]
    return statistics.median(values) if values else None


def load_bench(path: str | Path) -> dict[str, Any]:
    """A benchmark JSON of ``python -m kdcore.bench``, checked; errors name the file and the field."""
    import jsonschema

    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(BENCH_SCHEMA).iter_errors(record))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{path}: not a kdcore.bench result: {where}: {error.message}")
    return record


class BenchCost:
    """Seconds from a benchmark's measured fast-path epoch times; cases it lacks from ``fallback``."""

    def __init__(self, bench: Mapping[str, Any], width: int, fallback: FlopsCost, source: str = "benchmark"):
        if bench["width"] != width:
            raise ConfigError(
                f"{source}: measured at width {bench['width']}, the study trains width {width} "
                "(rerun python -m kdcore.bench --width with the study's model.width)"
            )
        self.per_image = {
            (r["student"], r["teacher"], r["method"]): r["fast_epoch_s"] / BENCH_EPOCH_IMAGES for r in bench["rows"]
        }
        self.fallback = fallback
        device = bench.get("device_name", "an unnamed device")
        batch = f", batch {bench['batch_size']}" if "batch_size" in bench else ""
        self.basis = f"measured epoch times of {source} ({device}, width {width}{batch})"

    def forward_seconds_per_image(self, arch: str, stem: str = "cifar") -> float:
        step = self.per_image.get((arch, None, "baseline")) if stem == "cifar" else None
        return step / STUDENT_STEP_FORWARDS if step is not None else self.fallback.forward_seconds_per_image(arch, stem)

    def train_seconds_per_image(self, job: Job) -> tuple[float, str]:
        teacher = None if job.teacher is None else chain_network(job.teacher)  # a chain teacher's network
        key = (job.student, teacher, job.method)
        if job.stem == "cifar" and key in self.per_image:
            return self.per_image[key], "bench"
        return self.fallback.train_seconds_per_image(job)


# ----------------------------------------------------------------------------- the estimate
def estimate_job(job: Job, data: DataSizes, cost: CostModel) -> JobEstimate:
    """Images and GPU-hours of one training job: its epochs, validation after each, two test passes."""
    images = job.epochs * data.train
    per_image, source = cost.train_seconds_per_image(job)
    evaluated = job.epochs * data.val + TEST_PASSES * data.test
    seconds = images * per_image + evaluated * cost.forward_seconds_per_image(job.student, job.stem)
    return JobEstimate(job, images, seconds / 3600, source)


def plan_study(
    study: Mapping[str, Any],
    *,
    bench: Mapping[str, Any] | None = None,
    bench_source: str = "benchmark",
    throughput_tflops: float | None = None,
) -> StudyPlan:
    """The plan of a validated study config: every training job's images and GPU-hours.

    ``throughput_tflops`` (None: 100, or with ``bench`` the benchmark's median achieved TFLOP/s) prices the
    FLOPs of every job without ``bench`` and of the jobs whose case ``bench`` lacks."""
    width = study["model"]["width"]
    data = data_sizes(study["data"])
    measured = bench_median_tflops(bench) if bench is not None and throughput_tflops is None else None
    if measured is not None:
        flops = FlopsCost(width, measured, measured=True)
    else:
        flops = FlopsCost(width, DEFAULT_THROUGHPUT_TFLOPS if throughput_tflops is None else throughput_tflops)
    cost: CostModel = flops if bench is None else BenchCost(bench, width, flops, bench_source)
    jobs = training_jobs(study)
    estimates = [estimate_job(job, data, cost) for job in jobs]
    basis = cost.basis
    fallbacks = [e.job.path for e in estimates if bench is not None and e.source == "flops"]
    if fallbacks:
        basis += f"; {len(fallbacks)} job(s) not in the benchmark from {flops.basis}"
    return StudyPlan(data, width, basis, estimates, fallbacks)


# ----------------------------------------------------------------------------- output
def job_groups(plan: StudyPlan) -> list[dict[str, Any]]:
    """Jobs that differ only in seed or hyper-parameters, counted together (in the plan's order)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for e in plan.jobs:
        j = e.job
        student = j.student if j.stem == "cifar" else f"{j.student} ({j.stem} stem)"
        key = (j.stage, student, j.teacher, j.method, j.epochs)
        group = groups.setdefault(key, {"count": 0, "gpu_hours": 0.0})
        group["count"] += 1
        group["gpu_hours"] += e.gpu_hours
    return [
        {"stage": k[0], "student": k[1], "teacher": k[2], "method": k[3], "epochs": k[4], **g}
        for k, g in groups.items()
    ]


def render_text(plan: StudyPlan) -> str:
    """The plain-text report of ``kdcore plan``."""
    d = plan.data
    groups = job_groups(plan)
    tw = max([11, *(len(g["teacher"] or "") + 2 for g in groups)])  # chain teachers are long labels
    lines = [
        f"training images {d.train:,} (validation {d.val:,}, test {d.test:,}); width {plan.width}",
        f"GPU-hours from {plan.basis}",
        "",
        f"{'stage':<10}{'student':<26}{'teacher':<{tw}}{'method':<9}{'epochs':>7}{'jobs':>6}{'GPU-h':>9}",
    ]
    for g in groups:
        lines.append(
            f"{g['stage']:<10}{g['student']:<26}{g['teacher'] or '-':<{tw}}{g['method']:<9}"
            f"{g['epochs']:>7}{g['count']:>6}{g['gpu_hours']:>9.2f}"
        )
    lines += ["", f"{'stage':<10}{'jobs':>6}{'model-epochs':>14}{'images (M)':>12}{'GPU-h':>9}"]
    for stage, s in plan.stages().items():
        lines.append(
            f"{stage:<10}{s['jobs']:>6}{s['model_epochs']:>14,}{s['images'] / 1e6:>12.1f}{s['gpu_hours']:>9.2f}"
        )
    t = plan.totals()
    lines += [
        "",
        f"total: {t['jobs']} training jobs, {t['model_epochs']:,} model-epochs: {t['gpu_hours']:.1f} GPU-hours "
        "(fidelity is measured from the runs' stored test logits, no GPU job)",
    ]
    return "\n".join(lines) + "\n"


def to_json(plan: StudyPlan) -> str:
    record = {
        "data": asdict(plan.data),
        "width": plan.width,
        "basis": plan.basis,
        "jobs": [
            {**asdict(e.job), "images": e.images, "gpu_hours": e.gpu_hours, "source": e.source} for e in plan.jobs
        ],
        "stages": plan.stages(),
        "totals": plan.totals(),
        "flops_fallbacks": plan.flops_fallbacks,
    }
    return json.dumps(record, indent=2)
