"""Hand-made metrics.json / fidelity.json / test-logits files for the analysis tests (no training, no shared
data).

``make_study`` writes a small study with known accuracies: two students, three teachers, both KD methods,
a selection grid, stem and clip ablations. Accuracies are chosen per (cell, seed) by ``acc``. Each run also
stores synthetic test logits (kdcore.predictions) whose top classes give its test accuracies on
:data:`N_TEST` images, and its metrics.json is sealed as a finished run's is (kdcore.runfolder.seal_record),
so the analysis measures fidelity from the logits as in a trained study; the fidelity.json files stand for
the imported paper's runs (kdcore.analysis.table.build_fidelity_table).
``write_analysis_snakefile`` puts a Snakefile beside it that runs the real analysis rules on those files, and
``build_analysis_study`` runs them and the HTML report once per pytest run (the tests that read the finished
analysis share it). Nothing here is a test itself.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _workflow_tools import snakemake
from filelock import FileLock

from kdcore.predictions import write_test_logits
from kdcore.runfolder import TEST_LOGITS_FILE, seal_record

REPO = Path(__file__).resolve().parents[1]

PAIRS = [("resnet34", "resnet18"), ("resnet50", "resnet18"), ("resnet50", "resnet34")]
N_TEST = 1000
TEST_LABELS = np.random.default_rng(0).integers(0, 10, N_TEST)
PARAMS = {"resnet18": 11_173_962, "resnet34": 21_282_122, "resnet50": 23_520_842}


def metrics(
    stage: str,
    run_id: str,
    student: str,
    seed: int,
    acc: float,
    *,
    teacher: str | None = None,
    method: str = "baseline",
    alpha: float | None = None,
    temperature: float | None = None,
    stem: str = "cifar",
    clip_scope: str = "all",
    epochs: int = 4,
    synthetic: bool = True,
    width: int = 16,
    val_acc: float | None = None,
    proj: float | None = None,
    teacher_checkpoint: str = "t.pt",
) -> dict[str, Any]:
    """A metrics.json dict in the schema of docs/design.md (accuracies as fractions)."""
    method_cfg: dict[str, Any] = {"name": method}
    if alpha is not None:
        method_cfg["alpha"] = alpha
    if temperature is not None:
        method_cfg["temperature"] = temperature
    if method == "feature":
        method_cfg["beta"] = 0.5
    history = [
        {
            "epoch": e + 1,
            "lr": 0.1,
            "loss": 1.0 / (e + 1),
            "loss_ce": 1.0,
            "loss_kd": 0.0,
            "train_acc": min(1.0, acc * (e + 1) / epochs),
            "val_acc": min(1.0, (val_acc or acc) * (e + 1) / epochs),
            "grad_norm_mean": 1.0,
            "grad_norm_max": 2.0,
            "proj_grad_norm_mean": proj,
            "proj_grad_norm_max": None if proj is None else proj * (1 + 0.1 * e),
            "seconds": 1.0,
            "images_per_s": 100.0,
        }
        for e in range(epochs)
    ]
    labels = {"stage": stage, "run_id": run_id}
    return {
        "schema_version": 1,
        "kind": "train",
        "config": {
            "data": "d.pt",
            "model": {"arch": student, "width": width, "stem": stem},
            "teacher": None
            if teacher is None
            else {"arch": teacher, "width": width, "stem": "cifar", "checkpoint": teacher_checkpoint},
            "method": method_cfg,
            "train": {"epochs": epochs, "seed": seed, "clip_scope": clip_scope, "clip_norm": 1.0},
            "labels": labels,
        },
        "labels": labels,
        "environment": {"device": "cpu", "device_name": "cpu"},
        "data": {
            "fingerprint": "x",
            "source": {"kind": "synthetic" if synthetic else "folder"},
            "synthetic": synthetic,
            "split": "other",
            "n_train": 450,
            "n_val": 50,
            "n_test": 100,
        },
        "model": {"arch": student, "width": width, "stem": stem, "params": PARAMS.get(student, 1000)},
        "teacher": None
        if teacher is None
        else {
            "arch": teacher,
            "width": width,
            "stem": "cifar",
            "params": PARAMS.get(teacher, 2000),
            "checkpoint": teacher_checkpoint,
        },
        "history": history,
        "results": {
            "best_val_acc": val_acc if val_acc is not None else acc,
            "best_epoch": epochs,
            "final_val_acc": val_acc if val_acc is not None else acc,
            "test_acc_best": acc,
            "test_acc_final": acc - 0.001,
            "grad_norm_max": 2.0,
            "proj_grad_norm_max": None if proj is None else proj * (1 + 0.1 * (epochs - 1)),
            "train_seconds": 3.0,
            "epochs": epochs,
        },
    }


def fidelity(run: dict[str, Any], teacher: str, agreement: float, kl: float) -> dict[str, Any]:
    """A fidelity.json dict for run ``run`` against ``teacher``."""
    return {
        "schema_version": 1,
        "kind": "fidelity",
        "student": {"arch": run["model"]["arch"], "checkpoint": "s.pt"},
        "teacher": {"arch": teacher, "checkpoint": "t.pt"},
        "teacher_arch": teacher,
        "student_test_acc": run["results"]["test_acc_best"],
        "teacher_test_acc": 0.96,
        "top1_agreement": agreement,
        "kl_t1": kl,
        "kl_t4": kl / 10,
        "ece_student": 0.02,
        "ece_teacher": 0.03,
        "per_class_acc_student": {},
        "per_class_acc_teacher": {},
        "labels": dict(run["labels"]),
    }


def synthetic_logits(run_id: str, acc: float) -> np.ndarray:
    """Test logits (float32 [N_TEST, 10]) whose top class is right on round(acc * N_TEST) images."""
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))
    right = rng.permutation(N_TEST) < round(acc * N_TEST)
    top = np.where(right, TEST_LABELS, (TEST_LABELS + rng.integers(1, 10, N_TEST)) % 10)
    logits = rng.normal(0.0, 1.0, (N_TEST, 10)).astype(np.float32)
    logits[np.arange(N_TEST), top] += 20.0  # beyond any normal draw: the top class is `top`
    return logits


def write_run(folder: Path, data: dict[str, Any]) -> Path:
    """The run's test logits (at best and final) and its sealed metrics.json in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    run_id, results = data["labels"]["run_id"], data["results"]
    write_test_logits(
        folder / TEST_LOGITS_FILE,
        synthetic_logits(run_id, results["test_acc_best"]),
        synthetic_logits(run_id + "/final", results["test_acc_final"]),
        TEST_LABELS,
        results["best_epoch"],
        results["epochs"],
    )
    path = folder / "metrics.json"
    path.write_text(json.dumps(seal_record(data, folder)))
    return path


