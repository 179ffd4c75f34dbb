"""``collate``: stack samples into a batch; item tensors are concatenated, not stacked."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mimo.data.format import ITEMS_PER_SAMPLE, MODALITY_INPUTS, TEXT_KEYS, Batch, EncoderInputs, Sample

__all__ = ["collate"]


def collate(samples: list[Sample]) -> Batch:
    """Stack the text fields to ``[B, S]``; concatenate each encoder's item tensors in sample order.

    Dims after the item dim are zero-padded to the batch maximum (the audio frame dim), and every
    encoder's kwargs gain ``items_per_sample [B]`` so the batch can be split by sample again.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = sorted(samples[0])
    for position, sample in enumerate(samples):
        if sorted(sample) != keys:
            raise ValueError(f"sample {position} has keys {sorted(sample)}, sample 0 has {keys}")
    batch: Batch = {}
    for key in TEXT_KEYS:
        if key in samples[0]:
            batch[key] = _stack_text(key, [sample[key] for sample in samples])
    if MODALITY_INPUTS in samples[0]:
        batch[MODALITY_INPUTS] = _collate_modalities([sample[MODALITY_INPUTS] for sample in samples])
    return batch


def _stack_text(key: str, values: list[Tensor]) -> Tensor:
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1:
        raise ValueError(f"{key} has different shapes across samples: {sorted(shapes)}; pad to one seq_length")
    return torch.stack(values)


def _collate_modalities(per_sample: list[dict[str, dict[str, EncoderInputs]]]) -> dict[str, dict[str, EncoderInputs]]:
    layout = _layout(per_sample[0])
    for position, inputs in enumerate(per_sample):
        if _layout(inputs) != layout:
            raise ValueError(
                f"sample {position} has modality inputs {_layout(inputs)}, sample 0 has {layout}"
            )
    return {
        modality: {
            encoder: _collate_encoder(f"{modality}.{encoder}", [inputs[modality][encoder] for inputs in per_sample])
            for encoder in encoders
        }
        for modality, encoders in per_sample[0].items()
    }


def _layout(inputs: dict[str, dict[str, EncoderInputs]]) -> dict[str, dict[str, list[str]]]:
    return {modality: {enc: sorted(kwargs) for enc, kwargs in encs.items()} for modality, encs in inputs.items()}


def _collate_encoder(where: str, per_sample: list[EncoderInputs]) -> EncoderInputs:
    counts = [_item_count(where, kwargs) for kwargs in per_sample]
    collated = {name: _concat_padded(where, name, [kwargs[name] for kwargs in per_sample]) for name in per_sample[0]}
    collated[ITEMS_PER_SAMPLE] = torch.tensor(counts, dtype=torch.long)
    return collated


def _item_count(where: str, kwargs: EncoderInputs) -> int:
    if ITEMS_PER_SAMPLE in kwargs:
        raise ValueError(f"{where}: sample inputs already hold {ITEMS_PER_SAMPLE!r}; collate samples, not batches")
    if not kwargs:
        raise ValueError(f"{where}: encoder inputs are empty; every encoder needs at least one kwarg tensor")
    counts = {name: value.shape[0] for name, value in kwargs.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{where}: kwargs disagree on the number of items (dim 0): {counts}")
    return next(iter(counts.values()))


def _concat_padded(where: str, name: str, values: list[Tensor]) -> Tensor:
    """Concatenate along dim 0, zero-padding every later dim to the maximum over ``values``."""
    ranks = {v.ndim for v in values}
    if len(ranks) > 1:
        raise ValueError(f"{where}.{name} has different numbers of dims across samples: {sorted(ranks)}")
    target = [max(v.shape[d] for v in values) for d in range(1, values[0].ndim)]
    padded = []
    for value in values:
        # F.pad takes (last dim low, last dim high, second-to-last low, ...): pad only the high ends.
        pad = [amount for dim in reversed(range(1, value.ndim)) for amount in (0, target[dim - 1] - value.shape[dim])]
        padded.append(F.pad(value, pad) if any(pad) else value)
    return torch.cat(padded)
