"""Deterministic initialisation that does not depend on which modules or stages a process holds.

Every parameter draws from its own generator, seeded by ``(seed, full parameter name)``, so a pipeline stage
that builds only ``language.layers.2`` gets the same tensor as the full model does under that name.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

__all__ = ["INIT_STD", "init_parameters", "parameter_seed"]

INIT_STD = 0.02
"""Standard deviation of every weight that is not a norm weight."""

_NORMS = (nn.RMSNorm, nn.LayerNorm)


def parameter_seed(seed: int, name: str) -> int:
    """A stable 64-bit generator seed for ``(seed, name)``; unlike ``hash()`` it is the same in every process."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _initial_value(owner: nn.Module, local_name: str, param: Tensor, seed: int, full_name: str) -> Tensor:
    if isinstance(owner, _NORMS):
        return torch.ones(param.shape) if local_name == "weight" else torch.zeros(param.shape)
    if local_name == "bias":
        return torch.zeros(param.shape)
    generator = torch.Generator().manual_seed(parameter_seed(seed, full_name))
    return torch.normal(0.0, INIT_STD, size=tuple(param.shape), generator=generator)


@torch.no_grad()
def init_parameters(module: nn.Module, *, seed: int, prefix: str = "") -> None:
    """Initialise every parameter of ``module`` in place from ``(seed, prefix + parameter name)``.

    Weights (Linear, Conv, Embedding, any other parameter) are normal(0, 0.02), biases zeros, norm weights ones.
    ``prefix`` is prepended verbatim: a ``LanguageModel`` that lives at ``language`` in the full model uses
    ``prefix="language."``.
    """
    for owner_name, owner in module.named_modules():
        for local_name, param in owner.named_parameters(recurse=False):
            full_name = f"{prefix}{owner_name}.{local_name}" if owner_name else f"{prefix}{local_name}"
            value = _initial_value(owner, local_name, param, seed, full_name)
            param.copy_(value.to(dtype=param.dtype, device=param.device))
