"""Batched CIFAR-10 augmentation on the training device: zero-pad + random crop, horizontal flip, normalise.

The prepared dataset lives on the device as uint8 ``[N,3,32,32]``; each training batch is augmented
here with tensor ops only (one gather per batch, no Python loop over images), with randomness drawn
from a ``torch.Generator`` on the same device, so a run is reproducible from its seed.

Per image (same distribution as torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``):

1. zero-pad by ``pad`` (default 4) pixels on every side: the padding is black, pixel value 0, *before*
   normalisation (so after normalisation it reads ``-mean/std``, as with torchvision's transforms);
2. crop ``H x W`` at offsets ``(dy, dx)`` drawn uniformly from ``{0, ..., 2*pad}`` each;
3. flip left-right with probability ``flip_p`` (default 0.5);
4. convert to float, scale to [0, 1] and normalise with the CIFAR-10 channel mean
   (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616) -- the per-pixel std over the training
   set, the values the paper uses (not the often-quoted 0.2023, 0.1994, 0.2010).

Random draws, in this order, from the given generator: ``offsets = randint(0, 2*pad+1, (B, 2))``
(column 0 = dy, column 1 = dx), then ``flips = rand(B) < flip_p``. :func:`sample_params` makes
exactly these draws, so a caller (or a test) can reproduce a batch's augmentation.

View index. With ``n = 2*pad + 1`` crop offsets per axis there are ``2 * n * n`` distinct augmented views
of an image (162 for pad 4). Each is named by one integer::

    view = flip * n * n + dy * n + dx        # flip in {0, 1}; dy, dx in {0, ..., 2*pad}

so views ``0 .. n*n - 1`` are unflipped (row-major over ``(dy, dx)``; view 40 = offset (4, 4) = the image
itself) and views ``n*n .. 2*n*n - 1`` are their mirror images. :meth:`BatchAugmenter.augment_with_views`
(or ``augment_batch(..., return_views=True)``) returns each sample's view index with the batch, computed
from the same draws, so the random stream and the images are those of the plain call; :func:`render_views`
renders given view indices of given images (used to precompute a frozen teacher's outputs per view,
``kdcore.teacher_cache``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F

from kdcore.errors import ConfigError, DataError

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
#: CIFAR-100's channel mean and per-pixel std over its training set (the values of the CRD benchmark code).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)
#: dataset name -> (mean, std) used to normalise its images; the dataset artefact records its pair.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}
PAD = 4
FLIP_P = 0.5


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"augmentation expects a uint8 batch [B,C,H,W], got {what}")


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    if torch.device(generator.device).type != device.type:
        raise ConfigError(
            f"augmentation generator is on {generator.device} but the batch is on {device}; "
            "create the generator on the training device"
        )


@dataclass(frozen=True)
class AugmentParams:
    """The random choices for one batch: crop offsets ``dy``, ``dx`` (int64 [B]) and ``flip`` (bool [B])."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor


def sample_params(batch_size: int, generator: torch.Generator, pad: int = PAD, flip_p: float = FLIP_P) -> AugmentParams:
    """Draw crop offsets in ``[0, 2*pad]`` and flip flags on the generator's device (see module docstring)."""
    device = torch.device(generator.device)
    offsets = torch.randint(0, 2 * pad + 1, (batch_size, 2), generator=generator, device=device)
    flips = torch.rand(batch_size, generator=generator, device=device) < flip_p
    return AugmentParams(dy=offsets[:, 0], dx=offsets[:, 1], flip=flips)


def n_views(pad: int = PAD) -> int:
    """Number of distinct views of an image: ``(2*pad + 1)**2`` crop offsets times 2 flip states."""
    return 2 * (2 * pad + 1) ** 2


def view_index(params: AugmentParams, pad: int = PAD) -> torch.Tensor:
    """Each sample's view index (int64 [B]): ``flip * n*n + dy * n + dx`` with ``n = 2*pad + 1``."""
    n = 2 * pad + 1
    return params.flip.to(torch.int64) * (n * n) + params.dy * n + params.dx


