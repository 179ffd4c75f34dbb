"""Build the four per-token fields of a sample from its real (unpadded) token sequence."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from mimo.data.format import IGNORE_INDEX, INPUT_IDS, LABELS, LOSS_MASK, POSITION_IDS
from mimo.model.configs import PAD_TOKEN_ID

__all__ = ["build_text_fields"]


def build_text_fields(tokens: Tensor, seq_length: int, placeholder_ids: Collection[int]) -> dict[str, Tensor]:
    """Pad ``tokens`` to ``seq_length`` and derive labels, loss_mask and position_ids.

    ``labels[i] = input_ids[i + 1]``. The loss mask is 0 at the last position, where the label is a placeholder
    (its row comes from an encoder, there is nothing to predict) and where the label is padding. Padding is found
    by position (``i >= len(tokens) - 1``), not by id, so a real token equal to PAD_TOKEN_ID keeps its loss.
    Labels are IGNORE_INDEX wherever the mask is 0.
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {list(tokens.shape)}")
    num_real = tokens.shape[0]
    if not 1 <= num_real <= seq_length:
        raise ValueError(f"number of tokens ({num_real}) must be in [1, seq_length={seq_length}]")
    input_ids = torch.full((seq_length,), PAD_TOKEN_ID, dtype=torch.long)
    input_ids[:num_real] = tokens
    shifted = torch.full((seq_length,), PAD_TOKEN_ID, dtype=torch.long)
    shifted[:-1] = input_ids[1:]
    keep = torch.arange(seq_length) < num_real - 1
    for placeholder in placeholder_ids:
        keep &= shifted != placeholder
    return {
        INPUT_IDS: input_ids,
        LABELS: torch.where(keep, shifted, torch.full_like(shifted, IGNORE_INDEX)),
        LOSS_MASK: keep.to(torch.float32),
        POSITION_IDS: torch.arange(seq_length, dtype=torch.long),
    }
