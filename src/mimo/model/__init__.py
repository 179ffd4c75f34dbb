"""The built-in model: a decoder-only language model fed by modality encoders through an embedding splice."""

from __future__ import annotations

from mimo.model.audio import AudioEncoder
from mimo.model.configs import (
    LANGUAGE_MODULE,
    PAD_TOKEN_ID,
    AudioEncoderConfig,
    EncoderConfig,
    LanguageModelConfig,
    MimoModelConfig,
    ModalityConfig,
    VisionEncoderConfig,
)
from mimo.model.init import init_parameters
from mimo.model.language import IGNORE_INDEX, LanguageModel
from mimo.model.layers import TransformerBlock
from mimo.model.mimo_model import LANGUAGE_PREFIX, MimoModel, modality_prefix
from mimo.model.modality import ModalitySubmodule
from mimo.model.splice import check_tokens_per_sample, splice_embeddings
from mimo.model.types import EncoderOutput
from mimo.model.vision import VisionEncoder

__all__ = [
    "IGNORE_INDEX",
    "LANGUAGE_MODULE",
    "LANGUAGE_PREFIX",
    "PAD_TOKEN_ID",
    "AudioEncoder",
    "AudioEncoderConfig",
    "EncoderConfig",
    "EncoderOutput",
    "LanguageModel",
    "LanguageModelConfig",
    "MimoModel",
    "MimoModelConfig",
    "ModalityConfig",
    "ModalitySubmodule",
    "TransformerBlock",
    "VisionEncoder",
    "VisionEncoderConfig",
    "check_tokens_per_sample",
    "init_parameters",
    "modality_prefix",
    "splice_embeddings",
]
