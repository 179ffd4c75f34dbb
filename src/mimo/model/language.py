"""A small decoder-only language model that a pipeline stage can hold a slice of.

Parameter names never depend on the slice: layers are keyed by their global index, so stage 1 of
``range(2, 4)`` holds ``layers.2.*`` and ``layers.3.*``, exactly as the full model names them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh

from mimo.model.compute import fp32_region, run_layer
from mimo.model.configs import LanguageModelConfig
from mimo.model.layers import TransformerBlock
from mimo.model.packing import segment_ids
from mimo.model.tensor_parallel import split, vocabulary_plan

__all__ = ["IGNORE_INDEX", "LanguageEmbedding", "LanguageModel"]

IGNORE_INDEX = -100
"""Label value whose per-token loss is exactly 0."""


def _check_range(name: str, values: Tensor, limit: int, limit_name: str) -> None:
    if values.numel() == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise ValueError(f"{name} {bad} is out of range [0, {limit_name}={limit})")


class LanguageEmbedding(nn.Module):
    """Token embedding + learned position embedding."""

    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_seq_len, config.hidden_size)

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """``[B, S]`` token and position ids -> ``[B, S, H]``."""
        if input_ids.shape != position_ids.shape or input_ids.ndim != 2:
            raise ValueError(
                f"input_ids and position_ids must both be [B, S], got {list(input_ids.shape)} "
                f"and {list(position_ids.shape)}"
            )
        _check_range("token id", input_ids, self.config.vocab_size, "vocab_size")
        _check_range("position id", position_ids, self.config.max_seq_len, "max_seq_len")
        return self.token(input_ids) + self.position(position_ids)


class LanguageModel(nn.Module):
    """Embedding (optional), the causal blocks of ``layers``, final norm + head (optional)."""

    def __init__(
        self,
        config: LanguageModelConfig,
        *,
        layers: range | None = None,
        has_embedding: bool = True,
        has_head: bool = True,
    ) -> None:
        super().__init__()
        layers = range(config.num_layers) if layers is None else layers
        if layers.step != 1 or layers.start < 0 or layers.stop > config.num_layers or layers.start > layers.stop:
            raise ValueError(f"layers must be a contiguous sub-range of range({config.num_layers}), got {layers}")
        self.config = config
        self.layer_indices = layers
        self.embedding = LanguageEmbedding(config) if has_embedding else None
        self.layers = nn.ModuleDict(
            {
                str(index): TransformerBlock(config.hidden_size, config.num_heads, config.mlp_ratio, causal=True)
                for index in layers
            }
        )
        self.norm = nn.RMSNorm(config.hidden_size) if has_head else None
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if has_head else None

    def apply_tensor_parallel(self, mesh: DeviceMesh) -> None:
        """Split its blocks, the token embedding and the head over the 1-D ``tp`` mesh (``model.tensor_parallel``)."""
        split(self, mesh, vocabulary_plan())

    @property
    def has_embedding(self) -> bool:
        return self.embedding is not None

    @property
    def has_head(self) -> bool:
        return self.head is not None

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """``[B, S]`` token and position ids -> ``[B, S, H]`` text embeddings."""
        if self.embedding is None:
            raise ValueError("this LanguageModel slice was built with has_embedding=False and cannot embed")
        return self.embedding(input_ids, position_ids)

    def logits(self, hidden: Tensor, *, position_ids: Tensor | None = None) -> Tensor:
        """Run the held layers, then the final norm and the head: ``[B, S, vocab]`` (for generation)."""
        return self.head_logits(self._run_layers(hidden, position_ids))

    def _run_layers(self, hidden: Tensor, position_ids: Tensor | None) -> Tensor:
        # Packed rows: attention stays inside each sequence (position ids restart where one begins).
        segments = segment_ids(position_ids) if position_ids is not None else None
        for index, layer in self.layers.items():
            hidden = run_layer(layer, int(index), self.checkpoint_every, hidden, segment_ids=segments)
        return hidden

    def head_logits(self, hidden: Tensor) -> Tensor:
        """Final norm and head on hidden states that went through every layer."""
        if self.head is None or self.norm is None:
            raise ValueError("this LanguageModel slice was built with has_head=False and has no logits")
        return self.head(self.norm(hidden))

    checkpoint_every: int = 0
    """Recompute the layers whose global index is a multiple of this in the backward (0: none; see
    ``mimo.model.compute``)."""

    passes_position_ids = True
    """Later stages need the position ids too: in packed rows they mark where each sequence starts."""

    def forward(self, hidden: Tensor, *, position_ids: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """Run the held layers on ``[B, S, H]``.

        Returns the per-token cross-entropy ``[B, S]`` (fp32, 0 where ``labels == -100``) when this slice has
        the head, else the hidden states ``[B, S, H]``. ``labels`` is ignored by a slice without the head, so a
        pipeline runner may pass the same arguments to every stage; ``position_ids`` (learned positions are added
        by ``embed``) only tell where the sequences of a packed row start.
        """
        hidden = self._run_layers(hidden, position_ids)
        if self.head is None:
            return hidden
        assert self.norm is not None
        if labels is None:
            raise ValueError("the LanguageModel slice with the head needs labels to return per-token losses")
        if tuple(labels.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"labels must be [B, S] = {list(hidden.shape[:2])}, got {list(labels.shape)}")
        _check_range("label", labels[labels != IGNORE_INDEX], self.config.vocab_size, "vocab_size")
        logits = self.head_logits(hidden).float()
        # The loss (its logsumexp) in fp32 whatever precision the layers ran in.
        with fp32_region(logits.device.type):
            losses = F.cross_entropy(
                logits.reshape(-1, self.config.vocab_size),
                labels.reshape(-1).to(torch.long),
                reduction="none",
                ignore_index=IGNORE_INDEX,
            )
        return losses.view(labels.shape)