def view_params(views: torch.Tensor, pad: int = PAD) -> AugmentParams:
    """The crop offsets and flip flags of view indices (inverse of :func:`view_index`)."""
    if not isinstance(views, torch.Tensor) or views.dtype != torch.int64 or views.dim() != 1:
        what = f"{views.dtype} {tuple(views.shape)}" if isinstance(views, torch.Tensor) else type(views).__name__
        raise DataError(f"view indices must be an int64 tensor [B], got {what}")
    n = 2 * pad + 1
    if views.numel() and (int(views.min()) < 0 or int(views.max()) >= 2 * n * n):
        raise DataError(f"view indices must lie in 0..{2 * n * n - 1} for pad {pad}")
    offset = views % (n * n)
    return AugmentParams(dy=offset // n, dx=offset % n, flip=views >= n * n)


def crop_flip(images: torch.Tensor, params: AugmentParams, pad: int = PAD) -> torch.Tensor:
    """Zero-pad ``images`` by ``pad`` and take each image's crop (and flip) given by ``params``; uint8 out.

    One ``torch.gather`` over the flattened padded image: output pixel (b, c, i, j) =
    ``padded[b, c, dy[b] + i, col(b, j)]`` with ``col = dx[b] + j``, or ``dx[b] + W - 1 - j`` when flipped.
    """
    _check_batch(images)
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="constant", value=0)
    dev = images.device
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = params.dy.to(dev)[:, None] + ar_h[None, :]  # [B,H]
    cols = params.dx.to(dev)[:, None] + torch.where(
        params.flip.to(dev)[:, None], (w - 1 - ar_w)[None, :], ar_w[None, :]
    )
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).reshape(b, c, h, w)


@functools.lru_cache(maxsize=64)
def channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as float32 ``[1,C,1,1]`` tensors on ``device``, built once per (values, device).

    Building them per batch would be a blocking host-to-device copy on CUDA at every step; the cached
    tensors are only read (normalisation divides a new tensor by them), never written.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean_t, std_t


def normalize(
    images: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> torch.Tensor:
    """uint8 ``[B,C,H,W]`` -> ``((x / 255) - mean) / std`` in ``dtype`` (computed in float32) and ``memory_format``.

    Evaluation path: no augmentation.
    """
    _check_batch(images)
    mean_t, std_t = channel_stats(tuple(mean), tuple(std), images.device)
    x = images.to(torch.float32).div_(255.0).sub_(mean_t).div_(std_t)
    return x.to(dtype=dtype, memory_format=memory_format)


#: Alias used by the training engine.
normalize_batch = normalize


@dataclass(frozen=True)
class BatchAugmenter:
    """Training-time augmentation: pad-crop, flip, normalise. Call with ``(uint8 batch, generator)``."""

    pad: int = PAD
    flip_p: float = FLIP_P
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format

    def __post_init__(self) -> None:
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise ConfigError(f"augmentation pad must be an integer >= 0, got {self.pad!r}")
        if not 0.0 <= float(self.flip_p) <= 1.0:
            raise ConfigError(f"augmentation flip_p must be in [0, 1], got {self.flip_p!r}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented, normalised float batch (same shape) for the uint8 ``images``."""
        return self._augment(images, generator)[0]

    def augment_with_views(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of ``__call__`` (same draws, same images) and each sample's view index (int64 [B])."""
        batch, params = self._augment(images, generator)
        return batch, view_index(params, self.pad)

    def render(self, images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Normalised float batch of the given view of each uint8 image (no randomness)."""
        _check_batch(images)
        if views.shape[0] != images.shape[0]:
            raise DataError(f"{views.shape[0]} view indices for a batch of {images.shape[0]} images")
        cropped = crop_flip(images, view_params(views, self.pad), self.pad)
        return normalize(cropped, self.dtype, self.memory_format, self.mean, self.std)

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, AugmentParams]:
        _check_batch(images)
        _check_generator(generator, images.device)
        params = sample_params(images.shape[0], generator, self.pad, self.flip_p)
        cropped = crop_flip(images, params, self.pad)
        return normalize(cropped, self.dtype, self.memory_format, self.mean, self.std), params


@overload
def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = ...,
    memory_format: torch.memory_format = ...,
    return_views: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = ...,
    memory_format: torch.memory_format = ...,
    return_views: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    return_views: bool = False,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pad-crop, flip and normalise a uint8 batch with the standard settings (pad 4, p=0.5) and ``mean``/``std``.

    With ``return_views`` also each sample's view index (see the module docstring); the batch is the same.
    """
    augmenter = BatchAugmenter(mean=mean, std=std, dtype=dtype, memory_format=memory_format)
    if return_views:
        return augmenter.augment_with_views(images, generator)
    return augmenter(images, generator)


def render_views(
    images: torch.Tensor,
    views: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> torch.Tensor:
    """The standard augmentation's view ``views[i]`` of ``images[i]``, normalised (no randomness).

    ``render_views(x, v)`` equals the batch ``augment_batch(x, g, return_views=True)`` returns when it
    returns the views ``v``.
    """
    augmenter = BatchAugmenter(mean=mean, std=std, dtype=dtype, memory_format=memory_format)
    return augmenter.render(images, views.to(images.device))
