"""VisionEncoder: row-major patches, sample-major rows, shape checks, zero images."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mimo.model import VisionEncoder, VisionEncoderConfig


def _reference_rows(encoder: VisionEncoder, image: Tensor) -> Tensor:
    """Embed patches one by one in row-major order, then reuse the encoder's blocks and norm."""
    patch = encoder.config.patch_size
    side = encoder.config.image_size // patch
    conv = encoder.patch_embedding
    patches = []
    for r in range(side):
        for c in range(side):
            block = image[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
            patches.append((conv.weight * block).sum(dim=(1, 2, 3)) + conv.bias)
    hidden = (torch.stack(patches) + encoder.position_embedding.weight).unsqueeze(0)
    for layer in encoder.layers.values():
        hidden = layer(hidden)
    return encoder.norm(hidden)[0]


def test_rows_are_sample_major_with_row_major_patches(vision_config: VisionEncoderConfig) -> None:
    encoder = VisionEncoder(vision_config)
    images = torch.randn(3, 3, 8, 8)
    out = encoder(images, torch.tensor([2, 0, 1]))
    tokens = vision_config.tokens_per_image
    assert out.embeddings.shape == (3 * tokens, vision_config.hidden_size)
    assert out.tokens_per_sample.tolist() == [2 * tokens, 0, tokens]
    assert out.tokens_per_sample.dtype == torch.long
    expected = torch.cat([_reference_rows(encoder, image) for image in images])
    torch.testing.assert_close(out.embeddings, expected, rtol=1e-5, atol=1e-5)


def test_zero_images_give_zero_rows(vision_config: VisionEncoderConfig) -> None:
    out = VisionEncoder(vision_config)(torch.zeros(0, 3, 8, 8), torch.tensor([0, 0]))
    assert out.embeddings.shape == (0, vision_config.hidden_size)
    assert out.tokens_per_sample.tolist() == [0, 0]


def test_wrong_image_size_names_expected_and_received(vision_config: VisionEncoderConfig) -> None:
    with pytest.raises(ValueError, match=r"\[N, 3, 8, 8\], got \[2, 3, 16, 16\]"):
        VisionEncoder(vision_config)(torch.zeros(2, 3, 16, 16), torch.tensor([2]))


def test_item_counts_must_sum_to_the_number_of_images(vision_config: VisionEncoderConfig) -> None:
    with pytest.raises(ValueError, match=r"\[1, 1\] sums to 2 but 3 images"):
        VisionEncoder(vision_config)(torch.zeros(3, 3, 8, 8), torch.tensor([1, 1]))


def test_negative_item_count_is_rejected(vision_config: VisionEncoderConfig) -> None:
    with pytest.raises(ValueError, match=r">= 0, got \[2, -1\]"):
        VisionEncoder(vision_config)(torch.zeros(1, 3, 8, 8), torch.tensor([2, -1]))
