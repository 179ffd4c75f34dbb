"""A small audio encoder over zero-padded log-mel frames that emits only each clip's valid tokens.

A pipeline stage may hold a slice of it. Shape legend: N = clips, T = frames, F = mel bins,
L = tokens after downsampling, D = hidden size, B = samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh

from mimo.model.compute import run_layer
from mimo.model.configs import AudioEncoderConfig
from mimo.model.encoder_layers import build_encoder_blocks, check_hidden, check_layer_range, missing_part_error
from mimo.model.tensor_parallel import split
from mimo.model.types import EncoderOutput, check_items_per_sample, sum_per_sample

__all__ = ["AudioEncoder"]


class AudioEncoder(nn.Module):
    """Strided Conv1d + GELU + learned positions + masked bidirectional blocks + final RMSNorm.

    The output for a clip does not depend on how far the batch is padded: frames past a clip's length are
    zeroed, and padded tokens are masked as attention keys. Slicing works as in ``VisionEncoder``: ``forward``
    = ``embed`` -> ``run_layers`` -> ``finish``, and ``aux`` carries each clip's valid token count.
    """

    aux_keys: tuple[str, ...] = ("tokens_per_clip", "items_per_sample")
    """Keys of the ``aux`` dict that ``embed`` returns and later stages need."""
    checkpoint_every: int = 0
    """Recompute the layers whose global index is a multiple of this in the backward (0: none; see
    ``mimo.model.compute``)."""

    def __init__(
        self,
        config: AudioEncoderConfig,
        *,
        layers: range | None = None,
        has_embedding: bool = True,
        has_head: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_indices = check_layer_range(layers, config.num_layers, "audio encoder")
        self.frame_embedding = (
            nn.Conv1d(config.num_mel_bins, config.hidden_size, kernel_size=config.downsample, stride=config.downsample)
            if has_embedding
            else None
        )
        self.activation = nn.GELU()
        self.position_embedding = nn.Embedding(config.max_tokens, config.hidden_size) if has_embedding else None
        self.layers = build_encoder_blocks(self.layer_indices, config.hidden_size, config.num_heads, config.mlp_ratio)
        self.norm = nn.RMSNorm(config.hidden_size) if has_head else None

    def apply_tensor_parallel(self, mesh: DeviceMesh) -> None:
        """Split its blocks over the 1-D ``tp`` mesh; embeddings and norm stay whole (``mimo.model.tensor_parallel``)."""
        split(self, mesh)

    @property
    def has_embedding(self) -> bool:
        return self.frame_embedding is not None

    @property
    def has_head(self) -> bool:
        return self.norm is not None

    def forward(self, features: Tensor, lengths: Tensor, items_per_sample: Tensor) -> EncoderOutput:
        """Encode ``features [N, T_max, F]`` with ``lengths [N]`` valid frames into sample-major token rows."""
        hidden_NLD, aux = self.embed(features, lengths, items_per_sample)
        return self.finish(self.run_layers(hidden_NLD, aux), aux)

    def embed(self, features: Tensor, lengths: Tensor, items_per_sample: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Check and embed the clips: ``[N, L, D]`` and ``{"tokens_per_clip": [N], "items_per_sample": [B]}``."""
        if self.frame_embedding is None or self.position_embedding is None:
            raise missing_part_error("AudioEncoder", "has_embedding", "embed")
        self._check_inputs(features, lengths)
        check_items_per_sample(items_per_sample, features.shape[0], "audio clips")
        frames_NTF = self._trim_and_pad(features, lengths)
        tokens_N = (lengths.to(torch.long) + self.config.downsample - 1) // self.config.downsample
        hidden_NLD = self.activation(self.frame_embedding(frames_NTF.transpose(1, 2)).transpose(1, 2))
        positions = torch.arange(hidden_NLD.shape[1], device=features.device)
        hidden_NLD = hidden_NLD + self.position_embedding(positions)
        return hidden_NLD, {"tokens_per_clip": tokens_N, "items_per_sample": items_per_sample.to(torch.long)}

    def run_layers(self, hidden_NLD: Tensor, aux: dict[str, Tensor]) -> Tensor:
        """Run the held blocks on ``[N, L, D]``, masking each clip's padded tokens as attention keys."""
        check_hidden(hidden_NLD, self.config.hidden_size, "audio encoder")
        padding_NL = self._padding(hidden_NLD, aux["tokens_per_clip"])
        for index, layer in self.layers.items():
            hidden_NLD = run_layer(layer, int(index), self.checkpoint_every, hidden_NLD, key_padding_mask=padding_NL)
        return hidden_NLD

    def finish(self, hidden_NLD: Tensor, aux: dict[str, Tensor]) -> EncoderOutput:
        """Final norm, then each clip's valid tokens in sample order, and the per-sample row counts."""
        if self.norm is None:
            raise missing_part_error("AudioEncoder", "has_head", "finish")
        tokens_N = aux["tokens_per_clip"]
        padding_NL = self._padding(hidden_NLD, tokens_N)
        # Boolean indexing walks [N, L] row-major: clip by clip, each clip's valid tokens in order.
        embeddings = self.norm(hidden_NLD)[~padding_NL]
        return EncoderOutput(embeddings, sum_per_sample(tokens_N, aux["items_per_sample"]))

    @staticmethod
    def _padding(hidden_NLD: Tensor, tokens_N: Tensor) -> Tensor:
        """``[N, L]`` bool, True at the tokens past each clip's valid count."""
        if tokens_N.shape != (hidden_NLD.shape[0],):
            raise ValueError(
                f"tokens_per_clip must have shape [{hidden_NLD.shape[0]}] (one per clip), got {list(tokens_N.shape)}"
            )
        positions = torch.arange(hidden_NLD.shape[1], device=hidden_NLD.device)
        return positions[None, :] >= tokens_N.to(hidden_NLD.device)[:, None]

    def _check_inputs(self, features: Tensor, lengths: Tensor) -> None:
        bins = self.config.num_mel_bins
        if features.ndim != 3 or features.shape[2] != bins:
            raise ValueError(f"features must have shape [N, T, {bins}], got {list(features.shape)}")
        if lengths.ndim != 1 or lengths.shape[0] != features.shape[0] or lengths.is_floating_point():
            raise ValueError(
                f"lengths must be an integer tensor of shape [{features.shape[0]}] (one per clip), "
                f"got {lengths.dtype} of shape {list(lengths.shape)}"
            )
        max_valid = min(features.shape[1], self.config.max_frames)
        bad = (lengths < 1) | (lengths > max_valid)
        if bool(bad.any()):
            raise ValueError(
                f"audio lengths {lengths[bad].tolist()} must be in [1, {max_valid}] "
                f"(T_max={features.shape[1]}, max_frames={self.config.max_frames})"
            )

    def _trim_and_pad(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Zero frames past each length, cut to the longest clip, pad to a multiple of ``downsample``.

        At least one token's worth of frames is kept so that an empty batch still runs every layer.
        """
        longest = int(lengths.max()) if lengths.numel() else 1
        frames = features[:, :longest]
        valid = torch.arange(longest, device=features.device)[None, :] < lengths[:, None]
        frames = frames * valid.unsqueeze(-1).to(frames.dtype)
        pad = -longest % self.config.downsample
        return F.pad(frames, (0, 0, 0, pad))
