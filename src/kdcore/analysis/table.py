"""The tidy run table: one row per training run, built from per-run metrics.json (+ fidelity.json) files.

Accuracies in the tables are percentages (metrics.json holds fractions in [0, 1]). Every later output
(statistics, figures, LaTeX, comparison) is computed from these tables, never from the JSON files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kdcore.analysis import methods as method_catalog
from kdcore.errors import DataError
from kdcore.fidelity import fidelity_from_stored
from kdcore.predictions import TestLogits, read_test_logits
from kdcore.runfolder import INTEGRITY_KEY, TEST_LOGITS_FILE, verify_run_record

STAGES = ("teacher", "baseline", "select", "final", "stem", "clip")
#: Columns of runs.csv before its hyper-parameter columns, in order.
RUN_KEY_COLUMNS = ["stage", "run_id", "teacher", "student", "pair", "method"]
#: Columns of runs.csv after its hyper-parameter columns, in order.
RUN_VALUE_COLUMNS = [
    "seed",
    "stem",
    "width",
    "clip_scope",
    "clip_norm",
    "data_source",
    "split",
    "synthetic",
    "n_train",
    "val_acc",
    "test_best",
    "test_final",
    "final_val_acc",
    "best_epoch",
    "agreement",
    "kl_t1",
    "kl_t4",
    "ece_student",
    "teacher_test_acc",
    "grad_norm_max",
    "proj_grad_norm_max",
    "epochs",
    "seconds",
    "device",
    "compute",
    "params",
    "teacher_params",
    "source",
    "path",
    "logits",
    "teacher_logits",
]


def run_columns(hyperparameters: Iterable[str]) -> list[str]:
    """Columns of runs.csv with these hyper-parameter columns (one per hyper-parameter the study sets)."""
    return [*RUN_KEY_COLUMNS, *hyperparameters, *RUN_VALUE_COLUMNS]


def hyperparameter_columns(runs: pd.DataFrame) -> list[str]:
    """The hyper-parameter columns of a run table (or of a table keeping its columns in the same place)."""
    fixed = set(RUN_KEY_COLUMNS) | set(RUN_VALUE_COLUMNS)
    columns = list(runs.columns)
    if "method" not in columns or "seed" not in columns:
        raise DataError("run table: missing column method or seed")
    return [c for c in columns[columns.index("method") + 1 : columns.index("seed")] if c not in fixed]


#: Columns of runs.csv of the paper's study.
RUN_COLUMNS = run_columns(method_catalog.PAPER_HYPERPARAMETERS)
FIDELITY_COLUMNS = [
    "stage",
    "run_id",
    "teacher",
    "student",
    "pair",
    "method",
    "seed",
    "control",
    "student_acc",
    "teacher_acc",
    "agreement",
    "kl_t1",
    "kl_t4",
    "ece_student",
    "ece_teacher",
    "source",
    "path",
]
HISTORY_COLUMNS = [
    "run_id",
    "epoch",
    "val_acc",
    "train_acc",
    "loss",
    "grad_norm_max",
    "proj_grad_norm_max",
    "audit_test_acc",
]
_STRING_COLUMNS = (
    "compute",
    "stage",
    "run_id",
    "teacher",
    "student",
    "pair",
    "method",
    "stem",
    "clip_scope",
    "data_source",
    "device",
    "source",
    "path",
    "logits",
    "teacher_logits",
)


def load_json(path: str | Path, kind: str) -> dict[str, Any]:
    """Read a metrics/fidelity JSON file and check its ``kind``; DataError naming the file otherwise.

    A metrics.json (kind ``train``) must also match the digest recorded when its run finished
    (kdcore.runfolder.verify_run_record): a hand-edited file is an error naming it, unless the edit was
    accepted explicitly (``python -m kdcore accept-edit``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file does not exist") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    if data.get("kind") != kind:
        raise DataError(f"{path}: field kind={data.get('kind')!r}, expected {kind!r}")
    if kind == "train":
        verify_run_record(path, data)
    return data


def _get(data: dict[str, Any], dotted: str, path: Path, required: bool = False, default: Any = None) -> Any:
    """Value at ``a.b.c`` in nested dicts; DataError naming file and field if required and absent."""
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            if required:
                raise DataError(f"{path}: missing field {dotted}")
            return default
        node = node[key]
    return node


def _pct(value: Any, field: str, path: Path) -> float:
    """A fraction in [0, 1] as a percentage; NaN for null; DataError when out of range."""
    if value is None:
        return math.nan
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise DataError(f"{path}: field {field}={value!r} is not a fraction in [0, 1]")
    return 100.0 * float(value)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _data_source(data: dict[str, Any], path: Path) -> str:
    source = _get(data, "data.source", path)
    if isinstance(source, dict):
        return str(source.get("kind", ""))
    return "" if source is None else str(source)


def logits_path(data: dict[str, Any], path: Path) -> str:
    """The run's test-logits file (kdcore.predictions) beside its metrics.json when the run sealed one
    (metrics.json's integrity files) and it exists; '' otherwise (e.g. runs finished before runs kept them,
    imported runs)."""
    files = (data.get(INTEGRITY_KEY) or {}).get("files") or {}
    candidate = path.parent / TEST_LOGITS_FILE
    return str(candidate) if TEST_LOGITS_FILE in files and candidate.is_file() else ""


def teacher_logits_path(data: dict[str, Any], path: Path) -> str:
    """The test-logits file of the teacher run whose best.pt the run distilled from ('' when none)."""
    checkpoint = _get(data, "config.teacher.checkpoint", path)
    if not checkpoint:
        return ""
    candidate = Path(checkpoint).parent / TEST_LOGITS_FILE
    return str(candidate) if candidate.is_file() else ""


def compute_kind(environment: Mapping[str, Any]) -> str:
    """Where and how a run computed: ``<device type>/<precision>`` from its metrics.json's environment, e.g.
    ``cuda/bfloat16`` or ``cpu/float32`` ('' when the run does not record both, e.g. an imported run)."""
    device, precision = str(environment.get("device") or ""), str(environment.get("precision") or "")
    return f"{device.split(':')[0]}/{precision}" if device and precision else ""


def run_record(
    data: dict[str, Any], path: str | Path, hyperparameters: Iterable[str] = method_catalog.PAPER_HYPERPARAMETERS
) -> dict[str, Any]:
    """One row of the run table from a parsed metrics.json (``path`` names the file in errors), with a
    column per name of ``hyperparameters`` (config.method.<name>; NaN where the run's method has none)."""
    path = Path(path)
    labels = data.get("labels") or _get(data, "config.labels", path) or {}
    stage = labels.get("stage")
    if stage not in STAGES:
        raise DataError(f"{path}: field labels.stage={stage!r} is not one of {', '.join(STAGES)}")
    run_id = labels.get("run_id")
    if not run_id:
        raise DataError(f"{path}: missing field labels.run_id")
    # The workflow labels each run with its network labels (a width variant such as resnet18-w16 is its own
    # student, with its own baseline); runs without them are named by their architecture.
    arch = _get(data, "config.model.arch", path) or _get(data, "model.arch", path, required=True)
    teacher_arch = _get(data, "config.teacher.arch", path) or _get(data, "teacher.arch", path) or ""
    student = str(labels.get("student") or labels.get("arch") or arch)
    teacher = str(labels.get("teacher") or teacher_arch) if teacher_arch else ""
    method = _get(data, "config.method.name", path, default="baseline")
    if method != "baseline" and not teacher:
        raise DataError(f"{path}: method {method!r} needs a teacher (config.teacher.arch is missing)")
    results = _get(data, "results", path, required=True)
    seed = _get(data, "config.train.seed", path, required=True)
    return {
        "stage": stage,
        "run_id": str(run_id),
        "teacher": teacher,
        "student": student,
        "pair": f"{teacher}-{student}" if teacher else "",
        "method": method,
        **{hp: _num(_get(data, f"config.method.{hp}", path)) for hp in hyperparameters},
        "seed": int(seed),
        "stem": _get(data, "config.model.stem", path) or _get(data, "model.stem", path, default="cifar"),
        "width": int(_get(data, "config.model.width", path) or _get(data, "model.width", path, default=64)),
        "clip_scope": _get(data, "config.train.clip_scope", path, default="all"),
        "clip_norm": _num(_get(data, "config.train.clip_norm", path)),
        "data_source": _data_source(data, path),
        "split": str(_get(data, "data.split", path, default="") or ""),
        "synthetic": bool(_get(data, "data.synthetic", path, default=False)),
        "n_train": _num(_get(data, "data.n_train", path)),
        "val_acc": _pct(results.get("best_val_acc"), "results.best_val_acc", path),
        "test_best": _pct(results.get("test_acc_best"), "results.test_acc_best", path),
        "test_final": _pct(results.get("test_acc_final"), "results.test_acc_final", path),
        "final_val_acc": _pct(results.get("final_val_acc"), "results.final_val_acc", path),
        "best_epoch": _num(results.get("best_epoch")),
        "agreement": math.nan,
        "kl_t1": math.nan,
        "kl_t4": math.nan,
        "ece_student": math.nan,
        "teacher_test_acc": math.nan,
        "grad_norm_max": _num(results.get("grad_norm_max")),
        "proj_grad_norm_max": _num(results.get("proj_grad_norm_max")),
        "epochs": int(results.get("epochs") or _get(data, "config.train.epochs", path, required=True)),
        "seconds": _num(results.get("train_seconds")),
        "device": _get(data, "environment.device_name", path) or _get(data, "environment.device", path, default=""),
        "compute": compute_kind(data.get("environment") or {}),
        "params": _num(_get(data, "model.params", path)),
        "teacher_params": _num(_get(data, "teacher.params", path)),
        "source": str(labels.get("source", "")),
        "path": str(path),
        "logits": logits_path(data, path),
        "teacher_logits": teacher_logits_path(data, path),
    }


def fidelity_record(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """One row of the fidelity table from a parsed fidelity.json."""
    path = Path(path)
    labels = data.get("labels") or {}
    if not labels.get("run_id"):
        raise DataError(f"{path}: missing field labels.run_id")
    # the teacher's network label (e.g. resnet50-w16) when the workflow gave one, as for metrics.json
    teacher = labels.get("teacher") or data.get("teacher_arch") or _get(data, "teacher.arch", path)
    if not teacher:
        raise DataError(f"{path}: missing field teacher_arch (or teacher.arch)")
    kl = {k: _num(data.get(k)) for k in ("kl_t1", "kl_t4")}
    return {
        "run_id": str(labels["run_id"]),
        "teacher": str(teacher),
        "student_acc": _pct(data.get("student_test_acc"), "student_test_acc", path),
        "teacher_acc": _pct(data.get("teacher_test_acc"), "teacher_test_acc", path),
        "agreement": _pct(data.get("top1_agreement"), "top1_agreement", path),
        **kl,
        "ece_student": _num(data.get("ece_student")),
        "ece_teacher": _num(data.get("ece_teacher")),
        "path": str(path),
    }


def _frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records, columns=columns)


def build_fidelity_table(fidelity_paths: Iterable[str | Path], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per fidelity.json, joined to its run (stage, student, method, seed) by run_id.

    Rows of baseline runs (student trained without a teacher, measured against each teacher of its pairs)
    are the control: ``control`` is True for them.
    """
    records = [fidelity_record(load_json(p, "fidelity"), p) for p in fidelity_paths]
    fid = _frame(
        records,
        [
            "run_id",
            "teacher",
            "student_acc",
            "teacher_acc",
            "agreement",
            "kl_t1",
            "kl_t4",
            "ece_student",
            "ece_teacher",
            "path",
        ],
    )
    if fid.empty:
        return _frame([], FIDELITY_COLUMNS)
    dup = fid.duplicated(["run_id", "teacher"])
    if dup.any():
        row = fid[dup].iloc[0]
        raise DataError(
            f"{row['path']}: a second fidelity file for run {row['run_id']!r} and teacher {row['teacher']!r}"
        )
    info = runs.set_index("run_id")[["stage", "student", "method", "seed", "source", "teacher"]]
    unknown = ~fid["run_id"].isin(info.index)
    if unknown.any():
        row = fid[unknown].iloc[0]
        raise DataError(f"{row['path']}: labels.run_id={row['run_id']!r} matches no metrics.json of the run table")
    joined = fid.join(info.rename(columns={"teacher": "run_teacher"}), on="run_id")
    wrong = (joined["run_teacher"] != "") & (joined["run_teacher"] != joined["teacher"])
    if wrong.any():
        row = joined[wrong].iloc[0]
        raise DataError(
            f"{row['path']}: teacher {row['teacher']!r} differs from the run's teacher {row['run_teacher']!r}"
        )
    joined["pair"] = joined["teacher"] + "-" + joined["student"]
    joined["control"] = joined["stage"] == "baseline"
    return joined[FIDELITY_COLUMNS].sort_values(["pair", "control", "method", "seed"]).reset_index(drop=True)


#: One fidelity comparison of a trained study (kdcore.study.FidelityCheck as the workflow passes it): the
#: student run's metrics.json (``run``), the teacher's label and the teacher run's test-logits file.
FidelityCheck = Mapping[str, str]


def _fidelity_row(run: pd.Series, check: FidelityCheck, store: dict[str, TestLogits]) -> dict[str, Any]:
    """The fidelity row of ``check``, whose student run is ``run`` (a row of the run table)."""
    if not run["logits"]:
        raise DataError(f"{check['run']}: the run has no test-logits file ({TEST_LOGITS_FILE}) to measure fidelity")
    for path in (run["logits"], check["teacher_logits"]):
        if path not in store:
            store[path] = read_test_logits(path)
    f = fidelity_from_stored(store[run["logits"]], store[check["teacher_logits"]])
    return {
        **{c: run[c] for c in ("stage", "run_id", "student", "method", "seed", "source")},
        "teacher": check["teacher"],
        "pair": f"{check['teacher']}-{run['student']}",
        "control": run["stage"] == "baseline",
        "student_acc": 100 * f["student_test_acc"],
        "teacher_acc": 100 * f["teacher_test_acc"],
        "agreement": 100 * f["top1_agreement"],
        **{k: f[k] for k in ("kl_t1", "kl_t4", "ece_student", "ece_teacher")},
        "path": run["logits"],
    }


def fidelity_table_from_logits(runs: pd.DataFrame, checks: Iterable[FidelityCheck]) -> pd.DataFrame:
    """The fidelity table (:data:`FIDELITY_COLUMNS`) of a trained study from its runs' stored test logits
    (kdcore.fidelity): one row per check, the student run found in ``runs`` by its metrics.json path. A
    baseline run's rows are the control (``control`` True)."""
    by_path = runs.set_index("path")
    store: dict[str, TestLogits] = {}
    rows = []
    for check in checks:
        if check["run"] not in by_path.index:
            raise DataError(f"fidelity: {check['run']} is not one of the run table's metrics files")
        rows.append(_fidelity_row(by_path.loc[check["run"]], check, store))
    table = _frame(rows, FIDELITY_COLUMNS)
    if table.empty:
        return table
    dup = table.duplicated(["run_id", "teacher"])
    if dup.any():
        row = table[dup].iloc[0]
        raise DataError(f"fidelity: run {row['run_id']!r} is compared with teacher {row['teacher']!r} twice")
    return table.sort_values(["pair", "control", "method", "seed"]).reset_index(drop=True)


def build_tables(
    metrics_paths: Iterable[str | Path],
    fidelity_paths: Iterable[str | Path] = (),
    fidelity_checks: Iterable[FidelityCheck] = (),
    hyperparameters: Iterable[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy run table (columns :func:`run_columns`, one row per metrics.json) and the fidelity table.

    The fidelity rows come from fidelity.json files (``fidelity_paths``: imported runs) or, for a trained
    study, from the stored test logits of each of ``fidelity_checks`` (:func:`fidelity_table_from_logits`).
    KD runs get their fidelity measures (agreement %, KL at T=1 and T=4, ECE, teacher accuracy) in the run
    table too; baseline controls stay in the fidelity table. ``hyperparameters``: the run table's
    hyper-parameter columns (default: those of the registered method catalog,
    :func:`kdcore.analysis.methods.hyperparameter_columns`).
    """
    hps = list(method_catalog.hyperparameter_columns() if hyperparameters is None else hyperparameters)
    records = [run_record(load_json(p, "train"), p, hps) for p in metrics_paths]
    runs = _frame(records, run_columns(hps))
    dup = runs.duplicated("run_id")
    if dup.any():
        row = runs[dup].iloc[0]
        raise DataError(f"{row['path']}: labels.run_id={row['run_id']!r} is already used by another metrics.json")
    fidelity_paths, fidelity_checks = list(fidelity_paths), list(fidelity_checks)
    if fidelity_paths and fidelity_checks:
        raise DataError("run table: fidelity comes from fidelity files or from stored logits, not both")
    if fidelity_checks:
        fid = fidelity_table_from_logits(runs, fidelity_checks)
    else:
        fid = build_fidelity_table(fidelity_paths, runs)
    kd = fid[~fid["control"].astype(bool)]
    if not kd.empty:
        kd = kd.set_index("run_id")
        idx = runs["run_id"].isin(kd.index)
        for col, src in (
            ("agreement", "agreement"),
            ("kl_t1", "kl_t1"),
            ("kl_t4", "kl_t4"),
            ("ece_student", "ece_student"),
            ("teacher_test_acc", "teacher_acc"),
        ):
            runs.loc[idx, col] = runs.loc[idx, "run_id"].map(kd[src]).to_numpy()
    order = {s: i for i, s in enumerate(STAGES)}
    runs = runs.assign(_o=runs["stage"].map(order)).sort_values(
        ["_o", "pair", "student", "method", "stem", *hps, "seed", "run_id"]
    )
    return runs.drop(columns="_o").reset_index(drop=True), fid


def build_run_table(
    metrics_paths: Iterable[str | Path],
    fidelity_paths: Iterable[str | Path] = (),
    hyperparameters: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The tidy run table of :func:`build_tables` (fidelity measures from ``fidelity_paths``)."""
    return build_tables(metrics_paths, fidelity_paths, hyperparameters=hyperparameters)[0]


def build_history_table(metrics_paths: Iterable[str | Path]) -> pd.DataFrame:
    """Per-epoch history of every run (accuracies in %), keyed by run_id, for convergence/clip figures."""
    rows: list[dict[str, Any]] = []
    for p in metrics_paths:
        data = load_json(p, "train")
        labels = data.get("labels") or {}
        run_id = labels.get("run_id")
        if not run_id:
            raise DataError(f"{p}: missing field labels.run_id")
        for h in data.get("history") or []:
            if "epoch" not in h:
                raise DataError(f"{p}: a history entry lacks field epoch")
            rows.append(
                {
                    "run_id": run_id,
                    "epoch": int(h["epoch"]),
                    "val_acc": _pct(h.get("val_acc"), "history.val_acc", Path(p)),
                    "train_acc": _pct(h.get("train_acc"), "history.train_acc", Path(p)),
                    "loss": _num(h.get("loss")),
                    "grad_norm_max": _num(h.get("grad_norm_max")),
                    "proj_grad_norm_max": _num(h.get("proj_grad_norm_max")),
                    "audit_test_acc": _pct(h.get("audit_test_acc"), "history.audit_test_acc", Path(p)),
                }
            )
    return _frame(rows, HISTORY_COLUMNS)


def stem_arms(runs: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """CIFAR-stem and ImageNet-stem runs of each architecture of the stem ablation.

    The ImageNet arm is the stage-``stem`` runs with the ImageNet stem. The CIFAR arm is the stage-``stem``
    runs with the CIFAR stem if there are any (the paper's layout); otherwise the baseline runs of that
    architecture with the same seeds and epochs, else its teacher runs (the workflow trains only the ImageNet
    arm and reuses those runs).
    """
    st = runs[runs["stage"] == "stem"]
    out: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for arch in sorted(set(st["student"]), key=lambda a: (len(a), a)):
        img = st[(st["student"] == arch) & (st["stem"] == "imagenet")]
        cif = st[(st["student"] == arch) & (st["stem"] == "cifar")]
        if cif.empty and not img.empty:
            for stage in ("baseline", "teacher"):
                cand = runs[
                    (runs["stage"] == stage)
                    & (runs["student"] == arch)
                    & (runs["stem"] == "cifar")
                    & runs["seed"].isin(img["seed"])
                    & runs["epochs"].isin(img["epochs"])
                ]
                if not cand.empty:
                    cif = cand
                    break
        out[arch] = (cif, img)
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by the analysis (runs.csv, fidelity.csv, ...) with empty strings kept as ''."""
    df = pd.read_csv(path, dtype={c: str for c in _STRING_COLUMNS})
    for col in _STRING_COLUMNS:
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    return df


def read_tables(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Rows of several tables of the same kind (e.g. the runs.csv of several parts of a study), in order."""
    frames = [read_table(p) for p in paths]
    if not frames:
        raise DataError("read_tables: no table given")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV atomically."""
    from kdcore.atomic import atomic_write_text

    return atomic_write_text(path, df.to_csv(index=False))


RUN_TABLES = ("runs", "fidelity", "history")


def write_run_tables(
    metrics_paths: Iterable[str | Path],
    fidelity_paths: Iterable[str | Path],
    outputs: Mapping[str, str | Path],
    fidelity_checks: Iterable[FidelityCheck] = (),
) -> dict[str, Path]:
    """Build the run, fidelity and history tables (:func:`build_tables`) and write each to ``outputs[name]``
    (names: :data:`RUN_TABLES`)."""
    missing = [name for name in RUN_TABLES if name not in outputs]
    if missing:
        raise DataError(f"write_run_tables: no output path for {', '.join(missing)}")
    metrics_paths = list(metrics_paths)
    runs, fidelity = build_tables(metrics_paths, fidelity_paths, fidelity_checks)
    tables = {"runs": runs, "fidelity": fidelity, "history": build_history_table(metrics_paths)}
    return {name: write_table(df, outputs[name]) for name, df in tables.items()}


def read_inputs(inputs: Mapping[str, str | Path | Sequence[str | Path]]) -> dict[str, pd.DataFrame]:
    """The tables of a job's named inputs: a name given several files (the runs.csv of each part of a study)
    is read as one table (:func:`read_tables`), a single file as itself; a name given no file is left out."""
    files = {name: [paths] if isinstance(paths, (str, Path)) else list(paths) for name, paths in inputs.items()}
    return {name: read_tables(paths) for name, paths in files.items() if paths}
