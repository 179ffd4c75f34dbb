"""``MergedLoader``: the loaders of a rank that holds several modules, read as one.

An encoder colocated with a pipelined language model reads its own data-parallel shard of each microbatch (its
modality's inputs) while the language stage on the same rank reads another shard (its text fields). Each part
comes from its own ``MicrobatchLoader``; the merged microbatch holds every part's fields, which never overlap,
so each stage's forward picks the fields it uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from mimo.data.format import MODALITY_INPUTS, Batch
from mimo.data.loader import MicrobatchLoader

__all__ = ["MergedLoader"]


class MergedLoader:
    """Several ``MicrobatchLoader``s over one dataset and one sample order, each with its own shard and fields."""

    def __init__(self, loaders: Sequence[MicrobatchLoader]) -> None:
        if not loaders:
            raise ValueError("MergedLoader needs at least one loader")
        self.loaders = list(loaders)
        self.num_samples = self.loaders[0].num_samples

    @property
    def consumed_samples(self) -> int:
        return self.loaders[0].consumed_samples

    def next_step(self) -> Iterator[Batch]:
        """This step's microbatches, each the union of every loader's part of it."""
        parts = [list(loader.next_step()) for loader in self.loaders]
        return iter([_merge(batches) for batches in zip(*parts, strict=True)])

    def state_dict(self) -> dict[str, int]:
        return self.loaders[0].state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for loader in self.loaders:
            loader.load_state_dict(state)


def _merge(batches: Sequence[Batch]) -> Batch:
    merged: dict[str, Any] = {}
    for batch in batches:
        for key, value in batch.items():
            if key == MODALITY_INPUTS:
                inputs = merged.setdefault(MODALITY_INPUTS, {})
                clash = sorted(set(inputs) & set(value))
                inputs.update(value)
            else:
                clash = [key] if key in merged else []
                merged[key] = value
            if clash:
                raise ValueError(f"two loaders of one rank both read {clash}; each field must come from one of them")
    return merged
