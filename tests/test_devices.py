"""Tests of kdcore.devices: GPU leases by file locks, across processes (GPU ids injected; no GPU needed)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from kdcore import devices
from kdcore.devices import NoCudaError, lease_device
from kdcore.errors import ConfigError

GPUS = ["uuid-aaaa", "uuid-bbbb"]
GPU_VARS = (devices.REQUIRE_GPU_ENV, "CUDA_VISIBLE_DEVICES", *devices.SLURM_GPU_VARS)


@pytest.fixture(autouse=True)
def no_gpu_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the calling environment asks for a GPU unless a test sets one."""
    for name in GPU_VARS:
        monkeypatch.delenv(name, raising=False)


def _hold(lock_dir: str, record: str, hold: float, slots: int) -> None:
    """Child process: lease a device, hold it ``hold`` seconds, append (device, start, end) to ``record``."""
    with lease_device("auto", slots_per_gpu=slots, lock_dir=lock_dir, gpu_ids=GPUS, poll_seconds=0.02) as device:
        start = time.monotonic()
        time.sleep(hold)
        end = time.monotonic()
    with open(record, "a") as fh:
        fh.write(json.dumps({"device": device, "start": start, "end": end, "pid": os.getpid()}) + "\n")


def _crash_holding(lock_dir: str, ready: str) -> None:
    """Child process: lease a device, signal readiness, then hang until killed."""
    with lease_device("cuda:0", lock_dir=lock_dir, gpu_ids=GPUS, poll_seconds=0.02) as device:
        Path(ready).write_text(device)
        time.sleep(60)