def teacher_checkpoint(root: Path, teacher: str) -> str:
    """best.pt of the teacher run that the KD runs of ``make_study`` distil from (seed 0)."""
    return str(root / "teachers" / teacher / "seed0" / "best.pt")


def fidelity_checks(root: Path, fidelity_paths: list[Path]) -> list[dict[str, str]]:
    """The fidelity comparisons of the study's fidelity files as the workflow passes them to the analysis
    (common.smk's fidelity_checks()): the student run's metrics.json, the teacher, its run's test logits."""
    checks = []
    for path in fidelity_paths:
        teacher = json.loads(path.read_text())["teacher_arch"]
        teacher_logits = str(Path(teacher_checkpoint(root, teacher)).parent / TEST_LOGITS_FILE)
        checks.append({"run": str(path.parent / "metrics.json"), "teacher": teacher, "teacher_logits": teacher_logits})
    return checks


def default_acc(stage: str, student: str, teacher: str | None, method: str, seed: int) -> float:
    """Accuracies with a clear KD effect for the R34 student and seed-to-seed noise shared across cells."""
    base = {"resnet18": 0.90, "resnet34": 0.91, "resnet50": 0.93, "resnet101": 0.935}[student]
    noise = [0.0, 0.002, -0.001, 0.003, -0.002][seed % 5]
    bonus = {"baseline": 0.0, "logit": 0.001, "feature": 0.004 if student == "resnet34" else 0.0005}[method]
    wiggle = 0.0005 * ((seed * 7 + len(method)) % 3) if method != "baseline" else 0.0
    return base + noise + bonus + wiggle


