"""The tidy run table and the fidelity/history tables built from hand-made metrics/fidelity files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _analysis_study import N_TEST, fidelity_checks, make_study, metrics

from kdcore.analysis.table import (
    RUN_COLUMNS,
    build_fidelity_table,
    build_history_table,
    build_run_table,
    build_tables,
    read_table,
    write_run_tables,
)
from kdcore.errors import DataError


def test_run_table_rows_and_units(tmp_path):
    m, f = make_study(tmp_path)
    runs = build_run_table(m, f)
    assert list(runs.columns) == RUN_COLUMNS
    assert len(runs) == len(m)
    row = runs[runs["run_id"] == "final/resnet50-resnet34/feature/seed1"].iloc[0]
    raw = json.loads((tmp_path / "final/resnet50-resnet34/feature/seed1/metrics.json").read_text())
    assert row["test_best"] == pytest.approx(100 * raw["results"]["test_acc_best"])
    assert (row["teacher"], row["student"], row["pair"], row["method"]) == (
        "resnet50",
        "resnet34",
        "resnet50-resnet34",
        "feature",
    )
    assert row["agreement"] == pytest.approx(100 * 0.921) and row["kl_t1"] == pytest.approx(0.2)
    assert (row["seed"], row["clip_scope"], row["data_source"], row["synthetic"]) == (1, "all", "synthetic", True)
    assert row["split"] == "other"  # metrics.json data.split (kdcore.data: `paper` only for the paper's split)
    assert row["seconds"] == 3.0 and row["device"] == "cpu"
    base = runs[runs["stage"] == "baseline"]
    assert base["agreement"].isna().all()  # control fidelity stays in the fidelity table
    assert set(runs["stage"]) == {"teacher", "baseline", "select", "final", "stem", "clip"}


def test_fidelity_table_has_controls(tmp_path):
    m, f = make_study(tmp_path)
    runs = build_run_table(m, f)
    fid = build_fidelity_table(f, runs)
    ctl = fid[fid["control"]]
    assert len(ctl) == 3 * 3  # (R18: R34, R50 teachers; R34: R50) x 3 seeds
    assert set(ctl["pair"]) == {"resnet34-resnet18", "resnet50-resnet18", "resnet50-resnet34"}
    assert (fid[~fid["control"]]["method"] != "baseline").all()


def test_fidelity_from_stored_logits_for_each_check(tmp_path):
    """A trained study's fidelity table: one row per comparison, measured from the runs' test logits; the
    KD runs' rows reach the run table, the controls stay in the fidelity table."""
    m, f = make_study(tmp_path)
    checks = fidelity_checks(tmp_path, f)
    runs, fid = build_tables(m, fidelity_checks=checks)
    assert len(fid) == len(checks) == len(f) and fid["control"].sum() == 9
    # the synthetic logits are right on exactly round(acc * N_TEST) images of each run
    right = {
        json.loads(p.read_text())["labels"]["run_id"]: round(
            json.loads(p.read_text())["results"]["test_acc_best"] * N_TEST
        )
        for p in m
    }
    assert np.allclose(fid["student_acc"], [100 * right[r] / N_TEST for r in fid["run_id"]], rtol=0, atol=1e-9)
    teacher_acc = [100 * right[f"teachers/{t}/seed0"] / N_TEST for t in fid["teacher"]]
    assert np.allclose(fid["teacher_acc"], teacher_acc, rtol=0, atol=1e-9)
    assert fid["agreement"].between(0, 100).all() and (fid["kl_t1"] > 0).all() and (fid["kl_t4"] < fid["kl_t1"]).all()
    kd = runs[runs["stage"] == "final"]
    assert kd["agreement"].notna().all() and runs[runs["stage"] == "baseline"]["agreement"].isna().all()
    with pytest.raises(DataError, match="not one of the run table's metrics files"):
        build_tables([p for p in m if "final" not in str(p)], fidelity_checks=checks)
    with pytest.raises(DataError, match="from fidelity files or from stored logits, not both"):
        build_tables(m, f, checks)
    checks[0]["teacher_logits"] = str(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="missing.npz"):
        build_tables(m, fidelity_checks=checks)


def test_history_and_roundtrip(tmp_path):
    m, f = make_study(tmp_path)
    hist = build_history_table(m)
    assert len(hist) == sum(len(json.loads(p.read_text())["history"]) for p in m)
    paths = write_run_tables(
        m, f, {name: tmp_path / "tables" / f"{name}.csv" for name in ("runs", "fidelity", "history")}
    )
    back = read_table(paths["runs"])
    assert (back["teacher"].fillna("x") != "x").all() and back.loc[back["stage"] == "teacher", "teacher"].eq("").all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["labels"].update(stage="bogus"), "labels.stage"),
        (lambda d: d["labels"].pop("run_id"), "labels.run_id"),
        (lambda d: d["results"].update(test_acc_best=94.5), "results.test_acc_best"),
        (lambda d: d["config"]["train"].pop("seed"), "config.train.seed"),
        (lambda d: d.update(kind="fidelity"), "kind"),
    ],
)
def test_bad_metrics_name_file_and_field(tmp_path, mutate, message):
    data = metrics("baseline", "b/s0", "resnet18", 0, 0.9)
    mutate(data)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as err:
        build_run_table([path])
    assert str(path) in str(err.value)


