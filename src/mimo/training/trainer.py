"""The trainer: one optimizer step over the global batch, for any layout.

A step: this rank's engine runs every microbatch forward and backward (backward of the *sum* of per-token
losses); each module sums its gradients over its own data-parallel group; the global count of loss tokens is
summed over all ranks, and every module divides by that same number, so the result is the gradient of the global
per-token mean whatever the layout or microbatching. Then one gradient norm over every module and rank, clipping,
and one update per module; a step with a non-finite norm is skipped on every rank alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from datetime import timedelta
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch
import torch.distributed as dist

from mimo.config import MimoConfig
from mimo.data import MicrobatchLoader
from mimo.data.merged_loader import MergedLoader
from mimo.distributed import DistributedContext, raise_if_any_rank_failed
from mimo.errors import NonFiniteError
from mimo.export import load_consolidated
from mimo.model.configs import LANGUAGE_MODULE
from mimo.model.tied import tied_copies
from mimo.parallel.groups import build_module_groups, build_module_meshes
from mimo.training.data_setup import build_loader, build_run_data
from mimo.pipeline.runner import StageLosses
from mimo.training import grads
from mimo.checkpoint.manifest import path_sha256
from mimo.training.checkpointing import Checkpointer, frozen_hf_fingerprints
from mimo.training.collective_failures import CollectiveFailures
from mimo.training.engines import FusedEngine, PipelineEngine
from mimo.data.tokens import modality_token_count
from mimo.training.flops import flops_summary, measured_peak, module_flops
from mimo.training.metrics import MetricsLog, StepMetrics
from mimo.training.tensorboard import TensorBoardLog
from mimo.training.mimo_step import forward_step, prepare_forward_step_func
from mimo.training.optim import ModuleOptimizers, apply_freezing, lr_factor, parameters_of, trainable_parameters
from mimo.training.preemption import PreemptionHandler
from mimo.training.run_plan import RunPlan
from mimo.training.sharding import counts_once, reduced_by_fsdp
from mimo.training.state import GlobalState
from mimo.training.step_totals import StepTotals
from mimo.training.timers import Timers
from mimo.tracing.session import RunTrace

logger = logging.getLogger(__name__)


def _no_sync() -> None:
    """Timers read the host clock only (``train.profile: false``)."""


@dataclass(frozen=True)
class StepDetails:
    """What the last step measured beyond ``StepMetrics`` (for TensorBoard and summaries)."""

    module_norms: dict[str, float]
    waited_s: list[float]
    module_flops: dict[str, float]


class Trainer:
    def __init__(self, cfg: MimoConfig, ctx: DistributedContext, plan: RunPlan, *, init_from: str | None = None):
        self.cfg, self.ctx, self.plan = cfg, ctx, plan
        self.trace = RunTrace(cfg, plan, rank=ctx.rank, synchronize=ctx.synchronize) if cfg.train.trace else None
        # Phase timers wait for the device only under ``train.profile``: elsewhere a sync per phase would stall it.
        sync = ctx.synchronize if cfg.train.profile else _no_sync
        timers = self.trace.timers(sync) if self.trace else Timers(synchronize=sync)
        self.state = GlobalState(cfg=cfg, timers=timers)
        self.preemption: PreemptionHandler | None = None
        self.stop_requested = False
        # Collective (one group per line of each mesh dimension), so before any rank can fail alone below.
        self.meshes = build_module_meshes(plan.layouts, ctx.rank, device_type=ctx.device.type,
                                          timeout=timedelta(seconds=cfg.train.collective_timeout_s))
        error = None
        try:  # Local set-up: a mistake only some ranks see (their stage's weights, their data) stops them all.
            self._build_local(init_from)
        except ValueError as caught:
            error = caught
        raise_if_any_rank_failed(error)
        # Collective (conversations: one rank decides which records train), so after every rank built its part.
        self.data = build_run_data(cfg, plan, ctx.rank)
        error = None
        try:
            parts = self.engine.loader_options()
            self.loader = build_loader(cfg, self.data.train, parts)
            self.validation_loader = build_loader(cfg, self.data.validation, parts)
        except ValueError as caught:
            error = caught
        raise_if_any_rank_failed(error)
        tied = getattr(cfg.model.language, "tie_word_embeddings", False)
        self.groups = build_module_groups(
            plan.layouts, ctx.rank, timeout=timedelta(seconds=self.cfg.train.collective_timeout_s),
            tied_module=LANGUAGE_MODULE if tied else None,
        )
        self.engine.use_groups(self.groups)
        self._dp_reductions = self._dp_reduction_plan()

    def _build_local(self, init_from: str | None) -> None:
        cfg, plan, ctx = self.cfg, self.plan, self.ctx
        step_func = prepare_forward_step_func(forward_step, self.state)
        engine_type = FusedEngine if plan.is_fused else PipelineEngine
        self.engine = engine_type(cfg, plan, rank=ctx.rank, device=ctx.device, forward_step=step_func,
                                  timers=self.state.timers, tracer=self.trace.recorder.action if self.trace else None)
        self.model = self.engine.model
        if init_from is not None:
            load_consolidated(self.model, init_from)
        apply_freezing(self.model, [name for name in cfg.optim.freeze if name.split(".")[0] in self.engine.modules])
        # Tensor parallelism and FSDP2 replace parameters by DTensors: after loading and freezing, before the
        # optimizers.
        self.engine.shard(self.meshes)
        self.failures = CollectiveFailures(ctx.rank, self.engine.role.stages, cfg.train.collective_timeout_s,
                                           self.meshes)
        self.params_by_module = trainable_parameters(self.model, self.engine.modules)
        self.params = [p for params in self.params_by_module.values() for p in params]
        copies = tied_copies(self.model)
        named = dict(self.model.named_parameters())
        self.tied_params = [named[name] for name in copies if named[name].requires_grad]
        # A tied copy on the last stage repeats the first stage's tensor: the norm counts the tensor once.
        repeated = {id(named[name]) for name, canonical in copies.items() if name != canonical}
        self.norm_params_by_module = {
            module: [p for p in params if id(p) not in repeated] for module, params in self.params_by_module.items()
        }
        self.optimizers = ModuleOptimizers(self.params_by_module, cfg.optim, total_steps=cfg.train.steps)
        self._norm_params_cache: dict[str, list[Any]] = {}
        # Replica 0 of each stage reports its stage's parameters; summed over the world: each whole module's.
        self._local_parameters = {
            module: sum(p.numel() for p in parameters_of(self.model, module) if id(p) not in repeated)
            for module in self.engine.modules if self._counts_norm(module)
        }
        self._step_tokens: dict[str, int] = dict.fromkeys(cfg.model.module_names, 0)
        self.loader: MicrobatchLoader | MergedLoader | None = None
        init_source = {
            "seed": cfg.train.seed,
            "init_from": str(Path(init_from).resolve()) if init_from else None,
            "init_from_sha256": path_sha256(Path(init_from)) if init_from else None,
            "hf_sha256": frozen_hf_fingerprints(cfg),
        }
        self.checkpointer = Checkpointer(self, cfg.checkpoint_dir, keep=cfg.checkpoint.keep,
                                         verify_checksums=cfg.checkpoint.verify == "checksums", init_source=init_source)

    def train_step(self) -> StepMetrics:
        """One optimizer step over the global batch; the metrics are identical on every rank."""
        timers, train_state = self.state.timers, self.state.train_state
        start = time.perf_counter()
        waited_before = timers.totals().get("comm-wait", 0.0)
        self.optimizers.zero_grad()
        microbatches = self._counting(self.loader.next_step()) if self.loader is not None else None
        with self.failures.inside_meshes("the step's forward and backward"):
            losses = self.engine.run(microbatches)
        with timers("grad-reduce"):
            totals = self._reduce_step(losses, timers.totals().get("comm-wait", 0.0) - waited_before)
        loss_sum, num_tokens = totals.loss_sum, totals.num_tokens
        module_norms = {m: math.sqrt(max(v, 0.0)) / max(num_tokens, 1) if math.isfinite(v) else math.inf
                        for m, v in zip(self.all_modules, totals.squared_norms)}
        grad_norm = math.sqrt(sum(n * n for n in module_norms.values()))
        loss = loss_sum / max(num_tokens, 1)
        lr = self._language_lr()
        self.stop_requested = totals.stop_requested
        problem = self._nonfinite_problem(loss, module_norms, totals.first_nonfinite_microbatch)
        with timers("optimizer"):
            if problem:
                self._handle_nonfinite(problem)
            else:
                # The token mean and the clip in one pass over the gradients (grad_norm is already the mean's).
                factor = 1.0 / max(num_tokens, 1)
                if self.cfg.optim.clip_grad > 0:
                    factor *= grads.clip_coefficient(self.cfg.optim.clip_grad, grad_norm)
                grads.scale_grads(self.params, factor)
                self.optimizers.step()
        train_state.step += 1
        train_state.consumed_samples += self.cfg.train.global_batch_size
        train_state.consumed_tokens += num_tokens
        self.last_step = StepDetails(module_norms=module_norms, waited_s=totals.waited_s,
                                     module_flops=self._module_flops(totals))
        return StepMetrics(step=train_state.step, loss=loss, grad_norm=grad_norm, lr=lr, tokens=num_tokens,
                           step_time_s=time.perf_counter() - start, skipped=bool(problem))

    def _counting(self, microbatches: Iterator[Any]) -> Iterator[Any]:
        """The microbatches, counting the tokens each module this rank feeds will process (for FLOPs)."""
        for batch in microbatches:
            for module in self._feeds:
                if module == LANGUAGE_MODULE:
                    self._step_tokens[module] += int(batch["input_ids"].numel())
                else:
                    inputs = batch["modality_inputs"][module]
                    modality = self.cfg.model.modalities[module]
                    self._step_tokens[module] += modality_token_count(module, modality, inputs)
            yield batch

    @property
    def _feeds(self) -> list[str]:
        """Modules whose inputs this rank reads and counts the tokens of (once over the world: see the engines'
        ``counts_tokens``)."""
        return [module for module in self.engine.role.stages if self.engine.counts_tokens(module)]

    @property
    def all_modules(self) -> list[str]:
        return list(self.cfg.model.module_names)

    def _reduce_step(self, losses: StageLosses, waited_s: float) -> StepTotals:
        """Sum gradients over each module's DP group (and the tied copies between the first and last stage); then
        one SUM over the world of every scalar the step needs: ``[loss, tokens, norm^2 per module (replica 0 of
        each stage contributes), stop requested, non-finite microbatches (one slot each), seconds waited per
        rank]``, copied to the host once."""
        grads.materialize_grads(self.params)
        if self.groups.tied is not None and self.tied_params:
            with self.failures.around("all-reduce of the tied embedding's gradients between the first and last stage"):
                grads.all_reduce_grads(self.tied_params, self.groups.tied)
        for replicated, group, what in self._dp_reductions:
            with self.failures.around(what):
                grads.all_reduce_grads(replicated, group)
        device, modules = self.ctx.device, self.all_modules
        norms = grads.squared_norms([self._norm_params(m) for m in modules], device)  # one fused call for all
        num_microbatches, world = self.cfg.train.num_microbatches, self.ctx.world_size
        # The host-side scalars as one list, one tensor: item-by-item tensor writes cost microseconds each.
        stop = [float(self.preemption.requested if self.preemption else False)]
        waits = [waited_s if rank == self.ctx.rank else 0.0 for rank in range(world)]
        counts = [float(c.get(m, 0)) for c in (self._step_tokens, self._local_parameters) for m in modules]
        self._step_tokens = dict.fromkeys(modules, 0)
        # One host-to-device copy for the host-side scalars (each copy waits for the device's queued work).
        host = torch.tensor(stop + waits + counts, dtype=torch.float64).to(device)
        loss_totals = losses.total(device).double()
        if not self.engine.role.reports_losses:
            loss_totals = torch.zeros_like(loss_totals)  # its tensor-parallel rank 0 reports the same losses
        totals = torch.cat([loss_totals, norms.double(), host[:1], losses.nonfinite(num_microbatches, device),
                            host[1:]])
        if dist.is_initialized():
            with self.failures.around(f"all-reduce of the step's loss, token count and gradient norms over ranks "
                               f"0..{world - 1}"):
                dist.all_reduce(totals)
        # To Python floats once: StepTotals then reads list items, not tensor elements (microseconds each).
        return StepTotals(totals.cpu().tolist(), num_modules=len(modules), num_microbatches=num_microbatches)

    def _dp_reduction_plan(self) -> list[tuple[list[Any], dist.ProcessGroup | None, str]]:
        """Per module: the gradients the trainer sums over its data-parallel group (FSDP summed the sharded ones in
        the backward: reduce-scatter, and all-reduce for HSDP), the group, and what a failure there says; fixed once
        the groups exist (per step, working it out cost more than a no-op reduction)."""
        role, plan = self.engine.role, []
        for module, params in self.params_by_module.items():
            ranks = self.plan.layouts[module].dp_ranks(role.stages[module], role.tp_rank[module])
            replicated = [p for p in params if not reduced_by_fsdp(p)]
            plan.append((replicated, self.groups.dp_group(module),
                         f"module {module!r}: all-reduce of gradients over its data-parallel ranks {ranks}"))
        return plan

    def _module_flops(self, totals: StepTotals) -> dict[str, float]:
        plan = self.plan
        return {module: module_flops(parameters, tokens, runs_backward=module in plan.backward_modules,
                                     trains=module in plan.trainable_modules)
                for module, tokens, parameters in zip(self.all_modules, totals.module_tokens, totals.module_parameters)}

    def _counts_norm(self, module: str) -> bool:
        """True on the one rank of each stage of ``module`` that reports its whole parameters' count."""
        role = self.engine.role
        return role.holds(module) and role.dp_rank[module] == 0 and role.tp_rank[module] == 0

    def _norm_params(self, module: str) -> list[Any]:
        """The parameters whose gradients this rank adds to ``module``'s squared norm: each part of a split
        gradient once, a copied one on one rank only (``sharding.counts_once``)."""
        cached = self._norm_params_cache.get(module)
        if cached is not None:
            return cached
        params = self.norm_params_by_module.get(module, [])
        if params:
            layout, role = self.plan.layouts[module], self.engine.role
            replica, shard = layout.replica_and_shard(role.dp_rank[module])
            coordinates = {"dp": replica, "dp_shard": shard, "tp": role.tp_rank[module]}
            params = [p for p in params if counts_once(p, coordinates)]
        self._norm_params_cache[module] = params  # fixed once the parameters are built (and split, and sharded)
        return params

    def _nonfinite_problem(self, loss: float, module_norms: dict[str, float], bad_microbatch: int) -> str:
        step = self.state.train_state.step + 1
        if not math.isfinite(loss):
            where = f" (first at microbatch {bad_microbatch})" if bad_microbatch >= 0 else ""
            return f"step {step}: non-finite loss {loss} in module 'language'{where}"
        bad = [m for m, n in module_norms.items() if not math.isfinite(n)]
        return f"step {step}: non-finite gradient in module(s) {bad}" if bad else ""

    def _handle_nonfinite(self, problem: str) -> None:
        if self.cfg.train.on_nonfinite == "stop":
            raise NonFiniteError(f"{problem}; stopping (train.on_nonfinite=stop)")
        self.state.train_state.skipped_steps += 1
        logger.warning("%s; update skipped on every rank (train.on_nonfinite=skip)", problem)

    def _language_lr(self) -> float:
        """The language model's scheduled learning rate for this step (known on every rank, frozen or not)."""
        base = self.cfg.optim.for_module(LANGUAGE_MODULE).lr
        optimizer_steps = self.state.train_state.step - self.state.train_state.skipped_steps
        return base * lr_factor(optimizer_steps, total_steps=self.cfg.train.steps, schedule=self.cfg.optim.lr_schedule)

    def _module_lrs(self) -> dict[str, float]:
        """Every module's scheduled learning rate for the step just taken (known on every rank)."""
        optimizer_steps = self.state.train_state.step - self.state.train_state.skipped_steps - 1
        factor = lr_factor(max(optimizer_steps, 0), total_steps=self.cfg.train.steps,
                           schedule=self.cfg.optim.lr_schedule)
        return {module: self.cfg.optim.for_module(module).lr * factor for module in self.all_modules}

    def _flops_summary(self, flops: dict[str, float], history: list[StepMetrics]) -> str:
        if not history or not flops:
            return "FLOPs: no steps"
        peak, source = self.cfg.train.peak_flops, "train.peak_flops"
        if peak is None and self.ctx.device.type == "cpu":
            precisions = {module: str(self.cfg.train.compute_for(module).precision) for module in flops}
            peak, source = measured_peak(flops, precisions)
        return flops_summary(flops, steps=len(history), seconds=sum(m.step_time_s for m in history),
                             world_size=self.ctx.world_size, peak=peak, source=source)

    def _save(self, log: MetricsLog | None) -> int:
        step = self.state.train_state.step
        with self.state.timers("checkpoint"), self.failures.around(f"saving the checkpoint of step {step}"):
            folder = self.checkpointer.save()
        if log is not None:
            log.write(f"checkpoint: {folder}")
        return self.state.train_state.step

    def resume(self, spec: str) -> None:
        """Continue from a checkpoint ("latest", a checkpoint folder, or a checkpoint root)."""
        folder = self.checkpointer.load(spec)
        if self.is_logging_rank:
            print(f"resumed from {folder} at step {self.state.train_state.step}")

    def _validation_due(self, step: int) -> bool:
        validation = self.cfg.data.validation
        if validation is None:
            return False
        last = step == self.cfg.train.steps or self.stop_requested
        return last or (validation.every_steps > 0 and step % validation.every_steps == 0)

    def validate(self) -> float:
        """Mean per-token loss over the held-out samples (whole global batches; the same on every rank)."""
        validation, cfg = self.data.validation, self.cfg.data.validation
        assert validation is not None and cfg is not None
        samples = min(len(validation), cfg.max_samples or len(validation))  # type: ignore[arg-type]
        batches = max(1, samples // self.cfg.train.global_batch_size)
        if self.validation_loader is not None:
            self.validation_loader.load_state_dict({"consumed_samples": 0})
        totals = torch.zeros(2, dtype=torch.float32, device=self.ctx.device)
        with self.state.timers("validation"):
            for _ in range(batches):
                microbatches = self.validation_loader.next_step() if self.validation_loader is not None else None
                with self.failures.inside_meshes("the validation forward"):
                    losses = self.engine.evaluate(microbatches)
                if self.engine.role.reports_losses:  # the rest of its tensor-parallel group repeats it
                    totals += losses.total(self.ctx.device)
            if dist.is_initialized():
                with self.failures.around("all-reduce of the validation loss"):
                    dist.all_reduce(totals)
        loss_sum, tokens = totals.cpu().tolist()
        return loss_sum / max(tokens, 1.0)

    @property
    def is_logging_rank(self) -> bool:
        return self.ctx.rank == self.plan.loss_rank

    def train(self) -> list[StepMetrics]:
        """Run the configured steps; the rank holding the loss writes metrics.jsonl, shows progress, sums up."""
        log = board = None
        if self.is_logging_rank:
            log = MetricsLog(Path(self.cfg.run_dir), total_steps=self.cfg.train.steps,
                             start_step=self.state.train_state.step, progress=self.cfg.train.progress)
            board = TensorBoardLog(Path(self.cfg.run_dir)) if self.cfg.train.tensorboard else None
        history = []
        flops: dict[str, float] = {}
        self.preemption = PreemptionHandler()
        # A resumed run starts at a step that already has a checkpoint.
        saved_step = self.state.train_state.step if self.state.train_state.step > 0 else -1
        try:
            if log is not None and self.data.summary:
                log.write(self.data.summary)
            while self.state.train_state.step < self.cfg.train.steps and not self.stop_requested:
                with self.trace.step(self.state.train_state.step + 1) if self.trace else nullcontext():
                    metrics = self.train_step()
                if self._validation_due(metrics.step):
                    metrics = dataclasses.replace(metrics, val_loss=self.validate())
                history.append(metrics)
                for module, value in self.last_step.module_flops.items():
                    flops[module] = flops.get(module, 0.0) + value
                if log is not None:
                    log.log(metrics)
                if board is not None:
                    board.log(metrics, module_norms=self.last_step.module_norms, lrs=self._module_lrs(),
                              waited_s=self.last_step.waited_s)
                every = self.cfg.checkpoint.every_steps
                if every and metrics.step % every == 0:
                    saved_step = self._save(log)
            ending = self.cfg.checkpoint.on_preemption if self.stop_requested else self.cfg.checkpoint.at_end
            if ending and saved_step != self.state.train_state.step:
                self._save(log)
            if self.stop_requested and log is not None:
                print(f"stopped after step {self.state.train_state.step} on SIGTERM")
        finally:
            self.preemption.close()
            if log is not None:
                log.close()
            if board is not None:
                board.close()
            if self.trace:  # this rank's part, also after a failure (mimo timeline merges the parts)
                self.trace.write_part(getattr(self.engine, "actions", None),
                                      ", ".join(f"{m}.{s}" for m, s in self.engine.role.stages.items()))
        trace_report = self.trace.finish(logging_rank=self.plan.loss_rank) if self.trace else None
        if log is not None:
            print(log.summary())
            print(self._flops_summary(flops, history))
            print("time per phase (this rank):\n" + self.state.timers.report())
            if trace_report:
                print(trace_report)
        return history
