"""Everything decided before any process group exists: layouts, topology, placement, who runs a backward.

Pure: validating here means a bad layout fails on every rank with the same ``ValueError``, before a single
collective could hang.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimo.comm.routing import RoutingPlan
from mimo.config import MimoConfig
from mimo.model.configs import LANGUAGE_MODULE
from mimo.model.modality_stage import split_encoder_layers
from mimo.parallel.layout import ModuleLayout, Placement, validate_layouts
from mimo.parallel.stage_split import split_layers
from mimo.parallel.topology import Topology, default_topology
from mimo.pipeline.schedules import modules_needing_backward


@dataclass(frozen=True)
class RunPlan:
    layouts: dict[str, ModuleLayout]
    topology: Topology
    placement: Placement
    backward_modules: frozenset[str]
    """Modules that run a backward: the trainable ones and everything downstream of them."""
    trainable_modules: frozenset[str]
    """Modules with something to train (not frozen whole): the ones whose backward computes weight gradients."""

    @property
    def is_fused(self) -> bool:
        """Every rank holds every module whole: the model runs as one piece, data parallel over all ranks."""
        spans = {layout.ranks for layout in self.layouts.values()}
        return len(spans) == 1 and all(layout.pp == 1 for layout in self.layouts.values())

    @property
    def loss_rank(self) -> int:
        """The rank that logs metrics: replica 0 of the language model's last stage."""
        language = self.layouts[LANGUAGE_MODULE]
        return language.rank_of(0, language.pp - 1)


def plan_run(cfg: MimoConfig, world_size: int) -> RunPlan:
    """Validate the layout section against ``world_size`` and derive the plan; ValueError on any mistake."""
    modules = cfg.model.module_names
    if cfg.layout:
        layouts = {
            name: ModuleLayout(dp=entry.dp, pp=entry.pp, tp=entry.tp, rank_offset=entry.rank_offset,
                               dp_shard=entry.dp_shard)
            for name, entry in cfg.layout.items()
        }
    else:
        layouts = {name: ModuleLayout(dp=world_size) for name in modules}
    placement = validate_layouts(
        layouts, world_size=world_size, micro_batch_size=cfg.train.micro_batch_size, module_names=modules
    )
    topology = _topology(cfg, modules)
    for name, layout in layouts.items():
        _check_stage_split(cfg, name, layout)
    if placement is Placement.COLOCATED and layouts[LANGUAGE_MODULE].pp > 1:
        _check_channels(RoutingPlan(layouts, topology, cfg.train.micro_batch_size))
    trainable = [name for name in modules if not _fully_frozen(name, cfg.optim.freeze)]
    return RunPlan(
        layouts=layouts,
        topology=topology,
        placement=placement,
        backward_modules=modules_needing_backward(topology, trainable),
        trainable_modules=frozenset(trainable),
    )


def layer_ranges(cfg: MimoConfig, module: str, num_stages: int) -> list[range]:
    """The language model's layers per pipeline stage."""
    per_stage = cfg.layout[module].layers_per_stage if module in cfg.layout else None
    return split_layers(cfg.model.language.num_layers, num_stages, per_stage)


def _topology(cfg: MimoConfig, modules: list[str]) -> Topology:
    if cfg.topology is None:
        return default_topology(modules)
    topology = Topology(cfg.topology)
    topology.require_modules(modules)
    for module in modules:
        if module != LANGUAGE_MODULE and topology.successors(module) != (LANGUAGE_MODULE,):
            raise ValueError(
                f"topology: modality {module!r} feeds {list(topology.successors(module))}, but the built-in "
                f"model splices every modality into {LANGUAGE_MODULE!r} directly"
            )
    return topology


def _check_stage_split(cfg: MimoConfig, name: str, layout: ModuleLayout) -> None:
    per_stage = cfg.layout[name].layers_per_stage if name in cfg.layout else None
    try:
        if name == LANGUAGE_MODULE:
            split_layers(cfg.model.language.num_layers, layout.pp, per_stage)
        else:
            split_encoder_layers(cfg.model, name, layout.pp, per_stage)
    except ValueError as error:
        raise ValueError(f"layout.{name}: {error}") from None


def _check_channels(routing: RoutingPlan) -> None:
    clashes = routing.shared_channels()
    if not clashes:
        return
    if "relay" in clashes[0]:
        hint = "drop tp from the language model, or place the encoders on ranks of their own"
    else:
        hint = "place all but one of that rank's encoders on ranks of their own"
    raise ValueError(f"layout: {clashes[0]}; with a language model pipelined over colocated encoders, two streams "
                     f"may not share a channel between two ranks ({hint})")


def _fully_frozen(module: str, freeze: list[str]) -> bool:
    if module in freeze:
        return True
    return module != LANGUAGE_MODULE and {f"{module}.encoders", f"{module}.projection"} <= set(freeze)
