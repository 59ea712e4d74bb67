"""Importer of the paper's per-run results zip into kdcore's metrics.json / fidelity.json files.

The paper's repository publishes ``raw_results_json.zip``: one ``results.json`` per run of its v2 study
(plus ``fidelity.json`` beside each final KD run), laid out as::

    runs/teachers/{r34,r50,r101}/seed<k>/
    runs/select/<teacher>_to_<student>/{logit/a<alpha>_t<T>,feature/a<alpha>}/seed<k>/
    runs/final/baseline/<student>/seed<k>/
    runs/final/<teacher>_to_<student>_{logit,feature}/seed<k>/      (+ fidelity.json)
    runs/stem_ablation/<arch>_{cifar,imagenet}/seed<k>/
    runs/bug_ablation/<teacher>_to_<student>/feature_bugged/a<alpha>/seed<k>/

:func:`import_reference` converts every run into the schema of docs/design.md (``metrics.json``,
``fidelity.json``) under ``out_dir/<run_id>/`` so that the whole analysis runs on the paper's numbers.
Runs are marked ``labels.source = "paper-reference"``. Facts the paper's files do not record (wall time,
ECE, per-class teacher accuracy, the projection gradient norm of runs that clipped it) are ``null``.

The importer writes only into an empty folder or one that holds an earlier import and nothing else
(:func:`claim_import_folder`), so it never overwrites a run of ours. A zip with two members of one name, or
a member larger than :data:`MAX_MEMBER_BYTES`, is refused before anything is decompressed in full.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from kdcore.atomic import IMPORT_SOURCE, OutputExistsError, atomic_write_json, file_maker
from kdcore.errors import DataError
from kdcore.runfolder import seal_record

log = logging.getLogger("kdcore.reference")

SOURCE_LABEL = IMPORT_SOURCE
#: Largest member the importer reads (the paper's largest results.json is about 60 kB).
MAX_MEMBER_BYTES = 8 * 1024 * 1024
PAPER_DEVICE = "A100 (paper)"
#: The paper trains on torchvision's CIFAR-10 with a 45k/5k train/val split of the 50k training images.
PAPER_DATA = {
    "fingerprint": None,
    "source": {"kind": "torchvision", "name": "CIFAR-10"},
    "synthetic": False,
    "split": "paper",
    "classes": None,
    "n_train": 45000,
    "n_val": 5000,
    "n_test": 10000,
}
PAPER_WIDTH = 64

_TEACHER_DIRS = {"r34": "resnet34", "r50": "resnet50", "r101": "resnet101"}
_ARCH = r"resnet(?:18|34|50|101)"
_SEED = r"seed(?P<seed>\d+)"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("teacher", re.compile(rf"^runs/teachers/(?P<tdir>r34|r50|r101)/{_SEED}$")),
    (
        "select",
        re.compile(
            rf"^runs/select/(?P<teacher>{_ARCH})_to_(?P<student>{_ARCH})/"
            rf"(?P<method>logit|feature)/a(?P<alpha>[0-9.]+)(?:_t(?P<temp>[0-9.]+))?/{_SEED}$"
        ),
    ),
    ("baseline", re.compile(rf"^runs/final/baseline/(?P<student>{_ARCH})/{_SEED}$")),
    (
        "final",
        re.compile(rf"^runs/final/(?P<teacher>{_ARCH})_to_(?P<student>{_ARCH})_(?P<method>logit|feature)/{_SEED}$"),
    ),
    ("stem", re.compile(rf"^runs/stem_ablation/(?P<student>{_ARCH})_(?P<stem>cifar|imagenet)/{_SEED}$")),
    (
        "clip",
        re.compile(
            rf"^runs/bug_ablation/(?P<teacher>{_ARCH})_to_(?P<student>{_ARCH})/"
            rf"(?P<method>feature)_bugged/a(?P<alpha>[0-9.]+)/{_SEED}$"
        ),
    ),
]
_REQUIRED = (
    "model",
    "teacher",
    "kd_type",
    "seed",
    "epochs",
    "best_val_acc",
    "best_val_epoch",
    "test_acc_best",
    "test_acc_final",
    "history",
)


def _seeds(n: int) -> list[str]:
    return [f"seed{k}" for k in range(n)]


def expected_members() -> list[str]:
    """Every member the paper's v2 results zip holds: 126 results.json and 40 fidelity.json files."""
    pairs = ("resnet34_to_resnet18", "resnet50_to_resnet18", "resnet50_to_resnet34", "resnet101_to_resnet34")
    alphas = ("0.3", "0.5", "0.7")
    grids = [f"feature/a{a}" for a in alphas] + [f"logit/a{a}_t{t}" for a in alphas for t in (2, 3, 4)]
    dirs = [f"runs/teachers/{t}/{s}" for t in _TEACHER_DIRS for s in _seeds(3)]
    dirs += [f"runs/select/{p}/{g}/seed0" for p in pairs for g in grids]
    dirs += [f"runs/final/baseline/{a}/{s}" for a in ("resnet18", "resnet34") for s in _seeds(5)]
    finals = [f"runs/final/{p}_{m}/{s}" for p in pairs for m in ("logit", "feature") for s in _seeds(5)]
    stems = [(a, 3) for a in ("resnet18", "resnet34")] + [("resnet50", 1)]
    dirs += finals + [
        f"runs/stem_ablation/{a}_{st}/{s}" for a, n in stems for st in ("cifar", "imagenet") for s in _seeds(n)
    ]
    dirs += [f"runs/bug_ablation/resnet50_to_resnet18/feature_bugged/a0.7/{s}" for s in _seeds(5)]
    return sorted([f"{d}/results.json" for d in dirs] + [f"{d}/fidelity.json" for d in finals])


