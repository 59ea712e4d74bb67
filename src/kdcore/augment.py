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
"""

from __future__ import annotations

from dataclasses import dataclass

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
    dev = images.device
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
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
        _check_batch(images)
        _check_generator(generator, images.device)
        params = sample_params(images.shape[0], generator, self.pad, self.flip_p)
        cropped = crop_flip(images, params, self.pad)
        return normalize(cropped, self.dtype, self.memory_format, self.mean, self.std)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> torch.Tensor:
    """Pad-crop, flip and normalise a uint8 batch with the standard settings (pad 4, p=0.5) and ``mean``/``std``."""
    return BatchAugmenter(mean=mean, std=std, dtype=dtype, memory_format=memory_format)(images, generator)