def make_study(
    root: Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    teacher_seeds: tuple[int, ...] = (0, 1),
    acc: Callable[..., float] = default_acc,
    with_fidelity: bool = True,
    **kwargs: Any,
) -> tuple[list[Path], list[Path]]:
    """Write a small study under ``root``; return (metrics paths, fidelity paths)."""
    runs: dict[str, dict[str, Any]] = {}
    fids: dict[str, dict[str, Any]] = {}
    for t in sorted({t for t, _ in PAIRS}):
        for s in teacher_seeds:
            runs[f"teachers/{t}/seed{s}"] = metrics(
                "teacher", f"teachers/{t}/seed{s}", t, s, acc("teacher", t, None, "baseline", s), epochs=6, **kwargs
            )
    for st in sorted({s for _, s in PAIRS}):
        for s in seeds:
            rid = f"baselines/{st}/seed{s}"
            runs[rid] = metrics("baseline", rid, st, s, acc("baseline", st, None, "baseline", s), **kwargs)
            for t in sorted({t for t, s2 in PAIRS if s2 == st}):
                fids[f"{rid}/fidelity-{t}.json"] = fidelity(runs[rid], t, 0.90 + 0.001 * s, 0.30)
    for t, st in PAIRS:
        for m in ("logit", "feature"):
            grid = [(a, T) for a in (0.5, 0.9) for T in ((2.0, 4.0) if m == "logit" else (None,))]
            for k, (a, T) in enumerate(grid):
                rid = f"select/{t}-{st}/{m}/g{k}/seed0"
                runs[rid] = metrics(
                    "select",
                    rid,
                    st,
                    0,
                    0.9,
                    teacher=t,
                    teacher_checkpoint=teacher_checkpoint(root, t),
                    method=m,
                    alpha=a,
                    temperature=T,
                    val_acc=0.90 + 0.001 * k,
                    **kwargs,
                )
            a, T = grid[-1]
            for s in seeds:
                rid = f"final/{t}-{st}/{m}/seed{s}"
                runs[rid] = metrics(
                    "final",
                    rid,
                    st,
                    s,
                    acc("final", st, t, m, s),
                    teacher=t,
                    teacher_checkpoint=teacher_checkpoint(root, t),
                    method=m,
                    alpha=a,
                    temperature=T,
                    proj=0.5 if m == "feature" else None,
                    **kwargs,
                )
                fids[f"{rid}/fidelity.json"] = fidelity(
                    runs[rid], t, 0.92 + 0.001 * s + (0.01 if m == "logit" else 0), 0.2
                )
    for arch in ("resnet18", "resnet34"):
        for s in seeds[:2]:
            rid = f"stem/{arch}-imagenet/seed{s}"
            runs[rid] = metrics(
                "stem",
                rid,
                arch,
                s,
                acc("baseline", arch, None, "baseline", s) - 0.05 - 0.002 * s,
                stem="imagenet",
                **kwargs,
            )
    for s in seeds:
        rid = f"clip/resnet50-resnet18/feature/seed{s}"
        runs[rid] = metrics(
            "clip",
            rid,
            "resnet18",
            s,
            acc("final", "resnet18", "resnet50", "feature", s) - 0.001,
            teacher="resnet50",
            teacher_checkpoint=teacher_checkpoint(root, "resnet50"),
            method="feature",
            alpha=0.9,
            clip_scope="student_only",
            proj=3.0,
            **kwargs,
        )
    mpaths, fpaths = [], []
    for rid, data in runs.items():
        mpaths.append(write_run(root / rid, data))
    if with_fidelity:
        for rel, data in fids.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(data))
            fpaths.append(p)
    return mpaths, fpaths


