"""The GPU check (scripts/gpu-check.sh, tools/gpucheck.py): its CPU-sized run end to end, and its error paths."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
TOOL = REPO / "tools" / "gpucheck.py"


def load_tool():
    """tools/gpucheck.py as a module (an operations tool outside the kdcore package, so not importable by name)."""
    spec = importlib.util.spec_from_file_location("gpucheck", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpucheck = load_tool()


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script sets it to this repo's src/
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    outdir = tmp_path_factory.mktemp("gpu-check") / "out"
    return run_script(str(outdir), "--cpu"), outdir


@pytest.mark.slow
def test_cpu_check_passes_and_writes_flat_outputs(cpu_check):
    proc, outdir = cpu_check
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(p.name for p in outdir.iterdir()) == ["bench.json", "check.log", "results.json", "results.md"]
    assert "gpu-check: all steps ok" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "gpu-check: all steps ok"


@pytest.mark.slow
def test_cpu_check_results_json(cpu_check):
    _, outdir = cpu_check
    results = json.loads((outdir / "results.json").read_text())
    assert results["mode"] == "cpu"
    assert results["environment"]["torch"] == torch.__version__
    assert list(results["steps"]) == ["bench", "r18", "smoke", "concurrency"]
    for name, step in results["steps"].items():
        assert step["status"] == "ok", (name, step.get("error"))
        assert step["wall_s"] > 0
    steps = {name: step["result"] for name, step in results["steps"].items()}

    bench_rows = steps["bench"]["rows"]
    assert {r["case"] for r in bench_rows} >= {"resnet18", "resnet50"}
    assert all(r["fast_images_per_s"] > 0 and r["standard_images_per_s"] > 0 for r in bench_rows)
    assert json.loads((outdir / "bench.json").read_text())["kind"] == "bench"

    r18 = steps["r18"]
    assert r18["epochs_done"] == r18["epochs_planned"] == 1
    assert all(e["seconds"] > 0 and 0 <= e["val_acc"] <= 1 for e in r18["per_epoch"])
    assert r18["final"]["environment"]["device"] == "cpu"

    smoke = steps["smoke"]
    assert smoke["n_runs"] == 2  # the two smoke baselines (--until train_baseline)
    assert {p["device"] for p in smoke["placements"]} == {"cpu"}

    concurrency = steps["concurrency"]["rows"]
    assert [r["processes"] for r in concurrency] == [1, 2]
    assert [r["threads_per_process"] for r in concurrency] == [1, 1]  # the CPU plan's one thread per process
    for row in concurrency:
        assert row["aggregate_images_per_s"] > 0
        assert len(row["per_process_images_per_s"]) == row["processes"]


@pytest.mark.slow
def test_cpu_check_bench_is_the_quick_bench_with_parsable_rows(cpu_check):
    """The check's bench step is `python -m kdcore.bench --quick` (CPU-sized): its bench.json holds the quick
    cases, each with both recipes' throughput and their ratio, and its printed table reached the log."""
    _, outdir = cpu_check
    bench = json.loads((outdir / "bench.json").read_text())
    assert [r["case"] for r in bench["rows"]] == ["resnet18", "resnet50", "resnet50->resnet34 feature"]
    for row in bench["rows"]:
        assert row["fast_images_per_s"] > 0 and row["standard_images_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["fast_images_per_s"] / row["standard_images_per_s"])
        assert row["step_gflops"] > 0
        assert row["precision"] in ("bf16", "fp32") and row["standard_precision"] == "fp32"
        assert row["host_sync_in_steps"] is None  # checked on CUDA only
    log = (outdir / "check.log").read_text()
    assert "[bench] " in log and "ratio" in log and "resnet50->resnet34 feature" in log


@pytest.mark.slow
def test_cpu_check_markdown_matches_json(cpu_check):
    proc, outdir = cpu_check
    markdown = (outdir / "results.md").read_text()
    assert markdown in proc.stdout  # printed at the end
    for title in gpucheck.SECTION_TITLES.values():
        assert f"## {title}" in markdown
    for name in gpucheck.STEP_NAMES:
        assert f"| {name} | ok |" in markdown
    results = json.loads((outdir / "results.json").read_text())
    fast = results["steps"]["bench"]["result"]["rows"][0]["fast_images_per_s"]
    assert f"| {fast:.0f} |" in markdown


def test_gpu_mode_without_cuda_refuses_before_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    proc = run_script(str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--cpu" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_script_rejects_unknown_option(tmp_path):
    proc = run_script(str(tmp_path), "--gpus", "2", timeout=30)
    assert proc.returncode == 2
    assert "unknown option --gpus" in proc.stderr


def test_failed_step_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    def broken(*_args):
        raise RuntimeError("bench: exit status 3\nboom")

    monkeypatch.setitem(gpucheck.STEPS, "bench", broken)
    outdir = tmp_path / "out"
    outdir.mkdir()
    results = {
        "mode": "cpu",
        "environment": gpucheck.environment(),
        "started": "now",
        "steps": {},
        "archive_path": None,
    }
    console = gpucheck.Console(outdir / "check.log")
    gpucheck.run_step("bench", gpucheck.cpu_plan(), outdir, tmp_path, console, results)
    saved = json.loads((outdir / "results.json").read_text())
    assert saved["steps"]["bench"]["status"] == "failed"
    assert "boom" in saved["steps"]["bench"]["error"]
    assert "| bench | failed |" in (outdir / "results.md").read_text()
    assert "**failed**: bench: exit status 3" in (outdir / "results.md").read_text()


def test_partial_bench_rows_feed_the_epoch_estimate():
    line = (
        f"{'resnet18':<28}{9000:>11.0f}{1500:>11.0f}{6.0:>6.2f}x{5.0:>10.1f}{30.0:>10.1f}{50.0:>9.3f}{'5%':>7}{900:>8}"
    )
    assert gpucheck.parse_printed_row(line) == {"case": "resnet18", "fast_epoch_s": 5.0}
    results = {"steps": {"bench": {"result": {"printed_rows": [line, "garbage"]}}}}
    epochs, why = gpucheck.estimate_epochs(gpucheck.gpu_plan(), results)
    budget = gpucheck.gpu_plan().budgets["r18"]
    assert epochs == int((budget - 40) // (1.3 * 5.0 + 1.5))
    assert "5.0" in why


def test_smoke_placement_on_a_gpu_must_be_cuda_bf16_channels_last():
    gpu, cpu = gpucheck.gpu_plan(), gpucheck.cpu_plan()
    good = {"device": "cuda:0", "precision": "bfloat16", "channels_last": True}
    assert gpucheck.placement_as_expected(gpu, good)
    assert not gpucheck.placement_as_expected(gpu, good | {"precision": "float32"})
    assert not gpucheck.placement_as_expected(gpu, good | {"channels_last": False})
    assert not gpucheck.placement_as_expected(gpu, good | {"device": "cpu"})
    assert gpucheck.placement_as_expected(cpu, {"device": "cpu", "precision": "float32", "channels_last": False})


# ----------------------------------------------------------------------------- the total budget
def test_gpu_step_budgets_fit_the_eight_minute_slot():
    plan = gpucheck.gpu_plan()
    assert sum(plan.budgets.values()) + gpucheck.RESULTS_MARGIN_S <= plan.total_s
    assert plan.total_s + 25 <= 480  # the script's wall-clock limit, of which the check keeps 25 s back
    script = SCRIPT.read_text()
    assert "TOTAL=480" in script and '--total-s "$((TOTAL - 25))"' in script and '"$((TOTAL - 10))"' in script


def test_a_step_budget_is_cut_to_what_is_left_of_the_total():
    plan = gpucheck.gpu_plan()
    assert plan.time_for("bench") == plan.budgets["bench"]  # no deadline yet
    soon = gpucheck.dataclasses.replace(plan, deadline=time.monotonic() + 20)
    assert 14 <= soon.time_for("bench") <= 20 - gpucheck.RESULTS_MARGIN_S
    assert gpucheck.dataclasses.replace(plan, deadline=time.monotonic() - 1).time_for("smoke") == 0


def fake_step(seconds: str):
    def step(plan, outdir, tmp, console, results):
        gpucheck.run_logged(["sleep", seconds], plan.time_for("bench"), console, "fake")
        return {"slept": seconds}

    return step


def test_total_budget_is_enforced_and_partial_results_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "RESULTS_MARGIN_S", 0.2)
    monkeypatch.setattr(gpucheck, "import_problems", lambda modules, timeout: {})
    monkeypatch.setitem(gpucheck.STEPS, "bench", fake_step("0.1"))
    monkeypatch.setitem(gpucheck.STEPS, "r18", fake_step("30"))
    outdir = tmp_path / "out"
    start = time.monotonic()
    assert gpucheck.run_check(outdir, None, cpu=True, total_s=2.0) == 1
    assert time.monotonic() - start < 8
    steps = json.loads((outdir / "results.json").read_text())["steps"]
    assert steps["bench"]["status"] == "ok" and steps["bench"]["result"] == {"slept": "0.1"}
    assert steps["r18"]["status"] == "timeout" and "killed after its budget" in steps["r18"]["error"]
    assert [steps[n]["status"] for n in ("smoke", "concurrency")] == ["skipped", "skipped"]
    assert "total budget of 2 s is spent" in steps["smoke"]["error"]
    assert "| smoke | skipped |" in (outdir / "results.md").read_text()
    last = (outdir / "check.log").read_text().strip().splitlines()[-1]
    assert last == "gpu-check: FAILED steps: r18 (timeout), smoke (skipped), concurrency (skipped)"


@pytest.mark.slow
def test_sigterm_keeps_what_was_measured(tmp_path):
    """The script's `timeout` backstop sends SIGTERM: the check stops its step and writes its results."""
    outdir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(TOOL), "run", str(outdir), "--cpu", "--total-s", "300"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "[bench] $" not in _read(outdir / "check.log"):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out[-3000:]
    results = json.loads((outdir / "results.json").read_text())
    assert results["interrupted"] == "stopped by SIGTERM"
    assert "preflight" in results and results["preflight"]["problems"] == []
    assert "gpu-check: FAILED steps" in out or results["steps"] == {}
    unfinished = ", ".join(n for n in gpucheck.STEP_NAMES if n not in results["steps"])
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"gpu-check: interrupted (stopped by SIGTERM); not finished: {unfinished}"), last
    assert "all steps ok" not in out


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# ----------------------------------------------------------------------------- pre-flight
def test_preflight_names_modules_that_do_not_import():
    problems = gpucheck.import_problems(("json", "no_such_module_kdcore"), timeout=60)
    assert list(problems) == ["no_such_module_kdcore"]
    assert problems["no_such_module_kdcore"].startswith("ModuleNotFoundError")


def test_preflight_checks_the_archive(tmp_path):
    assert "archive not found" in gpucheck.archive_problem(tmp_path / "missing.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    assert "cannot read the archive" in gpucheck.archive_problem(tmp_path / "junk.tar.gz")
    for folder in ("train", "test"):
        (tmp_path / "src" / folder / "cat").mkdir(parents=True)
        (tmp_path / "src" / folder / "cat" / "0.jpg").write_bytes(b"x")
    with tarfile.open(tmp_path / "train-only.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "train", arcname="train")
    assert "holds no test/ folder" in gpucheck.archive_problem(tmp_path / "train-only.tar.gz")
    with tarfile.open(tmp_path / "good.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "train", arcname="train")
        tar.add(tmp_path / "src" / "test", arcname="test")
    assert gpucheck.archive_problem(tmp_path / "good.tar.gz") is None
    with tarfile.open(tmp_path / "nested.tar.gz", "w:gz") as tar:  # as the real archive: cifar10-jpeg/test/...
        tar.add(tmp_path / "src" / "test", arcname="cifar10-jpeg/test")
        tar.add(tmp_path / "src" / "train", arcname="cifar10-jpeg/train")
    assert gpucheck.archive_problem(tmp_path / "nested.tar.gz") is None


def test_preflight_accepts_the_project_archive():
    archive = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is not on this machine")
    assert gpucheck.archive_problem(archive) is None


def test_failed_preflight_writes_results_and_exits_2_before_any_step(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpucheck,
        "import_problems",
        lambda modules, timeout: {m: "ModuleNotFoundError: x" for m in modules if m == "snakemake"},
    )
    ran = []
    monkeypatch.setitem(gpucheck.STEPS, "bench", lambda *args: ran.append("bench") or {})
    outdir = tmp_path / "out"
    assert gpucheck.run_check(outdir, tmp_path / "missing.tar.gz", cpu=False) == 2
    assert ran == []
    results = json.loads((outdir / "results.json").read_text())
    assert results["steps"] == {}
    assert results["preflight"]["problems"] == [
        "cannot import snakemake: ModuleNotFoundError: x",
        f"CIFAR-10 archive not found: {tmp_path / 'missing.tar.gz'} (put it in data/ or give it with --data)",
    ]


def test_failed_preflight_says_so_in_its_last_line(tmp_path, monkeypatch, capsys):
    """A module missing on the GPU machine: the check stops with exit status 2, and its last line says why."""
    monkeypatch.setattr(
        gpucheck,
        "import_problems",
        lambda modules, timeout: {
            m: f"ModuleNotFoundError: No module named '{m}'" for m in modules if m == "jsonschema"
        },
    )
    ran = []
    monkeypatch.setitem(gpucheck.STEPS, "bench", lambda *args: ran.append("bench") or {})
    outdir = tmp_path / "out"
    assert gpucheck.run_check(outdir, None, cpu=True) == 2
    assert ran == []
    expected = "gpu-check: stopped at pre-flight, no step ran: cannot import jsonschema: ModuleNotFoundError: No module named 'jsonschema'"
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1] == expected
    assert (outdir / "check.log").read_text().strip().splitlines()[-1] == expected
    assert "all steps ok" not in printed


def test_the_last_line_names_how_the_check_ended():
    ok, failed = {"status": "ok"}, {"status": "failed"}
    assert gpucheck.verdict({"steps": {n: ok for n in gpucheck.STEP_NAMES}}) == (0, "all steps ok")
    assert gpucheck.verdict({"steps": {"bench": ok, "r18": failed}}) == (1, "FAILED steps: r18 (failed)")
    stopped = {"steps": {"bench": failed}, "interrupted": "stopped by SIGTERM"}
    assert gpucheck.verdict(stopped) == (
        1,
        "interrupted (stopped by SIGTERM); not finished: r18, smoke, concurrency; FAILED steps: bench (failed)",
    )
    preflight = {"steps": {}, "preflight": {"problems": ["cannot import snakemake: x", "archive not found"]}}
    assert gpucheck.verdict(preflight) == (
        2,
        "stopped at pre-flight, no step ran: cannot import snakemake: x; archive not found",
    )


def test_smoke_step_runs_training_rules_only():
    assert gpucheck.gpu_plan().smoke_until == gpucheck.SMOKE_TRAINING_RULES
    assert not any(rule.startswith(("analysis", "fidelity")) for rule in gpucheck.SMOKE_TRAINING_RULES)
    assert "pandas" not in gpucheck.NEEDED_MODULES and "pandas" in gpucheck.ANALYSIS_MODULES


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
