"""What an encoder or a modality emits, and the checks on per-sample item counts shared by the encoders."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["EncoderOutput", "check_items_per_sample", "sum_per_sample"]


class EncoderOutput(NamedTuple):
    """Sample-major rows of one encoder or modality, and how many rows belong to each sample."""

    embeddings: Tensor
    """``[sum(tokens_per_sample), hidden]``: sample 0's rows first, then sample 1's, ..."""
    tokens_per_sample: Tensor
    """``[B]`` long; 0 for a sample without this input."""


def check_items_per_sample(items_per_sample: Tensor, num_items: int, what: str) -> None:
    """Raise ``ValueError`` unless ``items_per_sample`` is 1-D, integer, non-negative and sums to ``num_items``."""
    is_integer = not items_per_sample.is_floating_point() and items_per_sample.dtype != torch.bool
    if items_per_sample.ndim != 1 or not is_integer:
        raise ValueError(
            f"items_per_sample must be a 1-D integer tensor, got {items_per_sample.dtype} "
            f"of shape {tuple(items_per_sample.shape)}"
        )
    if bool((items_per_sample < 0).any()):
        raise ValueError(f"items_per_sample must be >= 0, got {items_per_sample.tolist()}")
    total = int(items_per_sample.sum())
    if total != num_items:
        raise ValueError(
            f"items_per_sample {items_per_sample.tolist()} sums to {total} but {num_items} {what} were given"
        )


def sum_per_sample(values_per_item: Tensor, items_per_sample: Tensor) -> Tensor:
    """Sum a per-item count ``[N]`` into a per-sample count ``[B]`` (items are in sample order)."""
    sample_of_item = torch.repeat_interleave(
        torch.arange(items_per_sample.shape[0], device=items_per_sample.device), items_per_sample
    )
    totals = torch.zeros(items_per_sample.shape[0], dtype=torch.long, device=items_per_sample.device)
    return totals.index_add_(0, sample_of_item, values_per_item.to(torch.long))
