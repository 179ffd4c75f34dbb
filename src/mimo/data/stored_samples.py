"""Check and rebuild lists of samples before they are written to, or after they are read from, a file.

``validate_sample`` assumes well-typed input; a file can hold anything ``torch.load(weights_only=True)``
accepts (lists, numbers, strings), so the structure and the text dtypes are checked here first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mimo.data.format import (
    INPUT_IDS,
    LABELS,
    LOSS_MASK,
    MODALITY_INPUTS,
    POSITION_IDS,
    TEXT_KEYS,
    Sample,
    validate_sample,
)
from mimo.model.configs import MimoModelConfig

__all__ = ["prepare_samples"]

_SAMPLE_KEYS = (*TEXT_KEYS, MODALITY_INPUTS)
_LONG_KEYS = (INPUT_IDS, LABELS, POSITION_IDS)
_MODALITY_DEPTH = 3
"""Dict levels under ``modality_inputs`` before a tensor: modality, encoder, kwarg."""

TensorMap = Callable[[Tensor], Tensor]
"""Applied to every tensor of a sample while it is rebuilt."""


def prepare_samples(
    samples: Sequence[object], model_config: MimoModelConfig | None, transform: TensorMap
) -> tuple[list[Sample], int]:
    """Check every sample and rebuild it with ``transform`` applied to each tensor; return them and seq_length.

    Raises ValueError ``"sample {i}: {reason}"``. With a model config, each sample must pass ``validate_sample``
    and its modalities and encoders are put in config order; all samples must share one seq_length.
    """
    prepared: list[Sample] = []
    seq_length = 0
    for index, sample in enumerate(samples):
        try:
            rebuilt = _rebuild_sample(sample, transform)
            if model_config is not None:
                validate_sample(rebuilt, model_config)
                rebuilt = _in_config_order(rebuilt, model_config)
            length = int(rebuilt[INPUT_IDS].shape[0])
            if prepared and length != seq_length:
                raise ValueError(
                    f"seq_length {length} differs from sample 0's {seq_length}; pad every sample to one length"
                )
        except ValueError as error:
            raise ValueError(f"sample {index}: {error}") from None
        seq_length = length
        prepared.append(rebuilt)
    return prepared, seq_length


def _rebuild_sample(sample: object, transform: TensorMap) -> Sample:
    if not isinstance(sample, dict):
        raise ValueError(f"is a {type(sample).__name__}, expected a dict with keys {list(_SAMPLE_KEYS)}")
    keys = [str(key) for key in sample]
    unknown = sorted(set(keys) - set(_SAMPLE_KEYS))
    missing = [key for key in _SAMPLE_KEYS if key not in sample]
    if unknown or missing:
        raise ValueError(f"has keys {keys}; a sample has exactly {list(_SAMPLE_KEYS)} (unknown {unknown}, "
                         f"missing {missing})")
    rebuilt = {key: _rebuild_tree(sample[key], key, 0, transform) for key in TEXT_KEYS}
    rebuilt[MODALITY_INPUTS] = _rebuild_tree(sample[MODALITY_INPUTS], MODALITY_INPUTS, _MODALITY_DEPTH, transform)
    _check_text_dtypes(rebuilt)
    return rebuilt  # type: ignore[return-value]


def _rebuild_tree(value: object, where: str, depth: int, transform: TensorMap) -> object:
    """``value`` must be ``depth`` levels of str-keyed dicts over tensors (depth 0: one tensor)."""
    if depth == 0:
        if not isinstance(value, Tensor):
            raise ValueError(f"{where} is a {type(value).__name__}, expected a tensor")
        return transform(value)
    if not isinstance(value, dict):
        raise ValueError(f"{where} is a {type(value).__name__}, expected a dict with string keys")
    not_strings = [key for key in value if not isinstance(key, str)]
    if not_strings:
        raise ValueError(f"{where} has keys {not_strings!r} that are not strings")
    return {key: _rebuild_tree(item, f"{where}.{key}", depth - 1, transform) for key, item in value.items()}


def _check_text_dtypes(sample: dict[str, object]) -> None:
    input_ids = sample[INPUT_IDS]
    assert isinstance(input_ids, Tensor)
    if input_ids.ndim != 1:
        raise ValueError(f"input_ids must be 1-D [S], got shape {list(input_ids.shape)}")
    for key in _LONG_KEYS:
        dtype = sample[key].dtype  # type: ignore[attr-defined]
        if dtype != torch.long:
            raise ValueError(f"{key} has dtype {dtype}, expected torch.int64 (long)")
    mask_dtype = sample[LOSS_MASK].dtype  # type: ignore[attr-defined]
    if not mask_dtype.is_floating_point:
        raise ValueError(f"loss_mask has dtype {mask_dtype}, expected a floating point dtype (float32)")


def _in_config_order(sample: Sample, model_config: MimoModelConfig) -> Sample:
    """The same sample with modalities and encoders in config order, so batches do not depend on file order."""
    inputs = sample[MODALITY_INPUTS]
    ordered = {
        name: {encoder: inputs[name][encoder] for encoder in modality.encoders}
        for name, modality in model_config.modalities.items()
    }
    return {**{key: sample[key] for key in TEXT_KEYS}, MODALITY_INPUTS: ordered}  # type: ignore[return-value]
