"""Tests of kdcore.augment: crops and flips against an explicit per-image reference, determinism, stats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcore.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    BatchAugmenter,
    augment_batch,
    crop_flip,
    normalize,
    normalize_batch,
    sample_params,
)
from kdcore.errors import ConfigError, DataError


def _batch(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _reference(images: torch.Tensor, dy: list[int], dx: list[int], flip: list[bool], pad: int = 4) -> torch.Tensor:
    """Explicit per-image loop: pad with zeros, slice, flip."""
    out = []
    for i in range(images.shape[0]):
        padded = F.pad(images[i], (pad, pad, pad, pad))
        crop = padded[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_augmentation_matches_explicit_reference() -> None:
    images = _batch()
    out = augment_batch(images, torch.Generator().manual_seed(5))
    params = sample_params(images.shape[0], torch.Generator().manual_seed(5))
    ref = _reference(images, params.dy.tolist(), params.dx.tolist(), params.flip.tolist())
    torch.testing.assert_close(out, normalize(ref), rtol=0, atol=0)
    # the draws cover the whole offset range and both flip states
    assert set(params.dy.tolist()) | set(params.dx.tolist()) <= set(range(9))
    assert 0 < int(params.flip.sum()) < images.shape[0]


def test_crop_flip_fixed_offsets() -> None:
    images = _batch(4)
    from kdcore.augment import AugmentParams

    params = AugmentParams(
        dy=torch.tensor([0, 8, 4, 3]), dx=torch.tensor([0, 8, 4, 7]), flip=torch.tensor([False, True, False, True])
    )
    out = crop_flip(images, params)
    # offset (4, 4) without flip is the identity
    assert torch.equal(out[2], images[2])
    # offset (0, 0): shifted down-right by 4, the first 4 rows/cols are zero padding
    assert torch.equal(out[0, :, 4:, 4:], images[0, :, :28, :28])
    assert torch.all(out[0, :, :4, :] == 0) and torch.all(out[0, :, :, :4] == 0)
    # offset (8, 8) flipped: crop shifted up-left, then mirrored
    assert torch.equal(out[1].flip(-1)[:, :28, :28], images[1, :, 4:, 4:])
    assert torch.equal(out, _reference(images, [0, 8, 4, 3], [0, 8, 4, 7], [False, True, False, True]))


def test_padding_is_black_before_normalisation() -> None:
    white = torch.full((256, 3, 32, 32), 255, dtype=torch.uint8)
    out = augment_batch(white, torch.Generator().manual_seed(0))
    pad_value = torch.tensor([-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)])
    white_value = torch.tensor([(1 - m) / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)])
    values = out.permute(1, 0, 2, 3).reshape(3, -1)
    for ch in range(3):
        unique = torch.unique(values[ch])
        assert len(unique) == 2
        torch.testing.assert_close(unique.min(), pad_value[ch])
        torch.testing.assert_close(unique.max(), white_value[ch])
    # expected share of padded pixels: E[|d-4|] = 20/9 px per axis out of 32
    share = (values[0] < 0).float().mean().item()
    expected = 1 - (1 - (20 / 9) / 32) ** 2
    assert share == pytest.approx(expected, abs=0.02)


def test_determinism_and_generator_sensitivity() -> None:
    images = _batch()
    a = augment_batch(images, torch.Generator().manual_seed(11))
    b = augment_batch(images, torch.Generator().manual_seed(11))
    c = augment_batch(images, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flip_rate_and_offset_distribution() -> None:
    params = sample_params(20000, torch.Generator().manual_seed(0))
    assert params.flip.float().mean().item() == pytest.approx(0.5, abs=0.02)
    counts = torch.bincount(params.dy, minlength=9).float() / 20000
    assert torch.all((counts - 1 / 9).abs() < 0.015)
    assert params.dx.min() == 0 and params.dx.max() == 8


def test_normalize_stats_and_formats() -> None:
    images = _batch(256)
    out = normalize(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    # uniform 0..255 pixels: mean 127.5/255, sd ~ 0.2887 before normalisation
    for ch in range(3):
        m = out[:, ch].mean().item()
        s = out[:, ch].std().item()
        assert m == pytest.approx((0.5 - CIFAR10_MEAN[ch]) / CIFAR10_STD[ch], abs=0.01)
        assert s == pytest.approx(0.2887 / CIFAR10_STD[ch], rel=0.01)
    cl = normalize_batch(images, memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out)
    half = normalize(images, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), out, atol=0.05, rtol=0.01)
    aug = augment_batch(images, torch.Generator().manual_seed(0), memory_format=torch.channels_last)
    assert aug.is_contiguous(memory_format=torch.channels_last)


def test_zero_pad_no_flip_is_identity() -> None:
    images = _batch(8)
    out = BatchAugmenter(pad=0, flip_p=0.0)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, normalize(images), rtol=0, atol=0)
    flipped = BatchAugmenter(pad=0, flip_p=1.0)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, normalize(images.flip(-1)), rtol=0, atol=0)


def test_bad_input() -> None:
    with pytest.raises(DataError, match="uint8"):
        augment_batch(torch.zeros(2, 3, 32, 32), torch.Generator())
    with pytest.raises(DataError, match="uint8"):
        normalize(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="pad"):
        BatchAugmenter(pad=-1)
    with pytest.raises(ConfigError, match="flip_p"):
        BatchAugmenter(flip_p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_reference() -> None:
    images = _batch().cuda()
    gen = torch.Generator(device="cuda").manual_seed(3)
    out = augment_batch(images, gen)
    params = sample_params(images.shape[0], torch.Generator(device="cuda").manual_seed(3))
    ref = _reference(images.cpu(), params.dy.tolist(), params.dx.tolist(), params.flip.tolist())
    torch.testing.assert_close(out.cpu(), normalize(ref), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="generator"):
        augment_batch(images, torch.Generator())


def test_views_do_not_change_the_batch_or_the_stream() -> None:
    from kdcore.augment import view_index

    images = _batch()
    gen_plain, gen_views = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    plain = augment_batch(images, gen_plain)
    batch, views = augment_batch(images, gen_views, return_views=True)
    assert torch.equal(plain, batch)
    # the generators are left in the same state: the next batch is the same too
    assert torch.equal(augment_batch(images, gen_plain), augment_batch(images, gen_views))
    params = sample_params(images.shape[0], torch.Generator().manual_seed(7))
    assert views.dtype == torch.int64
    assert torch.equal(views, view_index(params))
    assert torch.equal(views, params.flip.long() * 81 + params.dy * 9 + params.dx)


def test_view_index_order_and_inverse() -> None:
    from kdcore.augment import n_views, view_index, view_params

    assert n_views() == 162 and n_views(0) == 2 and n_views(2) == 50
    all_views = torch.arange(162)
    params = view_params(all_views)
    assert torch.equal(view_index(params), all_views)
    # unflipped first, row-major over (dy, dx); view 40 is offset (4, 4) unflipped, i.e. the image itself
    assert (params.dy[10].item(), params.dx[10].item(), params.flip[10].item()) == (1, 1, False)
    assert (params.dy[161].item(), params.dx[161].item(), params.flip[161].item()) == (8, 8, True)
    assert not params.flip[:81].any() and params.flip[81:].all()
    images = _batch(3)
    assert torch.equal(crop_flip(images, view_params(torch.full((3,), 40))), images)
    assert torch.equal(crop_flip(images, view_params(torch.full((3,), 121))), images.flip(-1))
    with pytest.raises(DataError, match=r"0\.\.161"):
        view_params(torch.tensor([162]))
    with pytest.raises(DataError, match="int64"):
        view_params(torch.tensor([1.0]))


def test_render_views_reproduces_the_augmentation() -> None:
    from kdcore.augment import render_views

    images = _batch(256)
    batch, views = augment_batch(images, torch.Generator().manual_seed(3), return_views=True)
    assert len(torch.unique(views)) > 100  # most of the 162 views occur
    torch.testing.assert_close(render_views(images, views), batch, rtol=0, atol=0)
    cl = render_views(images, views, memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, batch, rtol=0, atol=0)
    # every view of one image against the explicit per-image reference
    one = images[:1].expand(162, -1, -1, -1)
    every = torch.arange(162)
    dy, dx, flip = (every % 81 // 9).tolist(), (every % 9).tolist(), (every >= 81).tolist()
    torch.testing.assert_close(render_views(one, every), normalize(_reference(one, dy, dx, flip)), rtol=0, atol=0)
    with pytest.raises(DataError, match="view indices for a batch"):
        render_views(images, views[:3])
