"""Tests of kdcore.teacher_cache: exactness against the live teacher, header verification, the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdcore.augment import augment_batch, render_views
from kdcore.checkpoint import save_model_checkpoint
from kdcore.data import load_dataset, prepare_dataset
from kdcore.errors import CheckpointError, ConfigError
from kdcore.models import build_model
from kdcore.teacher_cache import (
    TeacherCacheError,
    break_even_runs,
    build_teacher_cache,
    cache_worthwhile,
    cached_teacher_outputs,
    checkpoint_content_hash,
    compute_view_logits,
    expected_header,
    load_teacher_cache,
    main,
)

SPEC = {"arch": "resnet18", "width": 4, "stem": "cifar", "num_classes": 10}


def tiny_teacher(seed: int = 0) -> nn.Module:
    """A width-4 ResNet-18 in eval mode with non-trivial BatchNorm statistics (so eval differs from train)."""
    torch.manual_seed(seed)
    model = build_model("resnet18", 4)
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
    return model.eval().requires_grad_(False)


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """12 synthetic training images (plus 4 val, 4 test)."""
    path = tmp_path / "dataset.pt"
    spec = {"source": "synthetic", "synthetic": {"n_train": 16, "n_test": 4, "seed": 0}, "val_size": 4}
    prepare_dataset(spec, path)
    return path


@pytest.fixture
def teacher_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "teacher" / "best.pt"
    save_model_checkpoint(path, tiny_teacher(), SPEC, epoch=3, val_acc=0.5)
    return path


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_cached_logits_equal_the_live_teachers_fp32() -> None:
    teacher = tiny_teacher()
    images = _images(5)
    table = compute_view_logits(teacher, images, precision="fp32", batch_size=97)  # odd size: batches straddle images
    assert table.shape == (5, 162, 10) and table.dtype == torch.float32
    # every view, rendered and run live in one batch per image
    live_all = torch.stack([teacher(render_views(images[i : i + 1].expand(162, -1, -1, -1), torch.arange(162)))
                            for i in range(5)])  # fmt: skip
    diff_all = (table - live_all).abs().max().item()
    # the training path: random augmented batches, looked up by (image, view)
    from kdcore.teacher_cache import TeacherCache

    cache = TeacherCache(header={}, table=table)
    gen = torch.Generator().manual_seed(1)
    diffs = []
    for _ in range(4):
        idx = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(len(diffs)))
        batch, views = augment_batch(images[idx], gen, return_views=True)
        cached, features = cached_teacher_outputs(cache, idx, views)
        assert features is None
        diffs.append((cached - teacher(batch)).abs().max().item())
    scale = live_all.abs().max().item()
    print(f"fp32 cache vs live teacher: max abs diff {diff_all:.2e} (all views), {max(diffs):.2e} (augmented "
          f"batches); logits up to {scale:.2f}")  # fmt: skip
    assert scale > 0.1  # the logits are not trivially zero
    assert diff_all <= 1e-5 and max(diffs) <= 1e-5


def test_a_build_batches_by_device_and_the_batch_does_not_change_the_table() -> None:
    from kdcore.teacher_cache import build_batch_size

    assert build_batch_size(torch.device("cpu")) == 128 and build_batch_size(torch.device("cuda", 0)) == 1024
    teacher, images = tiny_teacher(), _images(3)
    small = compute_view_logits(teacher, images, precision="fp32", batch_size=build_batch_size(images.device))
    large = compute_view_logits(teacher, images, precision="fp32", batch_size=1024)
    assert torch.allclose(small, large, atol=1e-5, rtol=0)


def test_bf16_cache_matches_live_bf16_autocast() -> None:
    teacher = tiny_teacher()
    images = _images(3)
    table = compute_view_logits(teacher, images, precision="bf16", batch_size=162)
    assert table.dtype == torch.bfloat16
    views = torch.arange(162)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        live = teacher(render_views(images[1:2].expand(162, -1, -1, -1), views))
    assert live.dtype == torch.bfloat16  # what the engine's teacher returns under bf16 autocast
    diff = (table[1].float() - live.float()).abs().max().item()
    scale = live.float().abs().max().item()
    print(f"bf16 cache vs live bf16 teacher: max abs diff {diff:.2e}, logits up to {scale:.2f}")
    assert diff <= 0.02 * scale  # a few bf16 roundings (8-bit mantissa)


def test_build_load_and_lookup(tmp_path: Path, small_dataset: Path, teacher_checkpoint: Path) -> None:
    out = tmp_path / "cache" / "teacher_cache.pt"
    header = build_teacher_cache(teacher_checkpoint, small_dataset, out, device="cpu", precision="fp32", batch_size=500)
    data = load_dataset(small_dataset)
    assert out.is_file() and not list(out.parent.glob(".*.tmp"))
    assert header["n_images"] == data.n_train == 12 and header["n_views"] == 162 and header["num_classes"] == 10
    assert header["storage_dtype"] == "float32" and header["teacher_arch"] == SPEC
    expected = expected_header(teacher_checkpoint, data.fingerprint, data.n_train, data.num_classes, "fp32")
    cache = load_teacher_cache(out, "cpu", expected)
    assert cache.table.shape == (12, 162, 10)
    idx, views = torch.tensor([0, 11, 5]), torch.tensor([40, 161, 0])
    live = tiny_teacher()(render_views(data.train_images[idx], views))
    torch.testing.assert_close(cache.logits(idx, views), live, rtol=0, atol=1e-5)


def _mismatch(tmp_path: Path, cache: Path, expected: dict[str, Any], **changes: Any) -> str:
    with pytest.raises(TeacherCacheError) as info:
        load_teacher_cache(cache, "cpu", {**expected, **changes})
    return str(info.value)


@pytest.mark.slow
def test_verification_names_what_differs(tmp_path: Path, small_dataset: Path, teacher_checkpoint: Path) -> None:
    out = tmp_path / "teacher_cache.pt"
    build_teacher_cache(teacher_checkpoint, small_dataset, out, device="cpu", precision="bf16", batch_size=2000)
    data = load_dataset(small_dataset)
    expected = expected_header(teacher_checkpoint, data.fingerprint, data.n_train, data.num_classes, "bf16")
    assert load_teacher_cache(out, "cpu", expected).table.dtype == torch.bfloat16
    # another teacher (retrained: other weights)
    other = tmp_path / "other.pt"
    save_model_checkpoint(other, tiny_teacher(seed=1), SPEC)
    other_expected = expected_header(other, data.fingerprint, data.n_train, data.num_classes, "bf16")
    message = _mismatch(tmp_path, out, other_expected)
    assert "teacher_sha256" in message and str(out) in message and "dataset_fingerprint" not in message
    message = _mismatch(tmp_path, out, expected, dataset_fingerprint="0" * 64, precision="fp32")
    assert "dataset_fingerprint" in message and "precision: cache has 'bf16', run expects 'fp32'" in message
    assert "augment_code_digest" in _mismatch(tmp_path, out, expected, augment_code_digest="abc")
    # not a cache, missing, corrupt
    with pytest.raises(TeacherCacheError, match="not a teacher cache"):
        load_teacher_cache(teacher_checkpoint)
    with pytest.raises(TeacherCacheError, match="not found"):
        load_teacher_cache(tmp_path / "absent.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(TeacherCacheError, match="cannot read"):
        load_teacher_cache(broken)


def test_checkpoint_content_hash_covers_weights_not_metadata(tmp_path: Path) -> None:
    teacher = tiny_teacher()
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    save_model_checkpoint(a, teacher, SPEC, epoch=1, val_acc=0.1)
    save_model_checkpoint(b, teacher, SPEC, epoch=200, val_acc=0.9)
    assert checkpoint_content_hash(a) == checkpoint_content_hash(b)
    with torch.no_grad():
        teacher.fc.bias[0] += 1e-3
    save_model_checkpoint(c, teacher, SPEC)
    assert checkpoint_content_hash(c) != checkpoint_content_hash(a)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_content_hash(tmp_path / "absent.pt")


def test_bad_build_input_fails_before_compute(tmp_path: Path, small_dataset: Path, teacher_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="precision"):
        build_teacher_cache(teacher_checkpoint, small_dataset, tmp_path / "x.pt", precision="fp16")
    hundred = tmp_path / "c100.pt"
    save_model_checkpoint(hundred, build_model("resnet18", 4, num_classes=100), {**SPEC, "num_classes": 100})
    with pytest.raises(CheckpointError, match="100 classes"):
        build_teacher_cache(hundred, small_dataset, tmp_path / "x.pt", device="cpu")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_cli_writes_cache_and_reports_errors(tmp_path: Path, small_dataset: Path, teacher_checkpoint: Path, capsys):
    out = tmp_path / "cli_cache.pt"
    args = ["--teacher", str(teacher_checkpoint), "--data", str(small_dataset), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--batch-size", "2000"]) == 0
    assert "12 images x 162 views x 10 classes, bfloat16" in capsys.readouterr().out
    assert load_teacher_cache(out).header["precision"] == "bf16"
    assert main([*args[:1], str(tmp_path / "absent.pt"), *args[2:]]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cache_worthwhile_and_break_even() -> None:
    assert break_even_runs() == pytest.approx(1.62)
    assert break_even_runs(epochs=200) == pytest.approx(0.81)
    assert [cache_worthwhile(k) for k in range(5)] == [False, False, False, True, True]
    assert cache_worthwhile(2, threshold=2) and not cache_worthwhile(1, threshold=2)
    # short runs: 4-epoch runs forward the teacher 4 times per image, the build 162 times (break-even 40.5 runs)
    assert break_even_runs(epochs=4) == pytest.approx(40.5)
    assert not cache_worthwhile(40, epochs=4) and cache_worthwhile(41, epochs=4)
    assert not cache_worthwhile(1, threshold=1, epochs=100) and cache_worthwhile(2, threshold=1, epochs=100)
    with pytest.raises(ConfigError, match="epochs per run"):
        cache_worthwhile(3, epochs=0)
    with pytest.raises(ConfigError, match="integer >= 0"):
        cache_worthwhile(-1)
    with pytest.raises(ConfigError, match="threshold"):
        cache_worthwhile(3, threshold=0)
