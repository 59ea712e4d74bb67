"""Independent random streams derived from a run seed.

Each purpose (student init, projection init, data order, augmentation, ...) gets its own stream, so
that adding a KD projection never shifts the student's initial weights or the batch order: a baseline
and a KD run with the same seed are paired.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, stream: str, *extra: int | str) -> int:
    """A 63-bit seed that depends only on (seed, stream, *extra)."""
    key = ":".join([str(int(seed)), stream, *(str(e) for e in extra)])
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(seed: int, stream: str, *extra: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch.Generator on ``device`` seeded from (seed, stream, *extra)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, stream, *extra))
    return gen
