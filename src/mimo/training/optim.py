"""One optimizer and one LR schedule per module, and per-module freezing.

Modules are the language model and each modality; each gets its own optimizer config (``optim.modules``) so an
encoder can train with a different learning rate than the language model. Frozen parameters get
``requires_grad=False`` and are left out of every optimizer, so they hold no optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from mimo.config import LRScheduleConfig, OptimConfig, OptimizerConfig
from mimo.model.configs import LANGUAGE_MODULE


_PARTS = ("encoders", "projection")


def module_of(model: nn.Module, name: str) -> nn.Module | None:
    """The submodule holding module ``name`` ("language", a modality, or "<modality>.encoders|projection").

    None when this rank's slice of the model holds the module but not that part: a pipelined modality's projection
    lives only on its last stage (``projection`` is None on the others), so there is nothing of it here. A name
    this model (or stage) does not hold at all is a ``ValueError``.
    """
    module, _, part = name.partition(".")
    if module == LANGUAGE_MODULE:
        holder = getattr(model, "language", None) if not part else None
    else:
        modalities = getattr(model, "modalities", None)
        held = modalities is not None and module in modalities and part in ("", *_PARTS)
        holder = modalities[module] if held else None
    if holder is None:
        raise ValueError(
            f"{name!r} is not a module of this model slice ({type(model).__name__}): expected 'language', a "
            f"modality it holds, or '<modality>.encoders' / '<modality>.projection'"
        )
    return getattr(holder, part, None) if part else holder


def parameters_of(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of module ``name`` that this rank holds (none where its slice lacks that part)."""
    module = module_of(model, name)
    return [] if module is None else list(module.parameters())


def apply_freezing(model: nn.Module, freeze: Iterable[str]) -> None:
    """Freeze every listed module or part this rank holds; a part another stage holds has nothing to freeze here."""
    for name in freeze:
        for parameter in parameters_of(model, name):
            parameter.requires_grad_(False)


def trainable_parameters(model: nn.Module, module_names: Iterable[str]) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters per module, in a fixed order; modules with none (on this rank) are left out."""
    by_module = {}
    for name in module_names:
        params = [p for p in parameters_of(model, name) if p.requires_grad]
        if params:
            by_module[name] = params
    return by_module


def lr_factor(step: int, *, total_steps: int, schedule: LRScheduleConfig) -> float:
    """Multiplier of the base LR for the optimizer step with 0-based index ``step``."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.decay == "constant":
        return 1.0
    progress = min(1.0, (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps - 1))
    floor = schedule.min_lr_ratio
    if schedule.decay == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params: list[nn.Parameter], config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(
        params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay
    )


class ModuleOptimizers:
    """The optimizers and LR schedules of every module this rank trains, stepped together."""

    def __init__(self, params_by_module: dict[str, list[nn.Parameter]], config: OptimConfig, *, total_steps: int):
        self.optimizers = {
            name: build_optimizer(params, config.for_module(name)) for name, params in params_by_module.items()
        }
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: lr_factor(step, total_steps=total_steps, schedule=config.lr_schedule)
            )
            for name, optimizer in self.optimizers.items()
        }

    def step(self) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.step()
            self.schedulers[name].step()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            # None, not zeros: no memset per step; the trainer materializes the missing ones before reducing.
            optimizer.zero_grad(set_to_none=True)

    def set_steps_taken(self, steps: int) -> None:
        """Put every LR schedule where it is after ``steps`` optimizer steps (used when resuming)."""
        for name, scheduler in self.schedulers.items():
            scheduler.last_epoch = steps
            groups = self.optimizers[name].param_groups
            for group, base_lr, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base_lr * factor(steps)
            scheduler._last_lr = [group["lr"] for group in groups]

    def lrs(self) -> dict[str, float]:
        return {name: optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizers.items()}
