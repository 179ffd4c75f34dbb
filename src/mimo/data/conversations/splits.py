"""The training and validation record sets of a run: two files, or a seeded held-out fraction of one."""

from __future__ import annotations

import torch

from mimo.config import MimoConfig
from mimo.data.conversations.dataset import ConversationDataset
from mimo.data.seeding import seeded_generator

__all__ = ["conversation_datasets"]


def conversation_datasets(cfg: MimoConfig) -> tuple[ConversationDataset, ConversationDataset | None]:
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
