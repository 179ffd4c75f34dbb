"""The data pipeline: sample format, synthetic and file datasets, collate, DP slicing and the per-rank loader."""

from __future__ import annotations

from mimo.data.build import build_dataset
from mimo.data.collate import collate
from mimo.data.files import FILE_FORMAT, FILE_VERSION, FileDataset, save_samples
from mimo.data.format import (
    FEATURES,
    IGNORE_INDEX,
    INPUT_IDS,
    ITEMS_PER_SAMPLE,
    LABELS,
    LENGTHS,
    LOSS_MASK,
    MODALITY_INPUTS,
    PIXEL_VALUES,
    POSITION_IDS,
    TEXT_KEYS,
    Batch,
    EncoderInputs,
    ModalityInputs,
    Sample,
    select_fields,
    validate_sample,
)
from mimo.data.loader import MicrobatchLoader, SelectiveDataset
from mimo.data.slicing import batch_size, shard_batch, shard_range, slice_batch
from mimo.data.synthetic import SampleSpec, SyntheticMimoDataset
from mimo.data.synthetic_config import DATA_SOURCES, SyntheticDataConfig
from mimo.data.text_fields import build_text_fields
from mimo.data.tokens import item_token_counts, modality_token_count, tokens_per_sample

__all__ = [
    "DATA_SOURCES",
    "FEATURES",
    "FILE_FORMAT",
    "FILE_VERSION",
    "IGNORE_INDEX",
    "INPUT_IDS",
    "ITEMS_PER_SAMPLE",
    "LABELS",
    "LENGTHS",
    "LOSS_MASK",
    "MODALITY_INPUTS",
    "PIXEL_VALUES",
    "POSITION_IDS",
    "TEXT_KEYS",
    "Batch",
    "EncoderInputs",
    "FileDataset",
    "MicrobatchLoader",
    "ModalityInputs",
    "Sample",
    "SampleSpec",
    "SelectiveDataset",
    "SyntheticDataConfig",
    "SyntheticMimoDataset",
    "batch_size",
    "build_dataset",
    "build_text_fields",
    "collate",
    "item_token_counts",
    "modality_token_count",
    "save_samples",
    "select_fields",
    "shard_batch",
    "shard_range",
    "slice_batch",
    "tokens_per_sample",
    "validate_sample",
]
