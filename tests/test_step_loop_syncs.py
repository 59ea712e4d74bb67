"""No host synchronisation in the training step loop: no tensor is built from Python values per step.

On CUDA, ``torch.tensor(python_value, device=cuda)`` is a blocking host-to-device copy; the step loop must
build none. On the CPU this is checked by counting calls of the tensor factories that take Python data
during an epoch (after a warm-up epoch that may fill per-device caches); with CUDA present the same epoch
also runs under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from kdcore import augment
from kdcore.bench import Case, build_case, random_teacher_cache, synthetic_images
from kdcore.devices import make_placement
from kdcore.engine import EpochAccumulator, RunState, make_step_fn, train_one_epoch
from kdcore.teacher_cache import STORAGE_DTYPES

FACTORIES = ("tensor", "as_tensor", "scalar_tensor")
BATCH = 16
STEPS = 3


@contextmanager
def count_factory_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Count calls of torch.tensor / torch.as_tensor / torch.scalar_tensor inside the block."""
    calls: Counter = Counter()

    def counting(name: str, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    with monkeypatch.context() as patch:
        for name in FACTORIES:
            patch.setattr(torch, name, counting(name, getattr(torch, name)))
        yield calls


def epoch_runner(
    case: Case, device: str, read_loss_each_step: bool = False, cached_teacher: bool = False
) -> Callable[..., dict[str, Any]]:
    """A function that trains one epoch of ``STEPS`` steps of ``case`` (width 4) on the engine's fast path."""
    cfg, method, student, teacher, trainable = build_case(case, 4, {"device": device, "threads": 1}, BATCH)
    placement = make_placement(cfg["runtime"])
    for module in (student, teacher, trainable):
        if module is not None:
            module.to(placement.device, memory_format=placement.memory_format)
    params = list(student.parameters()) + (list(trainable.parameters()) if trainable is not None else [])
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    cache = None
    if cached_teacher:
        dtype = STORAGE_DTYPES["bf16" if placement.dtype == torch.bfloat16 else "fp32"]
        cache = random_teacher_cache(STEPS * BATCH, 10, dtype, placement.device)
    step_fn = make_step_fn(student, trainable, optimizer, method, teacher, cfg, placement, cache)
    if read_loss_each_step:
        fast_step = step_fn

        def step_fn(*args: Any) -> Any:
            out = fast_step(*args)
            out[0].item()
            return out

    state = RunState(student, trainable, optimizer, history=[])
    images, labels = synthetic_images(STEPS * BATCH)
    images, labels = images.to(placement.device), labels.to(placement.device)

    def run_epoch(sync_debug: str | None = None) -> dict[str, Any]:
        return train_one_epoch(0, state, step_fn, images, labels, cfg, placement, sync_debug=sync_debug)

    return run_epoch


CASES = [Case("resnet18"), Case("resnet18", "resnet34", "logit"), Case("resnet18", "resnet34", "feature")]


@pytest.mark.parametrize("cached", [False, True], ids=["live-teacher", "cached-teacher"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_step_loop_builds_no_tensor_from_python_values(monkeypatch, case, cached):
    if cached and case.method != "logit":
        pytest.skip("a teacher cache serves logit methods only")
    run_epoch = epoch_runner(case, "cpu", cached_teacher=cached)
    run_epoch()  # warm-up: per-device caches (normalisation constants) are filled here
    with count_factory_calls(monkeypatch) as calls:
        entry = run_epoch()
    assert entry["loss"] > 0
    assert sum(calls.values()) == 0, f"tensors built from Python values during {STEPS} steps: {dict(calls)}"


def test_the_counter_sees_a_per_step_factory_call(monkeypatch):
    """The check can fail: with the normalisation cache emptied the first step builds its constants."""
    run_epoch = epoch_runner(Case("resnet18"), "cpu")
    run_epoch()
    with count_factory_calls(monkeypatch) as calls:
        augment.channel_stats.cache_clear()
        run_epoch()
    assert calls["tensor"] == 2  # mean and std, once: the cache is filled again by the first batch


def test_first_non_finite_step_is_found_on_the_device():
    acc = EpochAccumulator(torch.device("cpu"))
    for loss in (1.0, 2.0, float("nan"), 3.0, float("inf")):
        acc.check_finite(torch.tensor(loss))
        acc.add("loss", torch.tensor(loss if loss == loss else 0.0))
    assert acc.summary()[2] == 2
    clean = EpochAccumulator(torch.device("cpu"))
    for loss in (1.0, 2.0):
        clean.check_finite(torch.tensor(loss))
        clean.add("loss", torch.tensor(loss))
    assert clean.summary()[2] == -1


def test_normalisation_constants_are_cached_per_device_and_values():
    a = augment.channel_stats(augment.CIFAR10_MEAN, augment.CIFAR10_STD, torch.device("cpu"))
    b = augment.channel_stats(augment.CIFAR10_MEAN, augment.CIFAR10_STD, torch.device("cpu"))
    c = augment.channel_stats(augment.CIFAR100_MEAN, augment.CIFAR100_STD, torch.device("cpu"))
    assert a[0] is b[0] and a[1] is b[1]
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (1, 3, 1, 1) and a[0].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_step_loop_has_no_host_sync_on_cuda(case):
    run_epoch = epoch_runner(case, "cuda")
    run_epoch()
    torch.cuda.synchronize()
    run_epoch("error")  # raises RuntimeError at the first synchronising call inside the step loop
    assert torch.cuda.get_sync_debug_mode() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sync_debug_mode_catches_a_per_step_sync():
    """The CUDA check can fail: a step that reads its loss on the host is refused."""
    run_epoch = epoch_runner(Case("resnet18"), "cuda", read_loss_each_step=True)
    with pytest.raises(RuntimeError, match="synchroniz"):
        run_epoch("error")
    assert torch.cuda.get_sync_debug_mode() == 0
