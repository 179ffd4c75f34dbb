"""The parity oracle: one process, the plain model, the whole global batch, plain SGD written out by hand.

It shares no code with the trainer beyond the model and the sample order: the loss is the global per-token mean
computed in one expression, gradients come from one ``torch.autograd.grad`` call, clipping and the SGD update
are written here.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from mimo.config import MimoConfig, config_from_dict
from mimo.data import LOSS_MASK, MicrobatchLoader, SyntheticMimoDataset, collate
from mimo.model import MimoModel
from mimo.training.optim import module_of


def reference_run(raw_config: dict[str, Any], steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Per-step losses and the final weights (full-model names) of training the plain model."""
    cfg = config_from_dict(copy.deepcopy(raw_config))
    _require_plain_sgd(cfg)
    model = MimoModel(cfg.model, seed=cfg.train.seed)
    for name in cfg.optim.freeze:
        for parameter in module_of(model, name).parameters():
            parameter.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    order = MicrobatchLoader(dataset, global_batch_size=cfg.train.global_batch_size, num_microbatches=1,
                             seed=cfg.data.seed)
    losses = []
    for _ in range(steps):
        (indices,) = order.step_indices()
        order.next_step()
        batch = collate([dataset[i] for i in indices])
        per_token = model(**batch)
        mask = batch[LOSS_MASK]
        loss = (per_token * mask).sum() / mask.sum()
        losses.append(loss.item())
        gradients = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        gradients = [torch.zeros_like(p) if g is None else g for (_, p), g in zip(params, gradients)]
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in gradients))
        scale = min(1.0, cfg.optim.clip_grad / (norm + 1e-6)) if cfg.optim.clip_grad > 0 else 1.0
        with torch.no_grad():
            for (name, p), g in zip(params, gradients):
                p -= cfg.optim.for_module(name.split(".")[1] if name.startswith("modalities.") else "language").lr * scale * g
    return losses, {name: t.detach().clone() for name, t in model.state_dict().items()}


def _require_plain_sgd(cfg: MimoConfig) -> None:
    for module in cfg.model.module_names:
        opt = cfg.optim.for_module(module)
        assert opt.name == "sgd" and opt.momentum == 0 and opt.weight_decay == 0, f"reference needs plain SGD: {opt}"
    schedule = cfg.optim.lr_schedule
    assert schedule.decay == "constant" and schedule.warmup_steps == 0, f"reference needs a constant lr: {schedule}"
