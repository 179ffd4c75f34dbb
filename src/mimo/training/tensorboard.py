"""``train.tensorboard: true``: the figures users look at, as TensorBoard scalars in ``<run_dir>/tensorboard``.

Written by the rank that logs metrics; every value comes from the step's single world-wide reduction, so it
describes the whole job: loss and validation loss, gradient norm per module and in all, learning rate per
module, loss tokens per second, step time, the share of the step each rank spent waiting for its peers, and
this process's peak memory.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

from mimo.training.metrics import StepMetrics

__all__ = ["TensorBoardLog"]


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package: imported only when on

        self.folder = run_dir / "tensorboard"
        self.writer: Any = SummaryWriter(log_dir=str(self.folder))

    def log(self, metrics: StepMetrics, *, module_norms: dict[str, float], lrs: dict[str, float],
            waited_s: list[float]) -> None:
        step, add = metrics.step, self.writer.add_scalar
        add("loss/train", metrics.loss, step)
        if metrics.val_loss is not None:
            add("loss/validation", metrics.val_loss, step)
        add("grad_norm/total", metrics.grad_norm, step)
        for module, norm in module_norms.items():
            add(f"grad_norm/{module}", norm, step)
        for module, lr in lrs.items():
            add(f"lr/{module}", lr, step)
        add("throughput/loss_tokens_per_s", metrics.tokens_per_s, step)
        add("time/step_s", metrics.step_time_s, step)
        for rank, waited in enumerate(waited_s):
            add(f"idle/rank{rank}", waited / metrics.step_time_s if metrics.step_time_s > 0 else 0.0, step)
        add("memory/peak_mib", _peak_memory_mib(), step)

    def close(self) -> None:
        self.writer.close()


def _peak_memory_mib() -> float:
    """Peak device memory on a GPU, else the process's peak resident memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
