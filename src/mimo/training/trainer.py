"""The trainer for the colocated layout: every process holds the whole model, data parallel over all processes.

One optimizer step = the global batch cut into microbatches (each process reads only its own shard of each),
backward on the sum of per-token losses, a SUM of the gradients over data parallelism, division by the global
count of loss tokens, clipping by the global gradient norm, then one update per module.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mimo.config import MimoConfig
from mimo.data import MicrobatchLoader, SyntheticMimoDataset
from mimo.distributed import DistributedContext
from mimo.model import MimoModel
from mimo.training import grads
from mimo.training.metrics import MetricsLog, StepMetrics
from mimo.training.mimo_step import forward_step, prepare_forward_step_func
from mimo.training.optim import ModuleOptimizers, apply_freezing, trainable_parameters
from mimo.training.state import GlobalState
from mimo.training.timers import Timers

logger = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: MimoConfig, ctx: DistributedContext):
        self.cfg, self.ctx = cfg, ctx
        self.model = MimoModel(cfg.model, seed=cfg.train.seed).to(ctx.device)
        apply_freezing(self.model, cfg.optim.freeze)
        self.params_by_module = trainable_parameters(self.model, cfg.model.module_names)
        self.params = [p for params in self.params_by_module.values() for p in params]
        self.optimizers = ModuleOptimizers(self.params_by_module, cfg.optim, total_steps=cfg.train.steps)
        self.loader = MicrobatchLoader(
            SyntheticMimoDataset(cfg.data, cfg.model),
            global_batch_size=cfg.train.global_batch_size,
            num_microbatches=cfg.train.num_microbatches,
            dp_rank=ctx.rank,
            dp_size=ctx.world_size,
            seed=cfg.data.seed,
        )
        self.state = GlobalState(cfg=cfg, timers=Timers(synchronize=ctx.synchronize))
        self.forward_step = prepare_forward_step_func(forward_step, self.state)
        self.dp_group = dist.group.WORLD if dist.is_initialized() else None

    def train_step(self) -> StepMetrics:
        """One optimizer step over the global batch; returns the step's metrics (identical on every rank)."""
        timers, train_state = self.state.timers, self.state.train_state
        start = time.perf_counter()
        self.optimizers.zero_grad()
        microbatches = self.loader.next_step()
        reported = torch.zeros(2, dtype=torch.float32)
        for _ in range(self.cfg.train.num_microbatches):
            output, loss_fn = self.forward_step(microbatches, self.model)
            total_loss, _, report = loss_fn(output)
            with timers("backward"):
                total_loss.backward()
            reported += report["lm loss"].cpu()
        with timers("grad-reduce"):
            num_tokens = self._finalize_grads(reported)
        with timers("optimizer"):
            grad_norm = math.sqrt(grads.squared_norm(self.params).item())
            loss = reported[0].item() / max(num_tokens, 1)
            skipped = not (math.isfinite(grad_norm) and math.isfinite(loss))
            if skipped:
                train_state.skipped_steps += 1
                logger.warning("step %d: non-finite loss or gradient, update skipped", train_state.step + 1)
            else:
                if self.cfg.optim.clip_grad > 0:
                    grads.clip_grads(self.params, self.cfg.optim.clip_grad, grad_norm)
                lr = self._language_lr()
                self.optimizers.step()
        train_state.step += 1
        train_state.consumed_samples += self.cfg.train.global_batch_size
        train_state.consumed_tokens += num_tokens
        return StepMetrics(
            step=train_state.step,
            loss=loss,
            grad_norm=grad_norm,
            lr=self._language_lr() if skipped else lr,
            tokens=num_tokens,
            step_time_s=time.perf_counter() - start,
            skipped=skipped,
        )

    def _finalize_grads(self, reported: torch.Tensor) -> int:
        """Sum gradients and the [loss sum, token count] pair over DP, divide by the global token count."""
        grads.materialize_grads(self.params)
        grads.all_reduce_grads(self.params, self.dp_group)
        if self.dp_group is not None:
            dist.all_reduce(reported, group=self.dp_group)
        num_tokens = int(reported[1].item())
        grads.scale_grads(self.params, 1.0 / max(num_tokens, 1))
        return num_tokens

    def _language_lr(self) -> float:
        lrs = self.optimizers.lrs()
        return lrs.get("language", next(iter(lrs.values()), 0.0))

    def train(self) -> list[StepMetrics]:
        """Run the configured number of steps; rank 0 writes metrics.jsonl, shows progress and a summary."""
        log = None
        if self.ctx.is_main:
            log = MetricsLog(
                Path(self.cfg.run_dir),
                total_steps=self.cfg.train.steps,
                start_step=self.state.train_state.step,
                progress=self.cfg.train.progress,
            )
        history = []
        try:
            while self.state.train_state.step < self.cfg.train.steps:
                metrics = self.train_step()
                history.append(metrics)
                if log is not None:
                    log.log(metrics)
        finally:
            if log is not None:
                log.close()
        if log is not None:
            print(log.summary())
            print("time per phase:\n" + self.state.timers.report())
        return history
