"""One training run from a validated config: start processes' groups, train, export, shut down."""

from __future__ import annotations

import os
from pathlib import Path

from mimo.config import MimoConfig
from mimo.distributed import init_distributed, shutdown_distributed
from mimo.export import export_consolidated
from mimo.training.metrics import StepMetrics
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer


def run_training(
    config: MimoConfig,
    *,
    export_path: str | Path | None = None,
    resume: str | None = None,
    init_from: str | None = None,
) -> list[StepMetrics]:
    # Validate the layout against the launch before joining any process group, so mistakes cannot hang.
    plan = plan_run(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    ctx = init_distributed(config.train.device, timeout_s=config.train.collective_timeout_s)
    try:
        trainer = Trainer(config, ctx, plan, init_from=init_from)
        if resume is not None:
            trainer.resume(resume)
        history = trainer.train()
        if export_path is not None:
            written = export_consolidated(trainer, export_path)
            if written is not None:
                print(f"weights: {written}")
    except BaseException:
        # No barrier on the way out: the other ranks may be the ones that failed.
        shutdown_distributed(wait_for_peers=False)
        raise
    shutdown_distributed()
    return history
