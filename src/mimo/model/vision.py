"""A small ViT-style image encoder that emits sample-major patch rows."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mimo.model.configs import VisionEncoderConfig
from mimo.model.layers import TransformerBlock
from mimo.model.types import EncoderOutput, check_items_per_sample

__all__ = ["VisionEncoder"]


class VisionEncoder(nn.Module):
    """Conv2d patch embedding + learned position embedding + bidirectional blocks + final RMSNorm."""

    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.tokens_per_image, config.hidden_size)
        self.layers = nn.ModuleList(
            TransformerBlock(config.hidden_size, config.num_heads, config.mlp_ratio, causal=False)
            for _ in range(config.num_layers)
        )
        self.norm = nn.RMSNorm(config.hidden_size)

    @property
    def expected_image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.config.num_channels, self.config.image_size, self.config.image_size)

    def forward(self, pixel_values: Tensor, items_per_sample: Tensor) -> EncoderOutput:
        """Encode ``[N_img, C, H, W]`` images (in sample order) into ``[N_img * tokens_per_image, hidden]`` rows."""
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != self.expected_image_shape:
            raise ValueError(
                f"pixel_values must have shape [N, {', '.join(map(str, self.expected_image_shape))}], "
                f"got {list(pixel_values.shape)}"
            )
        num_images = pixel_values.shape[0]
        check_items_per_sample(items_per_sample, num_images, "images")
        # [N, D, h, w] -> [N, h*w, D]: patches in row-major order, each image's rows contiguous.
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        positions = torch.arange(self.config.tokens_per_image, device=pixel_values.device)
        hidden = patches + self.position_embedding(positions)
        for layer in self.layers:
            hidden = layer(hidden)
        embeddings = self.norm(hidden).reshape(num_images * self.config.tokens_per_image, self.config.hidden_size)
        return EncoderOutput(embeddings, items_per_sample.to(torch.long) * self.config.tokens_per_image)
