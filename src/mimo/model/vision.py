"""A small ViT-style image encoder that emits sample-major patch rows; a pipeline stage may hold a slice of it.

Shape legend: N = images, T = tokens (patches) per image, D = hidden size, B = samples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh

from mimo.model.compute import run_layer
from mimo.model.configs import VisionEncoderConfig
from mimo.model.encoder_layers import build_encoder_blocks, check_hidden, check_layer_range, missing_part_error
from mimo.model.tensor_parallel import split
from mimo.model.types import EncoderOutput, check_items_per_sample

__all__ = ["VisionEncoder"]


class VisionEncoder(nn.Module):
    """Conv2d patch embedding + learned position embedding + bidirectional blocks + final RMSNorm.

    A slice holds the blocks of ``layers`` (keyed by global index, as in the full encoder), the embeddings only
    with ``has_embedding`` and the final norm only with ``has_head``. ``forward`` = ``embed`` -> ``run_layers``
    -> ``finish``; a pipeline splits those three calls over its stages and passes ``(hidden, aux)`` along.
    """

    aux_keys: tuple[str, ...] = ("items_per_sample",)
    """Keys of the ``aux`` dict that ``embed`` returns and later stages need."""
    checkpoint_every: int = 0
    """Recompute the layers whose global index is a multiple of this in the backward (0: none; see
    ``mimo.model.compute``)."""

    def __init__(
        self,
        config: VisionEncoderConfig,
        *,
        layers: range | None = None,
        has_embedding: bool = True,
        has_head: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_indices = check_layer_range(layers, config.num_layers, "vision encoder")
        self.patch_embedding = (
            nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)
            if has_embedding
            else None
        )
        self.position_embedding = nn.Embedding(config.tokens_per_image, config.hidden_size) if has_embedding else None
        self.layers = build_encoder_blocks(self.layer_indices, config.hidden_size, config.num_heads, config.mlp_ratio)
        self.norm = nn.RMSNorm(config.hidden_size) if has_head else None

    def apply_tensor_parallel(self, mesh: DeviceMesh) -> None:
        """Split its blocks over the 1-D ``tp`` mesh; embeddings and norm stay whole (``mimo.model.tensor_parallel``)."""
        split(self, mesh)

    @property
    def has_embedding(self) -> bool:
        return self.patch_embedding is not None

    @property
    def has_head(self) -> bool:
        return self.norm is not None

    @property
    def expected_image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.config.num_channels, self.config.image_size, self.config.image_size)

    def forward(self, pixel_values: Tensor, items_per_sample: Tensor) -> EncoderOutput:
        """Encode ``[N, C, H, W]`` images (in sample order) into ``[N * tokens_per_image, D]`` rows."""
        hidden_NTD, aux = self.embed(pixel_values, items_per_sample)
        return self.finish(self.run_layers(hidden_NTD, aux), aux)

    def embed(self, pixel_values: Tensor, items_per_sample: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Check the inputs and embed them: ``[N, T, D]`` patch embeddings and ``{"items_per_sample": [B]}``."""
        if self.patch_embedding is None or self.position_embedding is None:
            raise missing_part_error("VisionEncoder", "has_embedding", "embed")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != self.expected_image_shape:
            raise ValueError(
                f"pixel_values must have shape [N, {', '.join(map(str, self.expected_image_shape))}], "
                f"got {list(pixel_values.shape)}"
            )
        check_items_per_sample(items_per_sample, pixel_values.shape[0], "images")
        # [N, D, h, w] -> [N, h*w, D]: patches in row-major order, each image's rows contiguous.
        patches_NTD = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        positions = torch.arange(self.config.tokens_per_image, device=pixel_values.device)
        hidden_NTD = patches_NTD + self.position_embedding(positions)
        return hidden_NTD, {"items_per_sample": items_per_sample.to(torch.long)}

    def run_layers(self, hidden_NTD: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """Run the held blocks on ``[N, T, D]`` (``aux`` is unused: every patch of every image is valid)."""
        del aux
        check_hidden(hidden_NTD, self.config.hidden_size, "vision encoder")
        for index, layer in self.layers.items():
            hidden_NTD = run_layer(layer, int(index), self.checkpoint_every, hidden_NTD)
        return hidden_NTD

    def finish(self, hidden_NTD: Tensor, aux: dict[str, Tensor]) -> EncoderOutput:
        """Final norm, then one row per patch in sample order, and the per-sample row counts."""
        if self.norm is None:
            raise missing_part_error("VisionEncoder", "has_head", "finish")
        tokens = self.config.tokens_per_image
        embeddings = self.norm(hidden_NTD).reshape(hidden_NTD.shape[0] * tokens, self.config.hidden_size)
        return EncoderOutput(embeddings, aux["items_per_sample"].to(torch.long) * tokens)
