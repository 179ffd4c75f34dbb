"""``MicrobatchLoader``: per-rank, resumable microbatches of an endless, epoch-shuffled sample order.

Global position p (counted in samples since the start of training) maps to dataset index
``permutation(seed, p // N)[p % N]``. Step by step, microbatch m covers positions
``[consumed + m * mbs, consumed + (m + 1) * mbs)`` and a rank loads only its contiguous DP shard of it, so
the union over ranks equals what one process would load, and resuming needs nothing but ``consumed_samples``.
A rank reads only the fields it uses: its modalities' inputs and the text fields it names (a pipeline's last
language stage: labels and loss mask), so nothing else is collated or moved to its device.

With ``num_workers > 0`` a ``torch.utils.data.DataLoader`` prepares the microbatches ahead in worker processes:
microbatch k (counted since the start of training) is one item of a map-style view, requested in order, so
the batches are exactly those of the in-process path, and resuming starts the requests at the saved position.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from mimo.data.collate import collate
from mimo.data.format import MODALITY_INPUTS, TEXT_KEYS, Batch, Sample, select_fields, text_keys
from mimo.data.seeding import seeded_generator
from mimo.data.slicing import shard_range

__all__ = ["MicrobatchLoader", "SelectiveDataset"]


@runtime_checkable
class SelectiveDataset(Protocol):
    """A dataset that can render only some parts of a sample (the loader uses it when available)."""

    def load_sample(
        self, index: int, *, modalities: Collection[str] | None = None, include_text: bool = True
    ) -> Sample: ...


class MicrobatchLoader:
    """Yields, step after step, this rank's shard of each microbatch of the global batch."""

    def __init__(
        self,
        dataset: Dataset[Sample],
        *,
        global_batch_size: int,
        num_microbatches: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        consumed_samples: int = 0,
        modalities: Collection[str] | None = None,
        include_text: bool | Collection[str] = True,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        load_ahead: bool = False,
    ) -> None:
        _check_sizes(global_batch_size, num_microbatches, dp_size)
        self.micro_batch_size = global_batch_size // num_microbatches
        self._shard = shard_range(self.micro_batch_size, dp_rank, dp_size)
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        if self.num_samples < 1:
            raise ValueError(f"dataset is empty (len {self.num_samples}); the loader needs at least one sample")
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        self.dataset = dataset
        self._selective = isinstance(dataset, SelectiveDataset)
        """Decided once: a runtime Protocol check costs tens of microseconds, and it ran per sample."""
        self.global_batch_size, self.num_microbatches = global_batch_size, num_microbatches
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.modalities = None if modalities is None else frozenset(modalities)
        self.text_keys = text_keys(include_text)
        """The text fields this rank reads (``include_text``: True all, False none, or the keys a stage uses)."""
        self._consumed = consumed_samples
        self._permutations: dict[int, list[int]] = {}
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.load_ahead = load_ahead
        """In process: load all of a step's microbatches when it starts, not each when it is asked for. Where the
        microbatches run back to back (one process, the whole model), the same loading done between them costs
        0.2 ms a step more on the tiny recipe (with one thread as with two: most likely the loader and the model
        evicting each other's caches); a pipeline stage keeps loading on demand, so that its first forward does
        not wait for its last microbatch."""
        self._prefetched: Iterator[Batch] | None = None
        """Batches the DataLoader workers prepare, from the current position on (None: not started)."""

    @property
    def consumed_samples(self) -> int:
        """Samples of the global order consumed by all ranks together (advanced by whole steps)."""
        return self._consumed

    def next_step(self) -> Iterator[Batch]:
        """This step's ``num_microbatches`` microbatches (this rank's shard of each): loaded when asked for, or all
        now with ``load_ahead`` (the DataLoader workers prepare them ahead anyway)."""
        if self.num_workers > 0:
            if self._prefetched is None:
                self._prefetched = self._start_workers()
            batches = [next(self._prefetched) for _ in range(self.num_microbatches)]
            self._consumed += self.global_batch_size
            return iter(batches)
        indices = self.step_indices()
        self._consumed += self.global_batch_size
        if self.load_ahead:
            return iter([self._load(microbatch) for microbatch in indices])
        return (self._load(microbatch) for microbatch in indices)

    def _start_workers(self) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        first = self._consumed // self.micro_batch_size
        return iter(DataLoader(
            _Microbatches(self), sampler=itertools.count(first), batch_size=None, num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor, persistent_workers=True,
        ))

    def microbatch_indices(self, microbatch: int) -> list[int]:
        """Dataset indices of this rank's shard of global microbatch ``microbatch`` (counted from the start)."""
        start, stop = self._shard
        first = microbatch * self.micro_batch_size
        return [self.sample_index(first + i) for i in range(start, stop)]

    def step_indices(self) -> list[list[int]]:
        """Dataset indices this rank will load in the next step, per microbatch; advances nothing."""
        start, stop = self._shard
        return [
            [self.sample_index(self._consumed + m * self.micro_batch_size + i) for i in range(start, stop)]
            for m in range(self.num_microbatches)
        ]

    def sample_index(self, position: int) -> int:
        """Dataset index at global ``position`` of the endless order (epoch e = one seeded permutation)."""
        epoch, offset = divmod(position, self.num_samples)
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # a step crosses at most one epoch boundary
                del self._permutations[min(self._permutations)]
            gen = seeded_generator("epoch", self.seed, epoch)
            self._permutations[epoch] = torch.randperm(self.num_samples, generator=gen).tolist()
        return self._permutations[epoch][offset]

    def state_dict(self) -> dict[str, int]:
        """Plain ints; the order itself is a function of the seed and the dataset length."""
        return {"consumed_samples": self._consumed, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state['consumed_samples']``; the seed and dataset length must match the saved ones."""
        if "consumed_samples" not in state:
            raise ValueError(f"loader state lacks 'consumed_samples'; it has {sorted(state)}")
        for key, current in (("seed", self.seed), ("num_samples", self.num_samples)):
            if key in state and state[key] != current:
                raise ValueError(f"loader state has {key}={state[key]}, this loader has {key}={current}")
        consumed = state["consumed_samples"]
        if not isinstance(consumed, int) or isinstance(consumed, bool) or consumed < 0:
            raise ValueError(f"loader state consumed_samples must be an integer >= 0, got {consumed!r}")
        self._consumed = consumed
        self._prefetched = None  # the workers restart at the new position

    def _load(self, indices: list[int]) -> Batch:
        return collate([self._load_sample(index) for index in indices])

    def _load_sample(self, index: int) -> Sample:
        if not self._selective:
            sample = select_fields(self.dataset[index], modalities=self.modalities, include_text=self.text_keys)
        else:
            sample = self.dataset.load_sample(  # type: ignore[attr-defined]
                index, modalities=self.modalities, include_text=bool(self.text_keys))
            if self.text_keys not in ((), TEXT_KEYS):
                # A dataset renders the text fields together: drop those this rank does not use before collating.
                sample = select_fields(sample, include_text=self.text_keys)
        if self.modalities == frozenset() and MODALITY_INPUTS in sample:
            # A text-only rank: no empty modality dict to collate and move (a copy: the dataset may keep its dict).
            sample = {key: value for key, value in sample.items() if key != MODALITY_INPUTS}
        return sample


class _Microbatches:
    """Map-style view for DataLoader workers: item k = this rank's shard of global microbatch k, collated."""

    def __init__(self, loader: MicrobatchLoader) -> None:
        self.loader = loader

    def __getitem__(self, microbatch: int) -> Batch:
        return self.loader._load(self.loader.microbatch_indices(microbatch))


def _check_sizes(global_batch_size: int, num_microbatches: int, dp_size: int) -> None:
    for name, value in (("global_batch_size", global_batch_size), ("num_microbatches", num_microbatches),
                        ("dp_size", dp_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if global_batch_size % num_microbatches:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) is not divisible by num_microbatches ({num_microbatches})"
        )
    micro_batch_size = global_batch_size // num_microbatches
    if micro_batch_size % dp_size:
        raise ValueError(f"micro batch size ({micro_batch_size}) is not divisible by dp_size ({dp_size})")
