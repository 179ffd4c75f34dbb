"""Colocated encoders more data-parallel than the language model: each rank encodes a part of its language
replica's samples, and the rows are gathered back over the replica's ranks inside the autograd graph.

Example: images ``dp: 2`` next to language ``tp: 2`` on ranks 0-1. Both ranks read the language replica's
microbatch (they are its two tensor-parallel ranks); rank 0 encodes the images of the first half of the samples,
rank 1 those of the second half, and an all-gather hands both halves to both ranks in sample order. In the
backward every rank of the replica holds the same gradient of the gathered rows (tensor parallelism sums the
gradient of a replicated input), so each keeps the slice of its own rows: nothing else crosses ranks.

``layout.colocated_rows`` says who encodes which part; ``MimoModel.encode`` calls ``own_inputs`` and ``gather``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mimo.data.format import MODALITY_INPUTS
from mimo.data.slicing import batch_size, slice_batch
from mimo.model.types import EncoderOutput

__all__ = ["RowGather"]


class RowGather:
    """The share-out of one modality on one rank: which part of the samples it encodes, and the gather."""

    def __init__(self, modality: str, group: dist.ProcessGroup, sources: Sequence[int], part: int) -> None:
        self.modality, self.group, self.sources, self.part = modality, group, list(sources), part

    def own_inputs(self, inputs: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
        """The encoder inputs of this rank's part of the samples (``{encoder: kwargs}`` of one modality)."""
        wrapped = {MODALITY_INPUTS: {self.modality: inputs}}
        samples = batch_size(wrapped)
        share = len(self.sources)
        if samples % share:
            raise ValueError(f"modality {self.modality!r}: {samples} samples per language replica cannot be split "
                             f"over {share} encoder replicas")
        per_part = samples // share
        part = slice_batch(wrapped, self.part * per_part, (self.part + 1) * per_part)
        return part[MODALITY_INPUTS][self.modality]

    def gather(self, output: EncoderOutput) -> EncoderOutput:
        """Every part's rows and per-sample counts, in sample order (the same on every rank of the group)."""
        counts = _all_gather_equal(output.tokens_per_sample.to(torch.long), self.group)
        counts = [counts[index] for index in self.sources]
        sizes = [int(c.sum()) for c in counts]
        rows = _GatherRows.apply(output.embeddings, self.group, self.sources, sizes, self.part)
        return EncoderOutput(rows, torch.cat(counts))


def _all_gather_equal(tensor: Tensor, group: dist.ProcessGroup) -> list[Tensor]:
    pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, tensor.contiguous(), group=group)
    return pieces


class _GatherRows(torch.autograd.Function):
    """Forward: the rows of every source rank, concatenated (padded to one size for the all-gather, gloo's rule).
    Backward: the slice of the gradient that belongs to this rank's own part."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, group: dist.ProcessGroup, sources: list[int], sizes: list[int],
                part: int) -> Tensor:
        width = rows.shape[1]
        padded = rows.new_zeros((max(*sizes, 1), width))  # one row at least: no empty message
        padded[: rows.shape[0]] = rows
        pieces = _all_gather_equal(padded, group)
        ctx.start, ctx.stop = sum(sizes[:part]), sum(sizes[: part + 1])
        return torch.cat([pieces[index][:size] for index, size in zip(sources, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return grad[ctx.start : ctx.stop], None, None, None, None