def missing_members(names: list[str]) -> list[str]:
    """The members of the paper's layout (:func:`expected_members`) that ``names`` lacks."""
    present = set(names)
    return [m for m in expected_members() if m not in present]


def check_complete(zip_path: Path, names: list[str], allow_partial: bool) -> list[str]:
    """Compare a zip's members with the paper's layout; DataError if any is missing, unless ``allow_partial``
    (then one warning lists them). Returns the missing members."""
    missing = missing_members(names)
    if not missing:
        return missing
    expected = expected_members()
    found = len(expected) - len(missing)
    head = f"paper results zip {str(zip_path)!r} holds {found} of the {len(expected)} files the paper's layout has"
    if not allow_partial:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{head}; missing: {shown} (use --allow-partial to import it anyway)")
    log.warning("%s; importing anyway (allow_partial); missing:\n  %s", head, "\n  ".join(missing))
    return missing


@cache
def param_count(arch: str, stem: str = "cifar", num_classes: int = 10) -> int:
    """Number of parameters of torchvision's ``arch`` with a CIFAR (3x3, no max-pool) or ImageNet stem."""
    import torch
    import torch.nn as nn
    import torchvision.models as tvm

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = getattr(tvm, arch)(num_classes=num_classes)
        if stem == "cifar":
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return sum(p.numel() for p in model.parameters())


def _fmt(value: float) -> str:
    """Compact text of a hyper-parameter for a run id (0.7 -> '0.7', 4.0 -> '4')."""
    return f"{float(value):g}"


def classify_member(member: str) -> tuple[str, dict[str, str]]:
    """Stage and path fields of a zip member ``runs/.../results.json`` (from its directory)."""
    run_dir = str(PurePosixPath(member).parent)
    for stage, pattern in _PATTERNS:
        match = pattern.match(run_dir)
        if match:
            fields = {k: v for k, v in match.groupdict().items() if v is not None}
            if "tdir" in fields:
                fields["student"] = _TEACHER_DIRS[fields.pop("tdir")]
            return stage, fields
    raise DataError(
        f"paper zip member {member!r}: path matches no known run layout (runs/teachers, "
        "runs/select, runs/final, runs/stem_ablation, runs/bug_ablation)"
    )


def _method_name(kd_type: str, member: str) -> str:
    names = {"none": "baseline", "logit": "logit", "feature": "feature"}
    if kd_type not in names:
        raise DataError(f"paper zip member {member!r}: kd_type {kd_type!r} is not one of {sorted(names)}")
    return names[kd_type]


