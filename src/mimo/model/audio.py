"""A small audio encoder over zero-padded log-mel frames that emits only each clip's valid tokens.

Shape legend: N = clips, T = frames, F = mel bins, L = tokens after downsampling, D = hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimo.model.configs import AudioEncoderConfig
from mimo.model.layers import TransformerBlock
from mimo.model.types import EncoderOutput, check_items_per_sample, sum_per_sample

__all__ = ["AudioEncoder"]


class AudioEncoder(nn.Module):
    """Strided Conv1d + GELU + learned positions + masked bidirectional blocks + final RMSNorm.

    The output for a clip does not depend on how far the batch is padded: frames past a clip's length are
    zeroed, and padded tokens are masked as attention keys.
    """

    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.frame_embedding = nn.Conv1d(
            config.num_mel_bins, config.hidden_size, kernel_size=config.downsample, stride=config.downsample
        )
        self.activation = nn.GELU()
        self.position_embedding = nn.Embedding(config.max_tokens, config.hidden_size)
        self.layers = nn.ModuleList(
            TransformerBlock(config.hidden_size, config.num_heads, config.mlp_ratio, causal=False)
            for _ in range(config.num_layers)
        )
        self.norm = nn.RMSNorm(config.hidden_size)

    def forward(self, features: Tensor, lengths: Tensor, items_per_sample: Tensor) -> EncoderOutput:
        """Encode ``features [N, T_max, F]`` with ``lengths [N]`` valid frames into sample-major token rows."""
        self._check_inputs(features, lengths)
        check_items_per_sample(items_per_sample, features.shape[0], "audio clips")
        frames_NTF = self._trim_and_pad(features, lengths)
        tokens_N = (lengths.to(torch.long) + self.config.downsample - 1) // self.config.downsample
        hidden_NLD = self.activation(self.frame_embedding(frames_NTF.transpose(1, 2)).transpose(1, 2))
        num_tokens = hidden_NLD.shape[1]
        positions = torch.arange(num_tokens, device=features.device)
        hidden_NLD = hidden_NLD + self.position_embedding(positions)
        padding_NL = positions[None, :] >= tokens_N[:, None]
        for layer in self.layers:
            hidden_NLD = layer(hidden_NLD, key_padding_mask=padding_NL)
        # Boolean indexing walks [N, L] row-major: clip by clip, each clip's valid tokens in order.
        embeddings = self.norm(hidden_NLD)[~padding_NL]
        return EncoderOutput(embeddings, sum_per_sample(tokens_N, items_per_sample))

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
