"""Derive independent, reproducible generator seeds from a tuple of labels and integers."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "seeded_generator"]


def derive_seed(*parts: str | int) -> int:
    """A 63-bit seed that depends only on ``parts``, the same in every process and Python run.

    Hashing (rather than ``seed + index``) keeps nearby streams such as (seed, i) and (seed + 1, i - 1)
    unrelated, and ``hash()`` is salted per process, so it cannot be used here.
    """
    text = "/".join(f"{type(part).__name__}:{part}" for part in parts)
    digest = hashlib.blake2b(text.encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded_generator(*parts: str | int) -> torch.Generator:
    """A fresh CPU generator seeded by ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
