"""The datasets of a run, agreed on by every rank before training.

For conversation records, one rank (the language model's first stage, replica 0: it has the tokenizer) decides
which records train and broadcasts that decision, so every rank reads the same sample order while encoder ranks
never tokenize and language ranks never decode media. A mistake found there stops every rank with the same
message instead of leaving the others waiting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset

from mimo.config import MimoConfig
from mimo.data import MicrobatchLoader, build_dataset
from mimo.data.merged_loader import MergedLoader
from mimo.data.conversations.dataset import ConversationIndex
from mimo.data.conversations.splits import conversation_datasets
from mimo.data.format import Sample
from mimo.model.configs import LANGUAGE_MODULE
from mimo.training.run_plan import RunPlan

__all__ = ["RunData", "build_loader", "build_run_data"]


@dataclass
class RunData:
    train: Dataset[Sample]
    validation: Dataset[Sample] | None = None
    summary: str = ""
    """What the index pass found (conversations only): kept, cut, dropped, unusable."""


def build_run_data(cfg: MimoConfig, plan: RunPlan, rank: int) -> RunData:
    """The training (and validation) dataset; collective for conversations (every rank must call it)."""
    if cfg.data.source != "conversations":
        return RunData(train=build_dataset(cfg.data, cfg.model))
    train, validation = conversation_datasets(cfg)
    source = plan.layouts[LANGUAGE_MODULE].rank_of(0, 0)
    indices = _agree(lambda: [d.build_index() for d in (train, validation) if d is not None], rank, source)
    train.set_index(indices[0])
    summary = f"data: {indices[0].summary()}"
    if cfg.data.packing:
        summary += f"; {train.padding_summary()}"
    if validation is not None:
        validation.set_index(indices[1])
        summary += f"; validation: {indices[1].summary()}"
    return RunData(train=train, validation=validation, summary=summary)


def _agree(build, rank: int, source: int) -> list[ConversationIndex]:  # noqa: ANN001
    """``build()`` on ``source``, its result (or its ValueError) on every rank."""
    if not dist.is_initialized():
        return build()
    payload: list[object] = [None]
    if rank == source:
        try:
            payload[0] = ("ok", build())
        except ValueError as error:
            payload[0] = ("error", str(error))
    dist.broadcast_object_list(payload, src=source)
    status, value = payload[0]  # type: ignore[misc]
    if status == "error":
        raise ValueError(value)
    return value  # type: ignore[no-any-return]


def build_loader(cfg: MimoConfig, dataset: Dataset[Sample] | None, parts: Sequence[Mapping[str, Any]]
                 ) -> MicrobatchLoader | MergedLoader | None:
    """This rank's loader of ``dataset``: none where no stage reads data (or no dataset), one per reading stage
    (``parts``: each stage's ``MicrobatchLoader`` options), merged where a rank holds several."""
    if dataset is None or not parts:
        return None
    loaders = [
        MicrobatchLoader(dataset, global_batch_size=cfg.train.global_batch_size,
                         num_microbatches=cfg.train.num_microbatches, seed=cfg.data.seed,
                         num_workers=cfg.data.num_workers, prefetch_factor=cfg.data.prefetch_factor, **options)
        for options in parts
    ]
    return loaders[0] if len(loaders) == 1 else MergedLoader(loaders)