def test_duplicate_run_id_and_orphan_fidelity(tmp_path):
    m, f = make_study(tmp_path)
    with pytest.raises(DataError, match="already used"):
        build_run_table([*m, m[0]], [])
    with pytest.raises(DataError, match="matches no metrics.json"):
        build_run_table([p for p in m if "final" not in str(p)], f)
    bad = tmp_path / "broken.json"
    bad.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        build_run_table([bad])


def test_run_table_without_any_fidelity_files(tmp_path):
    """A study with fidelity switched off still gets its run table (fidelity columns empty)."""
    m, _ = make_study(tmp_path)
    runs = build_run_table(m, [])
    assert len(runs) == len(m) and runs["agreement"].isna().all()


@pytest.mark.slow
def test_part_tables_give_the_whole_study_statistics(tmp_path):
    """A statistics table computed from the run tables of its parts (kdcore.analysis.outputs) equals the one
    computed from the whole study's run table, written as CSV as the workflow does."""
    import pandas as pd

    from kdcore.analysis import moderation, outputs, sensitivity, stats
    from kdcore.analysis.table import read_tables, write_table

    m, f = make_study(tmp_path / "runs", seeds=(0, 1, 2))
    folders = {
        "teachers": ("teachers",),
        "kd": ("baselines", "final"),
        "selection": ("select", "final"),
        "stem": ("stem", "baselines"),
        "clip": ("clip", "final"),
    }
    parts = {}
    for part, dirs in folders.items():
        paths = [p for p in m if p.relative_to(tmp_path / "runs").parts[0] in dirs]
        parts[part] = write_table(build_run_table(paths), tmp_path / part / "runs.csv")
    whole = build_run_table(m, f)
    calls = {
        "comparisons": stats.kd_comparisons,
        "moderation": moderation.moderation_table,
        "selection": stats.selection_table,
        "stem_ablation": stats.stem_ablation,
        "clip_ablation": stats.clip_ablation,
        "moderation_sensitivity": sensitivity.moderation_sensitivity,
    }
    assert set(calls) == set(outputs.STAT_TABLES)
    for name, needed in outputs.STAT_TABLES.items():
        split = calls[name](read_tables(parts[p] for p in needed))
        full = calls[name](whole)
        assert len(split) > 0, name
        pd.testing.assert_frame_equal(split.reset_index(drop=True), full.reset_index(drop=True), obj=name)
    # the convergence figure reads teachers and kd together: the rows of both, nothing else
    both = read_tables([parts["teachers"], parts["kd"]])
    assert set(both["stage"]) == {"teacher", "baseline", "final"} and list(both.columns) == RUN_COLUMNS
    with pytest.raises(DataError, match="no table given"):
        read_tables([])


def test_outputs_of_a_study_without_optional_parts():
    from kdcore.analysis import outputs

    core = {"teachers", "kd"}
    assert outputs.available(outputs.FIGURES, core) == ["gain_vs_capacity", "convergence"]
    assert outputs.available(outputs.TEX_TABLES, core) == ["main_results", "kd_statistics", "teachers", "moderation"]
    assert outputs.available_stat_tables(core | {"stem"}) == ["comparisons", "stem_ablation", "moderation"]
    assert outputs.FIGURES["fidelity"].parts() == ("kd", "fidelity")
    assert set(outputs.available(outputs.FIGURES, set(outputs.PARTS))) == set(outputs.FIGURES)


def test_fidelity_record_names_the_teacher_by_its_network_label():
    """A width variant's fidelity.json records the architecture (resnet50); the row takes the workflow's label
    (resnet50-w16), as the run table does, so the two tables join."""
    from kdcore.analysis.table import fidelity_record

    data = {
        "labels": {"run_id": "final/resnet50-w16-resnet18-w4/logit/seed0", "teacher": "resnet50-w16"},
        "teacher_arch": "resnet50",
        "student_test_acc": 0.5,
        "teacher_test_acc": 0.6,
        "top1_agreement": 0.7,
    }
    assert fidelity_record(data, "f.json")["teacher"] == "resnet50-w16"
    del data["labels"]["teacher"]
    assert fidelity_record(data, "f.json")["teacher"] == "resnet50"
