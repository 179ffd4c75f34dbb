"""The sample and batch format: key names, type aliases, field selection and ``validate_sample``.

A sample is a plain dict::

    input_ids      [S] long     text with placeholder ids where modality rows go, PAD_TOKEN_ID at the end
    labels         [S] long     input_ids shifted left by one, IGNORE_INDEX where loss_mask is 0
    loss_mask      [S] float32  0 where the label is a placeholder or padding, and at the last position
    position_ids   [S] long     arange(S)
    modality_inputs {modality: {encoder: {kwarg: tensor}}}, dim 0 of every tensor = the sample's items

A batch has the same keys with text fields ``[B, S]`` and item tensors concatenated over samples, plus
``items_per_sample [B]`` in every encoder's kwargs (see ``collate``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypedDict

from torch import Tensor

from mimo.data.tokens import modality_token_count
from mimo.model.configs import PAD_TOKEN_ID, MimoModelConfig

__all__ = [
    "FEATURES",
    "IGNORE_INDEX",
    "INPUT_IDS",
    "ITEMS_PER_SAMPLE",
    "LABELS",
    "LENGTHS",
    "LOSS_MASK",
    "MODALITY_INPUTS",
    "PAD_TOKEN_ID",
    "PIXEL_VALUES",
    "POSITION_IDS",
    "TEXT_KEYS",
    "Batch",
    "EncoderInputs",
    "ModalityInputs",
    "Sample",
    "select_fields",
    "text_keys",
    "text_keys_for_stage",
    "validate_sample",
]

INPUT_IDS = "input_ids"
LABELS = "labels"
LOSS_MASK = "loss_mask"
POSITION_IDS = "position_ids"
MODALITY_INPUTS = "modality_inputs"
TEXT_KEYS = (INPUT_IDS, LABELS, LOSS_MASK, POSITION_IDS)
"""The per-token fields; ``include_text=False`` drops exactly these."""

PIXEL_VALUES = "pixel_values"
"""Vision encoder kwarg: ``[n_images, C, H, W]`` float."""
FEATURES = "features"
"""Audio encoder kwarg: ``[n_clips, T, num_mel_bins]`` float, zero beyond each clip's length."""
LENGTHS = "lengths"
"""Audio encoder kwarg: ``[n_clips]`` long, valid frames per clip."""
ITEMS_PER_SAMPLE = "items_per_sample"
"""Added by ``collate`` to every encoder's kwargs: ``[B]`` long, items of each sample in the batch."""

IGNORE_INDEX = -100
"""Label value where no loss is taken (the ``ignore_index`` of cross entropy)."""

EncoderInputs = dict[str, Tensor]
"""Keyword arguments of one encoder, e.g. ``{"pixel_values": ...}``."""
ModalityInputs = dict[str, dict[str, EncoderInputs]]
"""``{modality: {encoder: kwargs}}``."""


class Sample(TypedDict, total=False):
    """One sample; the text keys are absent after ``select_fields(..., include_text=False)``."""

    input_ids: Tensor
    labels: Tensor
    loss_mask: Tensor
    position_ids: Tensor
    modality_inputs: ModalityInputs


class Batch(TypedDict, total=False):
    """A collated batch: text fields ``[B, S]``, item tensors concatenated, ``items_per_sample`` added."""

    input_ids: Tensor
    labels: Tensor
    loss_mask: Tensor
    position_ids: Tensor
    modality_inputs: ModalityInputs


def select_fields(
    data: Any, *, modalities: Collection[str] | None = None, include_text: bool | Collection[str] = True
) -> Any:
    """A shallow copy of a sample or batch keeping only ``modalities`` (None = all) and the text fields asked for.

    ``include_text``: True keeps every text field, False none, a collection of text keys exactly those (a pipeline
    stage reads only the fields its forward uses, see ``text_keys_for_stage``).
    """
    text = text_keys(include_text)
    selected = {key: value for key, value in data.items() if key not in TEXT_KEYS or key in text}
    if modalities is not None and MODALITY_INPUTS in selected:
        available = selected[MODALITY_INPUTS]
        missing = sorted(set(modalities) - set(available))
        if missing:
            raise ValueError(f"requested modalities {missing} are not in the data; it has {sorted(available)}")
        selected[MODALITY_INPUTS] = {name: inputs for name, inputs in available.items() if name in modalities}
    return selected


def text_keys(include_text: bool | Collection[str]) -> tuple[str, ...]:
    """The text fields ``include_text`` asks for, in ``TEXT_KEYS`` order; ValueError naming unknown ones."""
    if isinstance(include_text, bool):
        return TEXT_KEYS if include_text else ()
    if isinstance(include_text, str):  # one key, not its characters
        include_text = (include_text,)
    unknown = sorted(set(include_text) - set(TEXT_KEYS))
    if unknown:
        raise ValueError(f"unknown text fields {unknown}; the text fields are {list(TEXT_KEYS)}")
    return tuple(key for key in TEXT_KEYS if key in include_text)


def text_keys_for_stage(*, first: bool, last: bool) -> tuple[str, ...]:
    """The text fields a language pipeline stage reads from the batch.

    The first stage embeds ``input_ids`` at ``position_ids`` and splices by ``input_ids``; the last takes its
    loss from ``labels`` and ``loss_mask``. A later stage never reads position ids from the batch: when every
    stage needs them (``passes_position_ids``) they travel with the hidden states from the first stage.
    """
    keys = ((INPUT_IDS, POSITION_IDS) if first else ()) + ((LABELS, LOSS_MASK) if last else ())
    return tuple(key for key in TEXT_KEYS if key in keys)


def validate_sample(sample: Sample, model_config: MimoModelConfig) -> None:
    """Raise ValueError unless ``sample`` is a complete, consistent sample for ``model_config``.

    Checks the text field shapes, that every configured modality and encoder is present with well-shaped
    inputs, and that each modality's placeholder count equals the rows its encoders produce.
    """
    missing = [key for key in (*TEXT_KEYS, MODALITY_INPUTS) if key not in sample]
    if missing:
        raise ValueError(f"sample lacks {missing}; it has {sorted(sample)}")
    input_ids = sample[INPUT_IDS]
    if input_ids.ndim != 1:
        raise ValueError(f"input_ids must be 1-D [S], got shape {list(input_ids.shape)}")
    for key in TEXT_KEYS:
        if sample[key].shape != input_ids.shape:
            raise ValueError(f"{key} has shape {list(sample[key].shape)}, input_ids {list(input_ids.shape)}")
    modality_inputs = sample[MODALITY_INPUTS]
    expected, received = sorted(model_config.modalities), sorted(modality_inputs)
    if expected != received:
        raise ValueError(f"sample has modalities {received}, the model expects {expected}")
    for name, modality in model_config.modalities.items():
        rows = modality_token_count(name, modality, modality_inputs[name])
        placeholders = int((input_ids == modality.token_id).sum())
        if rows != placeholders:
            raise ValueError(
                f"modality {name!r}: input_ids hold {placeholders} placeholder tokens "
                f"(id {modality.token_id}) but its encoders produce {rows} rows"
            )
