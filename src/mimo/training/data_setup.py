"""The datasets of a run, agreed on by every rank before training.

For conversation records, one rank (the language model's first stage, replica 0: it has the tokenizer) decides
which records train and broadcasts that decision, so every rank reads the same sample order while encoder ranks
never tokenize and language ranks never decode media. A mistake found there stops every rank with the same
message instead of leaving the others waiting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from mimo.config import MimoConfig
from mimo.data import build_dataset
from mimo.data.conversations.dataset import ConversationDataset, ConversationIndex
from mimo.data.format import Sample
from mimo.data.seeding import seeded_generator
from mimo.model.configs import LANGUAGE_MODULE
from mimo.training.run_plan import RunPlan

__all__ = ["RunData", "build_run_data"]

logger = logging.getLogger(__name__)


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
    train, validation = _conversation_datasets(cfg)
    source = plan.layouts[LANGUAGE_MODULE].rank_of(0, 0)
    indices = _agree(lambda: [d.build_index() for d in (train, validation) if d is not None], rank, source)
    train.set_index(indices[0])
    summary = f"data: {indices[0].summary()}"
    if validation is not None:
        validation.set_index(indices[1])
        summary += f"; validation: {indices[1].summary()}"
    return RunData(train=train, validation=validation, summary=summary)


def _conversation_datasets(cfg: MimoConfig) -> tuple[ConversationDataset, ConversationDataset | None]:
    validation = cfg.data.validation
    if validation is None:
        return ConversationDataset(cfg.data, cfg.model), None
    if validation.path is not None:
        return ConversationDataset(cfg.data, cfg.model), ConversationDataset(cfg.data, cfg.model, path=validation.path)
    # A held-out fraction: a seeded choice of record positions that never train.
    everything = ConversationDataset(cfg.data, cfg.model)
    count = len(everything.conversations)
    order = torch.randperm(count, generator=seeded_generator("validation", cfg.data.seed)).tolist()
    held = round(count * (validation.fraction or 0.0))
    if not 0 < held < count:
        raise ValueError(f"data.validation.fraction={validation.fraction} of {count} records leaves no "
                         f"{'validation' if held == 0 else 'training'} record")
    held_out = set(order[:held])
    return (ConversationDataset(cfg.data, cfg.model, positions=[i for i in range(count) if i not in held_out]),
            ConversationDataset(cfg.data, cfg.model, positions=sorted(held_out)))


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
