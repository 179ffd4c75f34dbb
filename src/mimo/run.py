"""One training run from a validated config: start processes' groups, train, export, shut down."""

from __future__ import annotations

from pathlib import Path

from mimo.config import MimoConfig
from mimo.distributed import init_distributed, shutdown_distributed
from mimo.export import export_safetensors
from mimo.training.metrics import StepMetrics
from mimo.training.trainer import Trainer


def run_training(config: MimoConfig, *, export_path: str | Path | None = None) -> list[StepMetrics]:
    ctx = init_distributed(config.train.device, timeout_s=config.train.collective_timeout_s)
    try:
        trainer = Trainer(config, ctx)
        history = trainer.train()
        if export_path is not None and ctx.is_main:
            print(f"weights: {export_safetensors(trainer.model, export_path)}")
    except BaseException:
        # No barrier on the way out: the other ranks may be the ones that failed.
        shutdown_distributed(wait_for_peers=False)
        raise
    shutdown_distributed()
    return history
