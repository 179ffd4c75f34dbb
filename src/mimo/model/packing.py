"""Several samples in one row (``data.packing``): which sequence each token belongs to, from its position id.

A new sequence starts wherever the position id does not follow the previous one by 1 (the rule transformers
uses for packed batches), so attention can be kept inside each sequence and packed training computes exactly
what unpacked training does.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["segment_ids"]


def segment_ids(position_ids: Tensor) -> Tensor | None:
    """``[B, S]`` sequence index of every token, or None when every row holds one sequence (nothing to mask)."""
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    segments = starts.cumsum(-1)
    if bool((segments[:, -1] == segments[:, 0]).all()):
        return None
    return segments
