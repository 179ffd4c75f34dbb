"""How one rank runs the forward and backward passes of one step, for the two kinds of layout.

- ``FusedEngine``: every rank holds every module whole (colocated layouts): each microbatch runs the whole
  ``MimoModel`` forward then backward, and hand-offs between modules are plain tensors in one autograd graph.
- ``PipelineEngine``: a rank holds one stage of one module (non-colocated layouts): it executes its action list
  from the multi-module 1F1B schedule, exchanging ``{module: tensor}`` dicts with its neighbours.

Both run ``forward_step`` for every microbatch and return this rank's ``StageLosses``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from mimo.comm.multimodule import MultiModulePipelineCommunicator
from mimo.comm.routing import RoutingPlan
from mimo.config import MimoConfig
from mimo.data.format import text_keys_for_stage
from mimo.model import MimoModel
from mimo.model.compute import apply_compute
from mimo.model.configs import LANGUAGE_MODULE
from mimo.model.stages import LanguageStage, ModalityStage
from mimo.parallel.groups import ModuleGroups
from mimo.comm.colocated_rows import RowGather
from mimo.parallel.layout import colocated_rows, role_of
from mimo.pipeline.actions import Action
from mimo.pipeline.schedules import build_train_schedule
from mimo.pipeline.runner import StageLosses, StageRunner
from mimo.training.run_plan import RunPlan, layer_ranges
from mimo.training.sharding import shard_fused_model, shard_stage

ForwardStep = Callable[[Iterable[Any] | None, Any], tuple[Any, Any]]
ActionTracer = Callable[[Action], AbstractContextManager[Any]]


class FusedEngine:
    """The whole model on this rank, data parallel over all ranks (traced through its timers' phases)."""

    def __init__(self, cfg: MimoConfig, plan: RunPlan, *, rank: int, device: torch.device,
                 forward_step: ForwardStep, timers: Callable[[str], Any], tracer: ActionTracer | None = None) -> None:
        self.model: nn.Module = MimoModel(cfg.model, seed=cfg.train.seed).to(device)
        self.modules = list(cfg.model.module_names)
        apply_compute(self.model, {module: cfg.train.compute_for(module) for module in self.modules})
        self.role = role_of(rank, plan.layouts)
        self._layouts = plan.layouts
        self._dp_size = plan.layouts[LANGUAGE_MODULE].dp_size
        self.num_microbatches = cfg.train.num_microbatches
        self._forward_step, self._timers = forward_step, timers

    def use_groups(self, groups: ModuleGroups) -> None:
        """Attach the row gathers of encoders more data-parallel than the language model (``colocated_rows``);
        otherwise the whole model is local and only gradient all-reduces use groups."""
        language = self._layouts[LANGUAGE_MODULE]
        for module, group in groups.rows.items():
            _, sources, part = colocated_rows(self.role.rank, self._layouts[module], language)
            self.model.row_gathers[module] = RowGather(module, group, sources, part)

    def counts_tokens(self, module: str) -> bool:
        """Whether this rank counts ``module``'s tokens (for FLOPs): once per language replica, which every rank
        of it reads whole (a module split by tp, or gathering its rows, repeats the others' tokens)."""
        return self.role.tp_rank[LANGUAGE_MODULE] == 0

    def shard(self, meshes: Mapping[str, DeviceMesh]) -> None:
        """FSDP2 over the modules with ``dp_shard > 1`` (a mesh each); call before collecting parameters."""
        shard_fused_model(self.model, meshes)

    def loader_options(self) -> dict[str, Any] | None:
        """Every field of this rank's data-parallel shard (all modules share one data-parallel size here), the
        step's microbatches loaded together before they run back to back (``MicrobatchLoader.load_ahead``)."""
        return {"dp_rank": self.role.dp_rank[LANGUAGE_MODULE], "dp_size": self._dp_size, "modalities": None,
                "include_text": True, "load_ahead": True}

    def evaluate(self, microbatches: Iterable[Any] | None) -> StageLosses:
        """Forward only, no graph: the loss of one global batch (validation)."""
        losses = StageLosses()
        with torch.no_grad():
            for microbatch in range(self.num_microbatches):
                output, loss_fn = self._forward_step(microbatches, self.model)
                losses.add(microbatch, loss_fn(output)[2]["lm loss"])
        return losses

    def run(self, microbatches: Iterable[Any] | None) -> StageLosses:
        losses = StageLosses()
        for microbatch in range(self.num_microbatches):
            output, loss_fn = self._forward_step(microbatches, self.model)
            total_loss, _, report = loss_fn(output)
            losses.add(microbatch, report["lm loss"])
            with self._timers("backward"):
                if total_loss.requires_grad:
                    total_loss.backward()
        return losses


class PipelineEngine:
    """One stage of one module on this rank, driven by its action list; ``tracer`` times each training action."""

    def __init__(self, cfg: MimoConfig, plan: RunPlan, *, rank: int, device: torch.device,
                 forward_step: ForwardStep, timers: Callable[[str], Any], tracer: ActionTracer | None = None) -> None:
        self.role = role_of(rank, plan.layouts)
        (self.module,) = self.role.modules
        stage, num_stages = self.role.stages[self.module], plan.layouts[self.module].pp
        self.modules = [self.module]
        self._dp_size = plan.layouts[self.module].dp_size
        self.model = _build_stage(cfg, self.module, stage, num_stages).to(device)
        apply_compute(self.model, {self.module: cfg.train.compute_for(self.module)})
        routing = RoutingPlan(plan.layouts, plan.topology, cfg.train.micro_batch_size)

        def runner(backward_modules: frozenset[str], tracer: ActionTracer | None) -> tuple[StageRunner, list[Any]]:
            communicator = MultiModulePipelineCommunicator(
                rank=rank, module=self.module, stage=stage, routing=routing, backward_modules=backward_modules,
                device=device,
            )
            schedule = build_train_schedule(
                plan.layouts, plan.topology, cfg.train.num_microbatches, backward_modules=backward_modules
            )
            return StageRunner(
                stage=self.model, communicator=communicator, forward_step=forward_step, timers=timers,
                grad_enabled=self.module in backward_modules, tracer=tracer,
            ), schedule[rank]

        self.runner, self.actions = runner(plan.backward_modules, tracer)
        self.communicator = self.runner.communicator
        # Validation: the same schedule without a backward (nothing needs gradients), no graph kept.
        self.eval_runner, self.eval_actions = runner(frozenset(), None)  # traced as the "validation" phase

    def use_groups(self, groups: ModuleGroups) -> None:
        """Send activations and gradients on their own point-to-point groups (created after the engine)."""
        for communicator in (self.communicator, self.eval_runner.communicator):
            communicator.activation_group = groups.activations
            communicator.gradient_group = groups.gradients

    def counts_tokens(self, module: str) -> bool:
        """Whether this rank counts ``module``'s tokens (for FLOPs): on its first stage, tensor-parallel rank 0."""
        return self.role.stages[module] == 0 and self.role.tp_rank[module] == 0

    def shard(self, meshes: Mapping[str, DeviceMesh]) -> None:
        """FSDP2 over this stage when its module has ``dp_shard > 1``; call before collecting parameters."""
        if self.module in meshes:
            shard_stage(self.model, self.module, meshes[self.module])

    def loader_options(self) -> dict[str, Any] | None:
        """What this stage reads: a language stage only the text fields its forward uses (the first tokens and
        positions, the last labels and loss mask), an encoder's first stage its modality's inputs, others nothing."""
        if not self.model.needs_data:
            return None
        shard = {"dp_rank": self.role.dp_rank[self.module], "dp_size": self._dp_size}
        if self.module == LANGUAGE_MODULE:
            text = text_keys_for_stage(first=self.model.is_first_stage, last=self.model.is_loss_stage)
            return {**shard, "modalities": (), "include_text": text}
        return {**shard, "modalities": (self.module,), "include_text": False}

    def run(self, microbatches: Iterable[Any] | None) -> StageLosses:
        return self.runner.run(self.actions, microbatches)

    def evaluate(self, microbatches: Iterable[Any] | None) -> StageLosses:
        """Forward only, no graph: the loss of one global batch (validation)."""
        with torch.no_grad():
            return self.eval_runner.run(self.eval_actions, microbatches)


def _build_stage(cfg: MimoConfig, module: str, stage: int, num_stages: int) -> nn.Module:
    if module == LANGUAGE_MODULE:
        layers = layer_ranges(cfg, module, num_stages)[stage]
        return LanguageStage(cfg.model, stage=stage, num_stages=num_stages, layers=layers, seed=cfg.train.seed)
    per_stage = cfg.layout[module].layers_per_stage if module in cfg.layout else None
    return ModalityStage(cfg.model, module, stage=stage, num_stages=num_stages, layers_per_stage=per_stage,
                         seed=cfg.train.seed)