def _run_id(
    stage: str, student: str, teacher: str | None, method: str, stem: str, seed: int, alpha: float, temperature: float
) -> str:
    """Readable path-like id of a run, e.g. ``final/resnet50-resnet34/feature/seed3``."""
    pair = f"{teacher}-{student}" if teacher else student
    if stage == "select":
        grid = f"a{_fmt(alpha)}" + (f"-t{_fmt(temperature)}" if method == "logit" else "")
        return f"select/{pair}/{method}/{grid}/seed{seed}"
    if stage == "stem":
        return f"stem/{student}/{stem}/seed{seed}"
    if stage in ("teacher", "baseline"):
        return f"{stage}/{student}/seed{seed}"
    return f"{stage}/{pair}/{method}/seed{seed}"


def _check_result(raw: Any, member: str, stage: str, fields: dict[str, str]) -> dict[str, Any]:
    """Validate one results.json against its path; return it."""
    if not isinstance(raw, dict):
        raise DataError(f"paper zip member {member!r}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise DataError(f"paper zip member {member!r}: missing field(s) {', '.join(missing)}")
    for key in ("best_val_acc", "test_acc_best", "test_acc_final"):
        value = raw[key]
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise DataError(f"paper zip member {member!r}: field {key}={value!r} is not a fraction in [0, 1]")
    if not isinstance(raw["history"], list) or not raw["history"]:
        raise DataError(f"paper zip member {member!r}: field history must be a non-empty list")
    if int(raw["seed"]) != int(fields["seed"]):
        raise DataError(f"paper zip member {member!r}: field seed={raw['seed']!r} disagrees with the path")
    if raw["model"] != fields["student"]:
        raise DataError(f"paper zip member {member!r}: field model={raw['model']!r} disagrees with the path")
    if "teacher" in fields and raw["teacher"] != fields["teacher"]:
        raise DataError(f"paper zip member {member!r}: field teacher={raw['teacher']!r} disagrees with the path")
    if "method" in fields and raw["kd_type"] != fields["method"]:
        raise DataError(f"paper zip member {member!r}: field kd_type={raw['kd_type']!r} disagrees with the path")
    if stage in ("teacher", "baseline", "stem") and raw["teacher"] is not None:
        raise DataError(f"paper zip member {member!r}: a {stage} run must have teacher null")
    return raw


PAPER_ENVIRONMENT: dict[str, Any] = {
    **dict.fromkeys(("torch", "torchvision", "python", "precision", "threads", "git_commit", "hostname")),
    "device": "cuda",
    "device_name": PAPER_DEVICE,
}


def _convert_epoch(h: dict[str, Any], member: str) -> dict[str, Any]:
    """One paper history entry as a kdcore history entry (what the paper does not record is None)."""
    if "epoch" not in h or "val_acc" not in h:
        raise DataError(f"paper zip member {member!r}: a history entry lacks epoch or val_acc")
    return {
        "epoch": int(h["epoch"]),
        "lr": None,
        "loss": h.get("loss_total"),
        "loss_ce": h.get("loss_ce"),
        "loss_kd": h.get("loss_kd"),
        "train_acc": h.get("train_acc"),
        "val_acc": h["val_acc"],
        "grad_norm_mean": None,
        "grad_norm_max": h.get("grad_norm_max"),
        "proj_grad_norm_mean": None,
        "proj_grad_norm_max": h.get("proj_grad_norm_max"),
        "seconds": None,
        "images_per_s": None,
    }


def convert_result(raw: dict[str, Any], member: str) -> dict[str, Any]:
    """Convert one paper ``results.json`` (found at zip path ``member``) into a kdcore metrics dict."""
    stage, fields = classify_member(member)
    raw = _check_result(raw, member, stage, fields)
    student, teacher = raw["model"], raw["teacher"]
    method = _method_name(raw["kd_type"], member)
    stem = raw.get("stem", "cifar")
    seed = int(raw["seed"])
    alpha, temperature = float(raw.get("alpha", 0.5)), float(raw.get("temperature", 4.0))
    beta = float(raw.get("feat_beta", 0.5))
    run_id = _run_id(stage, student, teacher, method, stem, seed, alpha, temperature)
    method_cfg: dict[str, Any] = {"name": method}
    if method == "logit":
        method_cfg.update(alpha=alpha, temperature=temperature)
    elif method == "feature":
        method_cfg.update(alpha=alpha, beta=beta)
    has_proj = any("proj_grad_norm_max" in h for h in raw["history"])
    history = [_convert_epoch(h, member) for h in raw["history"]]
    labels = {"stage": stage, "run_id": run_id, "source": SOURCE_LABEL, "zip_member": member, "method": method}
    if teacher:
        labels["pair"] = f"{teacher}-{student}"
    teacher_block = None
    if teacher:
        teacher_block = {
            "arch": teacher,
            "width": PAPER_WIDTH,
            "stem": "cifar",
            "params": param_count(teacher, "cifar"),
            "checkpoint": None,
        }
    clip_scope = "student_only" if raw.get("no_proj_clip", False) else "all"
    return {
        "schema_version": 1,
        "kind": "train",
        "config": {
            "data": SOURCE_LABEL,
            "model": {"arch": student, "width": PAPER_WIDTH, "stem": stem},
            "teacher": None
            if teacher_block is None
            else {"arch": teacher, "width": PAPER_WIDTH, "stem": "cifar", "checkpoint": None},
            "method": method_cfg,
            "train": {"epochs": int(raw["epochs"]), "seed": seed, "clip_scope": clip_scope},
            "labels": labels,
        },
        "labels": labels,
        "environment": dict(PAPER_ENVIRONMENT),
        "data": dict(PAPER_DATA),
        "model": {"arch": student, "width": PAPER_WIDTH, "stem": stem, "params": param_count(student, stem)},
        "teacher": teacher_block,
        "history": history,
        "results": {
            "best_val_acc": float(raw["best_val_acc"]),
            "best_epoch": int(raw["best_val_epoch"]),
            "final_val_acc": float(history[-1]["val_acc"]),
            "test_acc_best": float(raw["test_acc_best"]),
            "test_acc_final": float(raw["test_acc_final"]),
            "grad_norm_max": raw.get("grad_norm_max_overall"),
            # The paper records projection gradient norms only in runs that did not clip them; elsewhere
            # its results.json holds a 0.0 placeholder, which we import as "not recorded".
            "proj_grad_norm_max": raw.get("proj_grad_norm_max_overall") if has_proj else None,
            "train_seconds": None,
            "epochs": int(raw["epochs"]),
        },
    }


def convert_fidelity(raw: Any, member: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Convert one paper ``fidelity.json`` into kdcore's fidelity dict, labelled like its student run."""
    need = ("student_arch", "teacher_arch", "student_test_acc", "teacher_test_acc", "top1_agreement", "kl_t1", "kl_t4")
    if not isinstance(raw, dict):
        raise DataError(f"paper zip member {member!r}: expected a JSON object")
    missing = [k for k in need if k not in raw]
    if missing:
        raise DataError(f"paper zip member {member!r}: missing field(s) {', '.join(missing)}")
    if raw["student_arch"] != metrics["model"]["arch"] or raw["teacher_arch"] != (metrics["teacher"] or {}).get("arch"):
        raise DataError(f"paper zip member {member!r}: student_arch/teacher_arch disagree with results.json")
    return {
        "schema_version": 1,
        "kind": "fidelity",
        "student": {"arch": raw["student_arch"], "checkpoint": raw.get("student_weights")},
        "teacher": {"arch": raw["teacher_arch"], "checkpoint": None},
        "teacher_arch": raw["teacher_arch"],
        "student_test_acc": raw["student_test_acc"],
        "teacher_test_acc": raw["teacher_test_acc"],
        "top1_agreement": raw["top1_agreement"],
        "kl_t1": raw["kl_t1"],
        "kl_t4": raw["kl_t4"],
        "ece_student": None,
        "ece_teacher": None,
        "per_class_acc_student": raw.get("per_class_acc"),
        "per_class_acc_teacher": None,
        "labels": dict(metrics["labels"], zip_member=member),
    }


def _too_large(member: str, size: str, limit: int) -> DataError:
    return DataError(f"paper zip member {member!r}: {size}, more than the {limit} bytes a results file may have")


def read_member(zf: zipfile.ZipFile, member: str, limit: int | None = None) -> bytes:
    """The bytes of ``member``, decompressing at most ``limit`` (default :data:`MAX_MEMBER_BYTES`) + 1 bytes
    whatever its header claims."""
    limit = MAX_MEMBER_BYTES if limit is None else limit
    info = zf.getinfo(member)
    if info.file_size > limit:
        raise _too_large(member, f"{info.file_size} bytes uncompressed", limit)
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise _too_large(member, "it decompresses to more than its header says", limit)
    return data


def _read_json(zf: zipfile.ZipFile, member: str) -> Any:
    try:
        return json.loads(read_member(zf, member).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"paper zip member {member!r}: not valid JSON ({exc})") from exc


def check_unique_members(zip_path: Path, names: list[str]) -> None:
    """DataError naming a member the zip holds twice (which of the two is meant cannot be known)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"paper results zip {str(zip_path)!r} holds two members named {name!r}; refusing it")
        seen.add(name)


def claim_import_folder(out_dir: Path) -> None:
    """OutputExistsError unless ``out_dir`` is missing, empty, or holds only files an earlier import made
    (kdcore.atomic.file_maker): the importer never writes among runs of ours or other files."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file; the importer writes into a folder")
    for path in sorted(out_dir.rglob("*")):
        if path.is_dir() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        maker = file_maker(path)
        if maker != "import-reference":
            made = f"made by `kdcore {maker}`" if maker else "not made by kdcore"
            raise OutputExistsError(
                f"{out_dir} holds files the importer did not make (first: {path}, {made}); the importer writes "
                "only into an empty folder or one it filled itself: choose another folder"
            )


def import_reference(zip_path: str | Path, out_dir: str | Path, *, allow_partial: bool = False) -> int:
    """Convert the paper's results zip into ``out_dir/<run_id>/{metrics,fidelity}.json``; return the run count.

    Every member is read and validated before anything is written, so bad input leaves ``out_dir`` as it was;
    ``out_dir`` must be empty or hold an earlier import only (:func:`claim_import_folder`).
    A zip that lacks any run or fidelity file of the paper's layout is a DataError listing them, unless
    ``allow_partial`` (then a warning lists them and the rest is imported).
    """
    zip_path, out_dir = Path(zip_path), Path(out_dir)
    if not zip_path.is_file():
        raise DataError(f"paper results zip {str(zip_path)!r} does not exist")
    claim_import_folder(out_dir)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"paper results zip {str(zip_path)!r} is not a zip file ({exc})") from exc
    metrics_by_dir: dict[str, dict[str, Any]] = {}
    fidelity_members: list[str] = []
    with zf:
        check_unique_members(zip_path, zf.namelist())
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        for member in names:
            if member.endswith("/results.json"):
                metrics_by_dir[str(PurePosixPath(member).parent)] = convert_result(_read_json(zf, member), member)
            elif member.endswith("/fidelity.json"):
                fidelity_members.append(member)
        if not metrics_by_dir:
            raise DataError(f"paper results zip {str(zip_path)!r} holds no runs/**/results.json")
        fidelities: dict[str, dict[str, Any]] = {}
        for member in fidelity_members:
            run_dir = str(PurePosixPath(member).parent)
            if run_dir not in metrics_by_dir:
                raise DataError(f"paper zip member {member!r}: no results.json beside it")
            fidelities[run_dir] = convert_fidelity(_read_json(zf, member), member, metrics_by_dir[run_dir])
    check_complete(zip_path, names, allow_partial)
    seen: dict[str, str] = {}
    for run_dir, metrics in metrics_by_dir.items():
        run_id = metrics["labels"]["run_id"]
        if run_id in seen:
            raise DataError(f"paper zip members {seen[run_id]!r} and {run_dir!r} map to the same run {run_id!r}")
        seen[run_id] = run_dir
    for run_dir, metrics in metrics_by_dir.items():
        target = out_dir / metrics["labels"]["run_id"]
        atomic_write_json(target / "metrics.json", seal_record(metrics, None))
        if run_dir in fidelities:
            atomic_write_json(target / "fidelity.json", fidelities[run_dir])
    return len(metrics_by_dir)