SNAKEFILE = """
import sys
sys.path.insert(0, {src!r})
METRICS = {metrics!r}
FIDELITY = {fidelity!r}
RUNS = {runs!r}
def stage(name): return [p for p in METRICS if p.startswith(f"{{RUNS}}/{{name}}/")]
def all_run_metrics(wildcards=None): return METRICS
def fidelity_checks(): return FIDELITY
def teacher_metrics(): return stage("teachers")
def baseline_metrics(): return stage("baselines")
def select_metrics(): return stage("select")
def final_metrics(): return stage("final")
def clip_metrics(): return stage("clip")
def clip_runs(): return [tuple(p.split("/")[-4].split("-")) + (p.split("/")[-3], 0) for p in stage("clip")]
def run_dir(stage, teacher, student, method, seed): return f"{{RUNS}}/{{stage}}/{{teacher}}-{{student}}/{{method}}/seed{{seed}}"
def stem_metrics():
    stem = stage("stem")
    arms = [f"{{RUNS}}/baselines/{{p.split('/')[-3].split('-')[0]}}/{{p.split('/')[-2]}}/metrics.json" for p in stem]
    return stem + arms
def code_digest(*modules, scripts=()): return "test"
config["analysis"] = {analysis!r}
config["methods"] = {methods!r}
report: {workflow_rst!r}
include: {rules_common!r}
include: {rules!r}
rule all:
    input: analysis_targets
    default_target: True
"""


#: Folders of the runs of each optional part of a study (workflow/rules/common.smk, run_dir).
OPTIONAL_FOLDERS = {"selection": "select", "stem": "stem", "clip": "clip"}

#: The ``analysis`` config of the hand-made studies: a smallest effect of interest other than the default.
ANALYSIS_CONFIG = {"min_effect_pp": 0.5}
#: Their ``methods``: the paper study's, from which the workflow hands each analysis job its method catalog
#: (labels and hyper-parameter columns, kdcore.analysis.methods), so that the jobs run without torch as a
#: study's do.
STUDY_METHODS = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))["methods"]


def write_analysis_snakefile(
    work: Path, metrics: list[Path], fidelity: list[Path], disabled: tuple[str, ...] = ()
) -> None:
    """A Snakefile in ``work`` that runs the real analysis rules on the run files of ``make_study`` (under
    ``work/runs``), with the study's parts given by their folders as in workflow/rules/common.smk.
    ``disabled``: optional parts (selection, fidelity, stem, clip) left out of the study, as a config does."""
    skip = tuple(f"{work / 'runs'}/{OPTIONAL_FOLDERS[p]}/" for p in disabled if p in OPTIONAL_FOLDERS)
    metrics = [p for p in metrics if not str(p).startswith(skip)] if skip else metrics
    fidelity = [] if "fidelity" in disabled else fidelity
    (work / "Snakefile").write_text(
        SNAKEFILE.format(
            src=str(REPO / "src"),
            metrics=[str(p) for p in metrics],
            fidelity=fidelity_checks(work / "runs", fidelity),
            runs=str(work / "runs"),
            analysis=ANALYSIS_CONFIG,
            methods=STUDY_METHODS,
            workflow_rst=str(REPO / "workflow/report/workflow.rst"),
            rules=str(REPO / "workflow/rules/analysis.smk"),
            rules_common=str(REPO / "workflow/rules/analysis_common.smk"),
        )
    )


def run_analysis(work: Path, *extra: str) -> None:
    """Run the analysis Snakefile in ``work`` (``extra``: e.g. ``--report``); a failure raises with its log."""
    proc = snakemake(work, "--cores", "2", "--quiet", *extra, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def build_analysis_study(base: Path) -> Path:
    """The hand-made study (seeds 0 and 1, every part) with its analysis and ``results/report.html`` finished in
    ``base``: run by the first caller, found by the others (pytest-xdist workers share ``base``)."""
    base.mkdir(parents=True, exist_ok=True)
    done = base / "finished"
    with FileLock(str(base / "build.lock")):
        if not done.exists():
            m, f = make_study(base / "runs", seeds=(0, 1))
            write_analysis_snakefile(base, m, f)
            run_analysis(base)
            run_analysis(base, "--report", "results/report.html")
            done.touch()
    return base
