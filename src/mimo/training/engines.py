"""How one rank runs the forward and backward passes of one step, for the two kinds of layout.

- ``FusedEngine``: every rank holds every module whole (colocated layouts): each microbatch runs the whole
  ``MimoModel`` forward then backward, and hand-offs between modules are plain tensors in one autograd graph.
- ``PipelineEngine``: a rank holds one stage of one module (non-colocated layouts), or encoders and one stage of
  a language model pipelined over their ranks: it executes its action list from the multi-module 1F1B schedule,
  exchanging ``{module: tensor}`` dicts with its neighbours (and, between its own stages, on the rank).

Both run ``forward_step`` for every microbatch and return this rank's ``StageLosses``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from mimo.comm.local_handoffs import LocalHandoffs
from mimo.comm.multimodule import MultiModulePipelineCommunicator
from mimo.comm.routing import RoutingPlan
from mimo.config import MimoConfig
from mimo.data.format import MODALITY_INPUTS, text_keys_for_stage
from mimo.model import MimoModel
from mimo.model.compute import apply_compute
from mimo.model.configs import LANGUAGE_MODULE
from mimo.model.stage_group import StageGroup
from mimo.model.stages import LanguageStage, ModalityStage
from mimo.parallel.groups import ModuleGroups
from mimo.comm.colocated_rows import RowGather
from mimo.parallel.layout import colocated_rows, role_of
from mimo.pipeline.actions import Action
from mimo.pipeline.schedules import build_train_schedule
from mimo.pipeline.runner import StageLosses, StageRunner, run_stages
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

    def loader_options(self) -> list[dict[str, Any]]:
        """One loader: every field of this rank's data-parallel shard (all modules share one data-parallel size
        here), the step's microbatches loaded together before they run back to back (``load_ahead``)."""
        return [{"dp_rank": self.role.dp_rank[LANGUAGE_MODULE], "dp_size": self._dp_size, "modalities": None,
                 "include_text": True, "load_ahead": True}]

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
    """The stages this rank holds, driven by its action list; ``tracer`` times each training action.

    Usually one stage of one module. Where encoders share the ranks of a pipelined language model, an encoder
    (whole) and a language stage: each has its own runner and communicator, the rank's one action list runs
    them in turn, and rows that stay on the rank pass through a shared ``LocalHandoffs``.
    """

    def __init__(self, cfg: MimoConfig, plan: RunPlan, *, rank: int, device: torch.device,
                 forward_step: ForwardStep, timers: Callable[[str], Any], tracer: ActionTracer | None = None) -> None:
        self.role = role_of(rank, plan.layouts)
        self.modules = list(self.role.modules)
        self._layouts = plan.layouts
        self.stages: dict[str, nn.Module] = {}
        for module in self.modules:
            stage = _build_stage(cfg, module, self.role.stages[module], plan.layouts[module].pp).to(device)
            apply_compute(stage, {module: cfg.train.compute_for(module)})
            self.stages[module] = stage
        self.model: nn.Module = self.stages[self.modules[0]] if len(self.modules) == 1 else StageGroup(self.stages)
        routing = RoutingPlan(plan.layouts, plan.topology, cfg.train.micro_batch_size)
        # Encoders sharing a rank with a language stage take their gradients only at the end of the step: sends
        # must never wait for them (``comm.p2p`` bounds sends in flight by waiting for the oldest).
        in_flight = 2 if len(self.modules) == 1 else max(2, cfg.train.num_microbatches)

        def runners(backward_modules: frozenset[str], tracer: ActionTracer | None
                    ) -> tuple[dict[str, StageRunner], list[Action]]:
            local = LocalHandoffs()
            built = {}
            for module, stage in self.stages.items():
                communicator = MultiModulePipelineCommunicator(
                    rank=rank, module=module, stage=self.role.stages[module], routing=routing,
                    backward_modules=backward_modules, device=device, max_sends_in_flight=in_flight, local=local,
                )
                built[module] = StageRunner(
                    stage=stage, communicator=communicator, forward_step=forward_step, timers=timers,
                    grad_enabled=module in backward_modules, tracer=tracer,
                )
            schedule = build_train_schedule(
                plan.layouts, plan.topology, cfg.train.num_microbatches, backward_modules=backward_modules
            )
            return built, schedule[rank]

        self.runners, self.actions = runners(plan.backward_modules, tracer)
        # Validation: the same schedule without a backward (nothing needs gradients), no graph kept.
        self.eval_runners, self.eval_actions = runners(frozenset(), None)  # traced as the "validation" phase

    @property
    def runner(self) -> StageRunner:
        """The runner of this rank's one stage (a rank holding several has one per module in ``runners``)."""
        if len(self.runners) != 1:
            raise AttributeError(f"rank {self.role.rank} holds stages of {list(self.runners)}: use runners[module]")
        return next(iter(self.runners.values()))

    def use_groups(self, groups: ModuleGroups) -> None:
        """Send activations and gradients on their own point-to-point groups (created after the engine)."""
        for runner in (*self.runners.values(), *self.eval_runners.values()):
            communicator = runner.communicator
            communicator.activation_group, communicator.gradient_group = groups.activations, groups.gradients
            communicator.bridge_activation_group = groups.bridge_activations
            communicator.bridge_gradient_group = groups.bridge_gradients

    def counts_tokens(self, module: str) -> bool:
        """Whether this rank counts ``module``'s tokens (for FLOPs): on its first stage, tensor-parallel rank 0."""
        return self.role.stages[module] == 0 and self.role.tp_rank[module] == 0

    def shard(self, meshes: Mapping[str, DeviceMesh]) -> None:
        """FSDP2 over each stage whose module has ``dp_shard > 1``; call before collecting parameters."""
        for module, stage in self.stages.items():
            if module in meshes:
                shard_stage(stage, module, meshes[module])

    def loader_options(self) -> list[dict[str, Any]]:
        """What each stage reads, its module's shard: a language stage only the text fields its forward uses (the
        first tokens and positions, the last labels and loss mask), an encoder's first stage its modality's
        inputs, others nothing."""
        options = []
        for module, stage in self.stages.items():
            if not stage.needs_data:
                continue
            shard = {"dp_rank": self.role.dp_rank[module], "dp_size": self._layouts[module].dp_size}
            if module == LANGUAGE_MODULE:
                text = text_keys_for_stage(first=stage.is_first_stage, last=stage.is_loss_stage)
                options.append({**shard, "modalities": (), "include_text": text})
            else:
                options.append({**shard, "modalities": (module,), "include_text": False})
        return options

    def run(self, microbatches: Iterable[Any] | None) -> StageLosses:
        return self._run(self.runners, self.actions, microbatches)

    def evaluate(self, microbatches: Iterable[Any] | None) -> StageLosses:
        """Forward only, no graph: the loss of one global batch (validation)."""
        with torch.no_grad():
            return self._run(self.eval_runners, self.eval_actions, microbatches)

    def _run(self, runners: dict[str, StageRunner], actions: list[Action],
             microbatches: Iterable[Any] | None) -> StageLosses:
        if len(runners) == 1:
            (module,) = runners
            return run_stages(runners, actions, {module: microbatches})[module]
        # Each stage reads every microbatch of the step in its own order (the encoder's all first), and only its
        # own fields of it, which are all it moves to the device.
        batches = list(microbatches) if microbatches is not None else []
        data = {module: iter([_fields_of(module, batch) for batch in batches]) for module in runners}
        merged = StageLosses()
        for losses in run_stages(runners, actions, data).values():
            merged.reports.update(losses.reports)  # only the language model's loss stage reports any
        return merged


def _fields_of(module: str, batch: dict[str, Any]) -> dict[str, Any]:
    """The fields of a merged microbatch (``MergedLoader``) that ``module``'s stage reads."""
    if module == LANGUAGE_MODULE:
        return {key: value for key, value in batch.items() if key != MODALITY_INPUTS}
    inputs = batch.get(MODALITY_INPUTS, {})
    return {MODALITY_INPUTS: {module: inputs[module]}} if module in inputs else {}


def _build_stage(cfg: MimoConfig, module: str, stage: int, num_stages: int) -> nn.Module:
    if module == LANGUAGE_MODULE:
        layers = layer_ranges(cfg, module, num_stages)[stage]
        return LanguageStage(cfg.model, stage=stage, num_stages=num_stages, layers=layers, seed=cfg.train.seed)
    per_stage = cfg.layout[module].layers_per_stage if module in cfg.layout else None
    return ModalityStage(cfg.model, module, stage=stage, num_stages=num_stages, layers_per_stage=per_stage,
                         seed=cfg.train.seed)
