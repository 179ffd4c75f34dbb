"""Pure batch slicing by sample: contiguous DP shards of a collated batch.

Item tensors are cut with ``items_per_sample``, never by guessing from shapes, so samples with zero or
several images split correctly (upstream slices lists whose length happens to divide the DP size).
"""

from __future__ import annotations

import torch

from mimo.data.format import ITEMS_PER_SAMPLE, MODALITY_INPUTS, TEXT_KEYS, Batch, EncoderInputs

__all__ = ["batch_size", "shard_batch", "shard_range", "slice_batch"]


def shard_range(batch_size: int, dp_rank: int, dp_size: int) -> tuple[int, int]:
    """The contiguous samples ``[start, stop)`` that data-parallel rank ``dp_rank`` of ``dp_size`` owns."""
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1, got {dp_size}")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} is out of range for dp_size {dp_size}")
    if batch_size % dp_size:
        raise ValueError(f"batch size {batch_size} is not divisible by DP size {dp_size}")
    shard = batch_size // dp_size
    return dp_rank * shard, (dp_rank + 1) * shard


def batch_size(batch: Batch) -> int:
    """Number of samples, read from a text field or else from any encoder's ``items_per_sample``."""
    for key in TEXT_KEYS:
        if key in batch:
            return batch[key].shape[0]
    for encoders in batch.get(MODALITY_INPUTS, {}).values():
        for kwargs in encoders.values():
            if ITEMS_PER_SAMPLE in kwargs:
                return kwargs[ITEMS_PER_SAMPLE].shape[0]
    raise ValueError(f"batch has no text field and no items_per_sample to take its size from; keys {sorted(batch)}")


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Samples ``[start, stop)`` of a collated batch; item tensors keep their padded trailing dims."""
    size = batch_size(batch)
    if not 0 <= start < stop <= size:
        raise ValueError(f"slice [{start}, {stop}) is not a non-empty range inside a batch of {size} samples")
    sliced: Batch = {key: batch[key][start:stop] for key in TEXT_KEYS if key in batch}
    if MODALITY_INPUTS in batch:
        sliced[MODALITY_INPUTS] = {
            modality: {
                encoder: _slice_encoder(f"{modality}.{encoder}", kwargs, start, stop, size)
                for encoder, kwargs in encoders.items()
            }
            for modality, encoders in batch[MODALITY_INPUTS].items()
        }
    return sliced


def shard_batch(batch: Batch, dp_rank: int, dp_size: int) -> Batch:
    """This DP rank's contiguous shard of a collated batch."""
    return slice_batch(batch, *shard_range(batch_size(batch), dp_rank, dp_size))


def _slice_encoder(where: str, kwargs: EncoderInputs, start: int, stop: int, size: int) -> EncoderInputs:
    if ITEMS_PER_SAMPLE not in kwargs:
        raise ValueError(f"{where}: inputs lack {ITEMS_PER_SAMPLE!r}, so items cannot be assigned to samples")
    items = kwargs[ITEMS_PER_SAMPLE]
    if items.shape != (size,):
        raise ValueError(f"{where}: items_per_sample has shape {list(items.shape)}, the batch has {size} samples")
    offsets = torch.cat([items.new_zeros(1), torch.cumsum(items, 0)]).tolist()
    sliced = {}
    for name, value in kwargs.items():
        if name == ITEMS_PER_SAMPLE:
            sliced[name] = items[start:stop]
        elif value.shape[0] != offsets[-1]:
            raise ValueError(f"{where}.{name} has {value.shape[0]} items, items_per_sample sums to {offsets[-1]}")
        else:
            sliced[name] = value[offsets[start] : offsets[stop]]
    return sliced
