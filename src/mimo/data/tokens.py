"""How many rows (tokens) each encoder produces for the items of a sample or a batch."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from mimo.model.configs import EncoderConfig, ModalityConfig

__all__ = ["item_token_counts", "modality_token_count", "tokens_per_sample"]

# Kept as literals (not imported from format.py) so this module has no import cycle with it.
_PIXEL_VALUES, _FEATURES, _LENGTHS, _ITEMS_PER_SAMPLE = "pixel_values", "features", "lengths", "items_per_sample"


def item_token_counts(where: str, config: EncoderConfig, inputs: dict[str, Tensor]) -> Tensor:
    """Tokens per item ``[n_items]`` long, after checking the input shapes; ``where`` names the encoder in errors."""
    if config.input_kind == "vision":
        return _vision_counts(where, config, inputs)
    if config.input_kind == "audio":
        return _audio_counts(where, config, inputs)
    raise AssertionError(f"unknown encoder config type {type(config).__name__}")


def modality_token_count(name: str, modality: ModalityConfig, inputs: dict[str, dict[str, Tensor]]) -> int:
    """Total rows all encoders of one modality produce for one sample's inputs."""
    _require_encoders(name, modality, inputs)
    total = 0
    for encoder_name, encoder in modality.encoders.items():
        where = f"modality {name!r} encoder {encoder_name!r}"
        total += int(item_token_counts(where, encoder, inputs[encoder_name]).sum())
    return total


def tokens_per_sample(name: str, modality: ModalityConfig, inputs: dict[str, dict[str, Tensor]]) -> Tensor:
    """Rows per sample ``[B]`` long of one modality in a collated batch (uses ``items_per_sample``).

    Summed per sample in Python: a batch from the loader is on the host, and for its few dozen items a handful of
    additions costs a third of a scatter kernel (the trainer counts every microbatch's rows for its FLOPs).
    """
    _require_encoders(name, modality, inputs)
    total: list[int] | None = None
    for encoder_name, encoder in modality.encoders.items():
        where = f"modality {name!r} encoder {encoder_name!r}"
        kwargs = inputs[encoder_name]
        if _ITEMS_PER_SAMPLE not in kwargs:
            raise ValueError(f"{where}: inputs lack {_ITEMS_PER_SAMPLE!r} (not a collated batch): {sorted(kwargs)}")
        items = kwargs[_ITEMS_PER_SAMPLE].tolist()
        counts = item_token_counts(where, encoder, kwargs).tolist()
        if sum(items) != len(counts):
            raise ValueError(f"{where}: items_per_sample sums to {sum(items)}, inputs hold {len(counts)} items")
        ends = list(itertools.accumulate(items))
        per_sample = [sum(counts[end - n : end]) for n, end in zip(items, ends)]
        total = per_sample if total is None else [a + b for a, b in zip(total, per_sample)]
    assert total is not None, "ModalityConfig guarantees at least one encoder"
    return torch.tensor(total, dtype=torch.long)


def _require_encoders(name: str, modality: ModalityConfig, inputs: dict[str, dict[str, Tensor]]) -> None:
    expected, received = sorted(modality.encoders), sorted(inputs)
    if expected != received:
        raise ValueError(f"modality {name!r} has inputs for encoders {received}, the model expects {expected}")


def _require_kwargs(where: str, inputs: dict[str, Tensor], names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"{where}: inputs lack {missing}; they have {sorted(inputs)}")


def _vision_counts(where: str, config: EncoderConfig, inputs: dict[str, Tensor]) -> Tensor:
    _require_kwargs(where, inputs, (_PIXEL_VALUES,))
    pixels = inputs[_PIXEL_VALUES]
    expected = (config.num_channels, config.image_size, config.image_size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
        raise ValueError(
            f"{where}: expected pixel_values of shape [n_images, {', '.join(map(str, expected))}], "
            f"received {list(pixels.shape)}"
        )
    return torch.full((pixels.shape[0],), config.tokens_per_image, dtype=torch.long)


def _audio_counts(where: str, config: EncoderConfig, inputs: dict[str, Tensor]) -> Tensor:
    _require_kwargs(where, inputs, (_FEATURES, _LENGTHS))
    features, lengths = inputs[_FEATURES], inputs[_LENGTHS]
    if features.ndim != 3 or features.shape[2] != config.num_mel_bins:
        raise ValueError(
            f"{where}: expected features of shape [n_clips, T, {config.num_mel_bins}], received {list(features.shape)}"
        )
    if lengths.ndim != 1 or lengths.shape[0] != features.shape[0] or lengths.is_floating_point():
        raise ValueError(
            f"{where}: expected integer lengths of shape [{features.shape[0]}], "
            f"received {lengths.dtype} {list(lengths.shape)}"
        )
    longest = min(features.shape[1], config.max_frames)
    bad = (lengths < 1) | (lengths > longest)
    if bool(bad.any()):
        raise ValueError(
            f"{where}: clip lengths {lengths[bad].tolist()} must be in [1, {longest}] "
            f"(T={features.shape[1]}, max_frames={config.max_frames})"
        )
    return (lengths.to(torch.long) + config.downsample - 1) // config.downsample
