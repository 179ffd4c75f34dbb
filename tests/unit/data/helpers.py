"""Shared builders for the data tests: small model configs, hand-built samples, batch comparison."""

from __future__ import annotations

import math
from typing import Any

import torch

from mimo.model.configs import AudioEncoderConfig, MimoModelConfig, ModalityConfig, VisionEncoderConfig

IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER = 1, 2
TEXT_ID = 7


def image_audio_config() -> MimoModelConfig:
    """images: one 8x8 vision encoder (4 tokens per image); audio: one encoder, <= 16 frames, 4 frames per token."""
    return MimoModelConfig(
        modalities={
            "images": ModalityConfig(
                placeholder_id=IMAGE_PLACEHOLDER, encoders={"vit": VisionEncoderConfig(image_size=8, patch_size=4)}
            ),
            "audio": ModalityConfig(
                placeholder_id=AUDIO_PLACEHOLDER,
                encoders={"whisper": AudioEncoderConfig(num_mel_bins=6, max_frames=16, downsample=4)},
            ),
        }
    )


def multi_encoder_config() -> MimoModelConfig:
    """Two encoders per modality, with different shapes, placeholders away from the low ids."""
    return MimoModelConfig(
        modalities={
            "audio": ModalityConfig(
                placeholder_id=40,
                encoders={
                    "a": AudioEncoderConfig(num_mel_bins=4, max_frames=12, downsample=3),
                    "b": AudioEncoderConfig(num_mel_bins=5, max_frames=20, downsample=5),
                },
            ),
            "images": ModalityConfig(
                placeholder_id=20,
                encoders={
                    "small": VisionEncoderConfig(image_size=4, patch_size=2, num_channels=1),
                    "large": VisionEncoderConfig(image_size=8, patch_size=8),
                },
            ),
        }
    )


def hand_sample(num_images: int, clip_lengths: list[int], seq_length: int = 24, seed: int = 0) -> dict[str, Any]:
    """A valid sample for ``image_audio_config`` built without the library (placeholders, then 3 text tokens)."""
    gen = torch.Generator().manual_seed(seed)
    num_placeholders = (4 * num_images, sum(math.ceil(n / 4) for n in clip_lengths))
    tokens = [IMAGE_PLACEHOLDER] * num_placeholders[0] + [AUDIO_PLACEHOLDER] * num_placeholders[1] + [TEXT_ID] * 3
    input_ids = torch.tensor(tokens + [0] * (seq_length - len(tokens)))
    labels = torch.full((seq_length,), -100)
    loss_mask = torch.zeros(seq_length)
    longest = max(clip_lengths, default=0)
    features = torch.randn(len(clip_lengths), longest, 6, generator=gen)
    for clip, length in enumerate(clip_lengths):
        features[clip, length:] = 0
    return {
        "input_ids": input_ids,
        "labels": labels,
        "loss_mask": loss_mask,
        "position_ids": torch.arange(seq_length),
        "modality_inputs": {
            "images": {"vit": {"pixel_values": torch.randn(num_images, 3, 8, 8, generator=gen)}},
            "audio": {"whisper": {"features": features, "lengths": torch.tensor(clip_lengths, dtype=torch.long)}},
        },
    }


def assert_same_tree(actual: Any, expected: Any, path: str = "batch", padded_tail_ok: bool = False) -> None:
    """Equal nested dicts of tensors; with ``padded_tail_ok`` a tensor of ``actual`` may be larger in dims > 0
    provided the extra part is all zeros (the audio frame padding kept by slicing)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), (path, actual, expected)
        for key in expected:
            assert_same_tree(actual[key], expected[key], f"{path}.{key}", padded_tail_ok)
        return
    assert actual.dtype == expected.dtype, (path, actual.dtype, expected.dtype)
    assert actual.ndim == expected.ndim and actual.shape[0] == expected.shape[0], (path, actual.shape, expected.shape)
    if actual.shape != expected.shape:
        assert padded_tail_ok and all(a >= e for a, e in zip(actual.shape, expected.shape)), path
        core = tuple(slice(0, n) for n in expected.shape)
        outside = actual.clone()
        outside[core] = 0
        assert not bool(outside.any()), f"{path}: padding is not zero"
        actual = actual[core]
    assert torch.equal(actual, expected), path
