"""Importer of the paper's results zip: small hand-made zips, and the real zip's published numbers."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from kdcore.analysis import stats
from kdcore.analysis.table import build_run_table
from kdcore.errors import DataError
from kdcore.reference import import_reference


def _result(
    model: str,
    seed: int,
    *,
    teacher: str | None = None,
    kd: str = "none",
    alpha: float = 0.5,
    temperature: float = 4.0,
    stem: str = "cifar",
    acc: float = 0.95,
    epochs: int = 3,
    no_proj_clip: bool | None = None,
) -> dict:
    out = {
        "model": model,
        "teacher": teacher,
        "kd_type": kd,
        "alpha": alpha,
        "temperature": temperature,
        "feat_beta": 0.5,
        "stem": stem,
        "seed": seed,
        "epochs": epochs,
        "best_val_acc": acc + 0.004,
        "best_val_epoch": epochs,
        "test_acc_best": acc,
        "test_acc_final": acc - 0.001,
        "history": [
            {
                "epoch": e + 1,
                "val_acc": acc * (e + 1) / epochs,
                "loss_ce": 1.0,
                "loss_kd": 0.1,
                "loss_total": 1.1,
                "train_acc": 0.5,
                "grad_norm_max": 3.0,
                **({"proj_grad_norm_max": 0.2} if no_proj_clip else {}),
            }
            for e in range(epochs)
        ],
    }
    if no_proj_clip is not None:
        out.update(
            no_proj_clip=no_proj_clip,
            grad_norm_max_overall=3.0,
            proj_grad_norm_max_overall=0.2 if no_proj_clip else 0.0,
        )
    return out


def _zip(path: Path, members: dict[str, object]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data if isinstance(data, str) else json.dumps(data))
    return path


def _members() -> dict[str, object]:
    m: dict[str, object] = {
        "runs/teachers/r50/seed0/results.json": _result("resnet50", 0, epochs=4),
        "runs/final/baseline/resnet18/seed0/results.json": _result("resnet18", 0, acc=0.94),
        "runs/final/resnet50_to_resnet18_feature/seed0/results.json": _result(
            "resnet18", 0, teacher="resnet50", kd="feature", alpha=0.7, acc=0.945, no_proj_clip=False
        ),
        "runs/final/resnet50_to_resnet18_feature/seed0/fidelity.json": {
            "student_arch": "resnet18",
            "teacher_arch": "resnet50",
            "student_test_acc": 0.945,
            "teacher_test_acc": 0.95,
            "top1_agreement": 0.953,
            "kl_t1": 0.18,
            "kl_t4": 0.03,
            "per_class_acc": {"cat": 0.9},
        },
        "runs/select/resnet50_to_resnet18/logit/a0.3_t2/seed0/results.json": _result(
            "resnet18", 0, teacher="resnet50", kd="logit", alpha=0.3, temperature=2.0
        ),
        "runs/stem_ablation/resnet18_imagenet/seed0/results.json": _result("resnet18", 0, stem="imagenet", acc=0.88),
        "runs/bug_ablation/resnet50_to_resnet18/feature_bugged/a0.7/seed0/results.json": _result(
            "resnet18", 0, teacher="resnet50", kd="feature", alpha=0.7, no_proj_clip=True
        ),
    }
    return m


def test_import_small_zip(tmp_path):
    n = import_reference(_zip(tmp_path / "r.zip", _members()), tmp_path / "out", allow_partial=True)
    assert n == 6
    m = sorted((tmp_path / "out").rglob("metrics.json"))
    f = sorted((tmp_path / "out").rglob("fidelity.json"))
    runs = build_run_table(m, f).set_index("run_id")
    assert set(runs["stage"]) == {"teacher", "baseline", "final", "select", "stem", "clip"}
    fin = runs.loc["final/resnet50-resnet18/feature/seed0"]
    assert fin["source"] == "paper-reference" and fin["device"] == "A100 (paper)"
    assert fin["data_source"] == "torchvision" and not fin["synthetic"] and fin["width"] == 64
    assert fin["split"] == "paper"  # the paper's own 45k/5k split of torchvision's CIFAR-10
    assert fin["test_best"] == pytest.approx(94.5) and fin["agreement"] == pytest.approx(95.3)
    assert fin["alpha"] == 0.7 and fin["clip_scope"] == "all"
    assert fin["proj_grad_norm_max"] != fin["proj_grad_norm_max"]  # 0.0 placeholder -> not recorded (NaN)
    clip = runs.loc["clip/resnet50-resnet18/feature/seed0"]
    assert clip["clip_scope"] == "student_only" and clip["proj_grad_norm_max"] == pytest.approx(0.2)
    sel = runs.loc["select/resnet50-resnet18/logit/a0.3-t2/seed0"]
    assert (sel["alpha"], sel["temperature"]) == (0.3, 2.0)
    assert runs.loc["stem/resnet18/imagenet/seed0", "stem"] == "imagenet"
    assert runs.loc["teacher/resnet50/seed0", "epochs"] == 4


@pytest.mark.parametrize(
    "member, data, message",
    [
        ("runs/final/baseline/resnet18/seed0/results.json", "{not json", "not valid JSON"),
        ("runs/final/baseline/resnet18/seed0/results.json", {"model": "resnet18"}, "missing field"),
        ("runs/final/baseline/resnet18/seed0/results.json", _result("resnet34", 0), "disagrees with the path"),
        ("runs/elsewhere/x/seed0/results.json", _result("resnet18", 0), "no known run layout"),
        (
            "runs/final/baseline/resnet18/seed0/results.json",
            {**_result("resnet18", 0), "test_acc_best": 95.0},
            "fraction",
        ),
    ],
)
def test_malformed_member_is_named(tmp_path, member, data, message):
    members = _members()
    members[member] = data
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message) as err:
        import_reference(_zip(tmp_path / "r.zip", members), out)
    assert member in str(err.value)
    assert not out.exists()  # nothing half-written


def test_missing_or_broken_zip(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        import_reference(tmp_path / "none.zip", tmp_path / "out")
    (tmp_path / "bad.zip").write_text("nope")
    with pytest.raises(DataError, match="not a zip"):
        import_reference(tmp_path / "bad.zip", tmp_path / "out")


def test_zip_with_two_members_of_one_name_is_refused(tmp_path):
    path = _zip(tmp_path / "r.zip", _members())
    member = "runs/final/baseline/resnet18/seed0/results.json"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as zf:
        zf.writestr(member, json.dumps(_result("resnet18", 0, acc=0.10)))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"holds two members named '{member}'; refusing it"):
        import_reference(path, out, allow_partial=True)
    assert not out.exists()


def test_oversized_member_is_refused_before_it_is_decompressed(tmp_path, monkeypatch):
    members = _members()
    member = "runs/final/baseline/resnet18/seed0/results.json"
    members[member] = " " * (2 << 20) + json.dumps(_result("resnet18", 0))  # 2 MB of blanks, valid JSON
    path = tmp_path / "r.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data if isinstance(data, str) else json.dumps(data))
    assert path.stat().st_size < 64 << 10
    monkeypatch.setattr("kdcore.reference.MAX_MEMBER_BYTES", 1 << 20)
    read: list[int] = []
    original = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = original(self, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with pytest.raises(DataError, match=rf"'{member}': \d+ bytes uncompressed, more than the 1048576 bytes"):
        import_reference(path, tmp_path / "out", allow_partial=True)
    assert max(read, default=0) <= (1 << 20) + 1
    assert not (tmp_path / "out").exists()


def _paper_zip() -> Path | None:
    for root in (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared")):
        candidate = root / "data" / "paper-v2-runs.zip"
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory):
    zip_path = _paper_zip()
    if zip_path is None:
        pytest.skip("the paper's results zip (../shared/data/paper-v2-runs.zip) is not available")
    out = tmp_path_factory.mktemp("paper")
    assert import_reference(zip_path, out) == 126
    return build_run_table(sorted(out.rglob("metrics.json")), sorted(out.rglob("fidelity.json")))


@pytest.mark.slow
def test_paper_baselines(paper_runs):
    cells = stats.cell_summary(paper_runs)
    base = cells[cells["stage"] == "baseline"].set_index("student")
    assert base.loc["resnet18", "n"] == 5 and base.loc["resnet34", "n"] == 5
    assert round(base.loc["resnet18", "mean"], 2) == 94.86 and round(base.loc["resnet18", "std"], 2) == 0.14
    assert round(base.loc["resnet34", "mean"], 2) == 95.04 and round(base.loc["resnet34", "std"], 2) == 0.13


def test_paper_kd_statistics(paper_runs):
    comp = stats.kd_comparisons(paper_runs).set_index(["pair", "method"])
    assert len(comp) == 8
    r50 = comp.loc[("resnet50-resnet34", "feature")]
    assert round(r50["gain"], 2) == 0.19 and round(r50["p_welch"], 3) == 0.031 and round(r50["p_paired"], 3) == 0.040
    r101 = comp.loc[("resnet101-resnet34", "feature")]
    assert round(r101["gain"], 2) == 0.21 and round(r101["p_welch"], 3) == 0.022
    assert (comp["p_holm"] >= 0.05).all()
    assert (comp["p_welch"] < 0.05).sum() == 2


def test_paper_fidelity_and_ablations(paper_runs):
    assert paper_runs.loc[(paper_runs["stage"] == "final"), "agreement"].notna().all()
    stem = stats.stem_ablation(paper_runs).set_index("student")
    assert (stem["diff"] > 5).all()  # the CIFAR stem wins by >5 pp for every architecture
    clip = stats.clip_ablation(paper_runs).iloc[0]
    assert clip["n_bugged"] == 5 and clip["n_corrected"] == 5 and clip["proj_grad_norm_max_bugged"] < 1.0
