"""The trainer: one optimizer step over the global batch, for any layout.

A step: this rank's engine runs every microbatch forward and backward (backward of the *sum* of per-token
losses); each module sums its gradients over its own data-parallel group; the global count of loss tokens is
summed over all ranks, and every module divides by that same number, so the result is the gradient of the global
per-token mean whatever the layout or microbatching. Then one gradient norm over every module and rank, clipping,
and one update per module; a step with a non-finite norm is skipped on every rank alike.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mimo.config import MimoConfig
from mimo.data import MicrobatchLoader, build_dataset
from mimo.distributed import DistributedContext
from mimo.model.configs import LANGUAGE_MODULE
from mimo.parallel.groups import build_module_groups
from mimo.training import grads
from mimo.training.engines import FusedEngine, PipelineEngine
from mimo.training.metrics import MetricsLog, StepMetrics
from mimo.training.mimo_step import forward_step, prepare_forward_step_func
from mimo.training.optim import ModuleOptimizers, apply_freezing, lr_factor, trainable_parameters
from mimo.training.run_plan import RunPlan
from mimo.training.state import GlobalState
from mimo.training.timers import Timers

logger = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: MimoConfig, ctx: DistributedContext, plan: RunPlan):
        self.cfg, self.ctx, self.plan = cfg, ctx, plan
        self.state = GlobalState(cfg=cfg, timers=Timers(synchronize=ctx.synchronize))
        step_func = prepare_forward_step_func(forward_step, self.state)
        engine_type = FusedEngine if plan.is_fused else PipelineEngine
        self.engine = engine_type(cfg, plan, rank=ctx.rank, device=ctx.device, forward_step=step_func,
                                  timers=self.state.timers)
        self.model = self.engine.model
        self.groups = build_module_groups(plan.layouts, ctx.rank)
        apply_freezing(self.model, [name for name in cfg.optim.freeze if name.split(".")[0] in self.engine.modules])
        self.params_by_module = trainable_parameters(self.model, self.engine.modules)
        self.params = [p for params in self.params_by_module.values() for p in params]
        self.optimizers = ModuleOptimizers(self.params_by_module, cfg.optim, total_steps=cfg.train.steps)
        self.loader = self._build_loader()

    def _build_loader(self) -> MicrobatchLoader | None:
        options = self.engine.loader_options()
        if options is None:
            return None
        module = self.engine.modules[-1]
        return MicrobatchLoader(
            build_dataset(self.cfg.data, self.cfg.model),
            global_batch_size=self.cfg.train.global_batch_size,
            num_microbatches=self.cfg.train.num_microbatches,
            dp_size=self.plan.layouts[module].dp,
            seed=self.cfg.data.seed,
            **options,
        )

    def train_step(self) -> StepMetrics:
        """One optimizer step over the global batch; the metrics are identical on every rank."""
        timers, train_state = self.state.timers, self.state.train_state
        start = time.perf_counter()
        self.optimizers.zero_grad()
        microbatches = self.loader.next_step() if self.loader is not None else None
        reported = self.engine.run(microbatches)
        with timers("grad-reduce"):
            num_tokens, loss_sum = self._finalize_grads(reported)
        with timers("optimizer"):
            grad_norm = self._global_grad_norm()
            loss = loss_sum / max(num_tokens, 1)
            lr = self._language_lr()
            skipped = not (math.isfinite(grad_norm) and math.isfinite(loss))
            if skipped:
                train_state.skipped_steps += 1
                logger.warning("step %d: non-finite loss or gradient norm, update skipped", train_state.step + 1)
            else:
                if self.cfg.optim.clip_grad > 0:
                    grads.clip_grads(self.params, self.cfg.optim.clip_grad, grad_norm)
                self.optimizers.step()
        train_state.step += 1
        train_state.consumed_samples += self.cfg.train.global_batch_size
        train_state.consumed_tokens += num_tokens
        return StepMetrics(step=train_state.step, loss=loss, grad_norm=grad_norm, lr=lr, tokens=num_tokens,
                           step_time_s=time.perf_counter() - start, skipped=skipped)

    def _finalize_grads(self, reported: torch.Tensor) -> tuple[int, float]:
        """Sum gradients over each module's DP group and the loss pair over the world; divide by the tokens."""
        for module, params in self.params_by_module.items():
            grads.materialize_grads(params)
            grads.all_reduce_grads(params, self.groups.dp_group(module))
        if dist.is_initialized():
            dist.all_reduce(reported)  # only loss-stage ranks hold non-zeros
        num_tokens = int(reported[1].item())
        grads.scale_grads(self.params, 1.0 / max(num_tokens, 1))
        return num_tokens, reported[0].item()

    def _global_grad_norm(self) -> float:
        """Norm over every module and rank; data-parallel replicas hold equal gradients, so only replica 0 counts."""
        local = [p for module, params in self.params_by_module.items()
                 if self.engine.role.dp_rank[module] == 0 for p in params]
        squared = grads.squared_norm(local)
        if dist.is_initialized():
            squared = squared.to(self.ctx.device)
            dist.all_reduce(squared)
        return math.sqrt(squared.item())

    def _language_lr(self) -> float:
        """The language model's scheduled learning rate for this step (known on every rank, frozen or not)."""
        base = self.cfg.optim.for_module(LANGUAGE_MODULE).lr
        return base * lr_factor(self.state.train_state.step, total_steps=self.cfg.train.steps,
                                schedule=self.cfg.optim.lr_schedule)

    @property
    def is_logging_rank(self) -> bool:
        return self.ctx.rank == self.plan.loss_rank

    def train(self) -> list[StepMetrics]:
        """Run the configured steps; the rank holding the loss writes metrics.jsonl, shows progress, sums up."""
        log = None
        if self.is_logging_rank:
            log = MetricsLog(Path(self.cfg.run_dir), total_steps=self.cfg.train.steps,
                             start_step=self.state.train_state.step, progress=self.cfg.train.progress)
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
            print("time per phase (this rank):\n" + self.state.timers.report())
        return history