def _run_many(tmp_path: Path, n: int, hold: float, slots: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    record = tmp_path / "record.jsonl"
    procs = [ctx.Process(target=_hold, args=(str(tmp_path / "locks"), str(record), hold, slots)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return [json.loads(line) for line in record.read_text().splitlines()]


def _max_concurrency(rows: list[dict]) -> dict[str, int]:
    """Largest number of simultaneous holders per device."""
    result: dict[str, int] = {}
    for device in {r["device"] for r in rows}:
        events = sorted(
            [(r["start"], 1) for r in rows if r["device"] == device]
            + [(r["end"], -1) for r in rows if r["device"] == device]
        )
        level = peak = 0
        for _, step in events:
            level += step
            peak = max(peak, level)
        result[device] = peak
    return result


def test_never_two_jobs_on_one_gpu(tmp_path: Path) -> None:
    rows = _run_many(tmp_path, n=5, hold=0.4, slots=1)
    assert len(rows) == 5
    assert {r["device"] for r in rows} == {"cuda:0", "cuda:1"}
    assert _max_concurrency(rows) == {"cuda:0": 1, "cuda:1": 1}
    # five jobs on two GPUs need at least three rounds
    assert max(r["end"] for r in rows) - min(r["start"] for r in rows) >= 3 * 0.4 - 0.05


def test_slots_allow_that_many_jobs_per_gpu(tmp_path: Path) -> None:
    rows = _run_many(tmp_path, n=4, hold=0.6, slots=2)
    assert _max_concurrency(rows) == {"cuda:0": 2, "cuda:1": 2}


def test_crashed_holder_releases_its_lease(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    lock_dir, ready = tmp_path / "locks", tmp_path / "ready"
    holder = ctx.Process(target=_crash_holding, args=(str(lock_dir), str(ready)))
    holder.start()
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(TimeoutError, match="no free GPU slot"):
        with lease_device("cuda:0", lock_dir=lock_dir, gpu_ids=GPUS, poll_seconds=0.02, timeout_seconds=0.2):
            pass
    # the other GPU is free meanwhile
    with lease_device("auto", lock_dir=lock_dir, gpu_ids=GPUS, timeout_seconds=0) as device:
        assert device == "cuda:1"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    with lease_device("cuda:0", lock_dir=lock_dir, gpu_ids=GPUS, timeout_seconds=1) as device:
        assert device == "cuda:0"


def test_lease_is_released_after_the_block_and_on_error(tmp_path: Path) -> None:
    with lease_device("cuda:1", lock_dir=tmp_path, gpu_ids=GPUS, timeout_seconds=0) as device:
        assert device == "cuda:1"
    with pytest.raises(RuntimeError), lease_device("cuda:1", lock_dir=tmp_path, gpu_ids=GPUS, timeout_seconds=0):
        raise RuntimeError("job failed")
    with lease_device("cuda:1", lock_dir=tmp_path, gpu_ids=GPUS, timeout_seconds=0) as device:
        assert device == "cuda:1"


def test_cpu_without_gpus_and_bad_requests(tmp_path: Path) -> None:
    with lease_device("auto", lock_dir=tmp_path, gpu_ids=[]) as device:
        assert device == "cpu"
    with lease_device("cpu", lock_dir=tmp_path, gpu_ids=GPUS) as device:
        assert device == "cpu"
    assert not list(tmp_path.iterdir())  # CPU leases take no locks
    with pytest.raises(NoCudaError, match="asked for a GPU .*the device names CUDA"):
        with lease_device("cuda", lock_dir=tmp_path, gpu_ids=[]):
            pass
    with pytest.raises(ConfigError, match="cuda:5"), lease_device("cuda:5", lock_dir=tmp_path, gpu_ids=GPUS):
        pass
    with pytest.raises(ConfigError, match="tpu"), lease_device("tpu", lock_dir=tmp_path, gpu_ids=GPUS):
        pass
    with pytest.raises(ConfigError, match="slots_per_gpu"):
        with lease_device("auto", slots_per_gpu=0, lock_dir=tmp_path, gpu_ids=GPUS):
            pass


def test_lease_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="kdcore.devices")
    with lease_device("auto", lock_dir=tmp_path, gpu_ids=GPUS):
        pass
    assert "device lease: cuda:0 (gpu uuid-aaaa, slot 0 of 1" in caplog.text


def test_placement_follows_the_runtime_section() -> None:
    import torch

    from kdcore.devices import autocast_context, make_placement
    from kdcore.errors import TrainingError

    cpu = make_placement({"device": "cpu", "precision": "fp32", "channels_last": "auto"})
    assert (cpu.device.type, cpu.dtype, cpu.channels_last) == ("cpu", torch.float32, False)
    assert cpu.memory_format == torch.contiguous_format
    bf16 = make_placement({"device": "cpu", "precision": "bf16", "channels_last": False})
    assert bf16.dtype == torch.bfloat16 and bf16.memory_format == torch.contiguous_format
    with pytest.raises(ConfigError, match="runtime.channels_last: true on the CPU is refused"):
        make_placement({"device": "cpu", "precision": "fp32", "channels_last": True})
    with autocast_context(bf16.device, bf16.dtype):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match=r"device 'cuda:0'\) but torch sees no CUDA device"):
            make_placement({"device": "cuda:0", "precision": "auto", "channels_last": "auto"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (devices.REQUIRE_GPU_ENV, "GPU job of the workflow"),
        ("CUDA_VISIBLE_DEVICES", "0"),
        ("SLURM_JOB_GPUS", "3"),
        ("SLURM_STEP_GPUS", "0,1"),
        ("SLURM_GPUS_ON_NODE", "1"),
    ],
)
def test_a_job_that_asked_for_a_gpu_and_sees_none_fails_at_once(tmp_path, monkeypatch, name, value):
    import torch

    monkeypatch.setenv(name, value)
    with pytest.raises(NoCudaError) as info, lease_device("auto", lock_dir=tmp_path, gpu_ids=[]):
        pytest.fail("the job ran")
    message = str(info.value)
    assert "\n" not in message
    assert f"this job asked for a GPU ({name}={value}; device 'auto') but torch sees no CUDA device" in message
    assert f"torch {torch.__version__}" in message and str(torch.version.cuda) in message
    assert "torch's CUDA initialisation:" in message and "compute.device: cpu" in message
    assert not list(tmp_path.iterdir())
    with lease_device("cpu", lock_dir=tmp_path, gpu_ids=[]) as device:  # the CPU, asked for explicitly
        assert device == "cpu"


@pytest.mark.parametrize(
    ("name", "value"),
    [(devices.REQUIRE_GPU_ENV, "0"), (devices.REQUIRE_GPU_ENV, ""), ("CUDA_VISIBLE_DEVICES", ""),
     ("CUDA_VISIBLE_DEVICES", "-1"), ("CUDA_VISIBLE_DEVICES", "NoDevFiles"), ("SLURM_GPUS_ON_NODE", "0")],
)  # fmt: skip
def test_variables_that_ask_for_no_gpu_keep_the_cpu_fallback_of_auto(tmp_path, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert devices.gpu_expected() is None
    with lease_device("auto", lock_dir=tmp_path, gpu_ids=[]) as device:
        assert device == "cpu"


def test_diagnosis_names_the_build_and_torchs_own_init_message(monkeypatch):
    import warnings

    import torch

    def init_fails() -> None:
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).\nPlease update")

    def warns() -> bool:
        warnings.warn("CUDA initialization: CUDA driver initialization failed", UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "init", init_fails)
    monkeypatch.setattr(torch.cuda, "is_available", warns)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    text = devices.cuda_diagnosis()
    assert f"torch {torch.__version__} is built for CUDA 12.8 (torch.version.cuda)" in text
    assert "CUDA initialization: CUDA driver initialization failed" in text
    assert "RuntimeError: The NVIDIA driver on your system is too old (found version 11040)." in text
    assert "Please update" not in text  # first lines only: one line in all
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "is a CPU-only build (torch.version.cuda is None)" in devices.cuda_diagnosis()


def test_kdcore_train_with_auto_in_a_gpu_job_without_cuda_fails(tmp_path, monkeypatch):
    """The run-level path (``runtime.device: auto`` resolved by the engine) refuses as the lease does."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    monkeypatch.setenv(devices.REQUIRE_GPU_ENV, "1")
    with pytest.raises(NoCudaError, match=r"KDCORE_REQUIRE_GPU=1; device 'auto'"):
        devices.make_placement({"device": "auto", "precision": "auto", "channels_last": "auto"})
    monkeypatch.setenv(devices.REQUIRE_GPU_ENV, "0")
    assert devices.make_placement({"device": "auto", "precision": "auto", "channels_last": "auto"}).device.type == "cpu"


def test_the_leased_gpu_becomes_the_current_device(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    for flag in ("benchmark", "deterministic", "allow_tf32"):
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)
    runtime = {"threads": None, "deterministic": False}
    devices.configure_backend(runtime, torch.device("cuda:1"))
    devices.configure_backend(runtime, torch.device("cuda"))  # no index: the current device, nothing to set
    devices.configure_backend(runtime, torch.device("cpu"))
    assert calls == [torch.device("cuda:1")]
