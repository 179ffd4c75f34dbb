"""Tiny model configs shared by the model tests."""

from __future__ import annotations

import pytest
import torch

from mimo.model import (
    AudioEncoderConfig,
    LanguageModelConfig,
    MimoModelConfig,
    ModalityConfig,
    VisionEncoderConfig,
)

IMAGE_TOKEN = 5
AUDIO_TOKEN = 6


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(1234)


@pytest.fixture
def language_config() -> LanguageModelConfig:
    return LanguageModelConfig(vocab_size=64, hidden_size=32, num_layers=4, num_heads=4, mlp_ratio=2, max_seq_len=48)


@pytest.fixture
def vision_config() -> VisionEncoderConfig:
    return VisionEncoderConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_layers=1, num_heads=2)


@pytest.fixture
def audio_config() -> AudioEncoderConfig:
    return AudioEncoderConfig(num_mel_bins=6, hidden_size=16, num_layers=2, num_heads=2, downsample=4, max_frames=40)


@pytest.fixture
def mimo_config(
    language_config: LanguageModelConfig, vision_config: VisionEncoderConfig, audio_config: AudioEncoderConfig
) -> MimoModelConfig:
    return MimoModelConfig(
        language=language_config,
        modalities={
            "images": ModalityConfig(placeholder_id=IMAGE_TOKEN, encoders={"vit": vision_config}),
            "audio": ModalityConfig(placeholder_id=AUDIO_TOKEN, encoders={"whisper": audio_config}),
        },
    )
