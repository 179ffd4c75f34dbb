"""Sharded data parallelism per module: FSDP2 ``fully_shard`` on what the provider built.

Each transformer layer of a sharded module is one FSDP unit (its parameters gathered just for its forward and
backward); the rest of the module (embeddings, norms, head, projections) sits in an enclosing unit:

- a pipeline stage holds one module, so the stage itself is the root unit;
- the fused engine holds every module in one ``MimoModel``: a sharded modality's submodule is its own unit (it is
  called as a module), and the ``MimoModel`` is the root unit on the language model's mesh (the language model's
  ``embed`` is called as a method, so only a unit around the whole model gathers the embedding in time), ignoring
  the parameters of modules that stay replicated (the trainer all-reduces those itself).

Gradients are reduced as a SUM (no division by the data-parallel size): the trainer divides every module's
gradients by the global token count itself. ``set_force_sum_reduction_for_comms`` keeps the collectives to plain
SUMs, which gloo supports (a custom factor would otherwise ask for NCCL's PreMulSum).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from mimo.model.compute import module_slices
from mimo.model.configs import LANGUAGE_MODULE

__all__ = ["first_replica_holds", "is_sharded", "shard_fused_model", "shard_stage"]


def is_sharded(parameter: nn.Parameter) -> bool:
    """True for a parameter FSDP turned into a DTensor (its gradient is reduced by FSDP, not the trainer)."""
    return isinstance(parameter, DTensor)


def first_replica_holds(parameter: DTensor) -> bool:
    """True where this rank's shard belongs to replica 0 of the parameter's mesh.

    Norms and counts must take every shard once: each shard rank of one replica adds its own part, and the
    other replicas (HSDP), holding copies of the same shards, add nothing.
    """
    mesh = parameter.device_mesh
    return all(mesh.get_local_rank(dim) == 0
               for dim, placement in enumerate(parameter.placements) if placement.is_replicate())


def _layers(model: nn.Module, module: str) -> list[nn.Module]:
    """The transformer layers of ``module`` in ``model``: every child of a ``layers`` container of its slices."""
    found = []
    for part in module_slices(model, module):
        for name, child in part.named_modules():
            if name.rsplit(".", 1)[-1] == "layers" and isinstance(child, (nn.ModuleDict, nn.ModuleList)):
                found.extend(child.children())
    return found


def _sum_reduction(unit: nn.Module) -> None:
    assert isinstance(unit, FSDPModule)
    unit.set_gradient_divide_factor(1.0)
    unit.set_force_sum_reduction_for_comms(True)


def _shard(unit: nn.Module, mesh: DeviceMesh, ignored: set[nn.Parameter] | None = None) -> None:
    # Resharded after forward on every unit, the root too: a forward-only pass (validation) must not leave
    # whole parameters behind for a checkpoint or an export to find.
    fully_shard(unit, mesh=mesh, reshard_after_forward=True, ignored_params=ignored or None)
    _sum_reduction(unit)


def shard_stage(stage: nn.Module, module: str, mesh: DeviceMesh) -> None:
    """Shard one pipeline stage (or a whole single-module model) of ``module``: its layers, then the stage."""
    for layer in _layers(stage, module):
        _shard(layer, mesh)
    _shard(stage, mesh)


def shard_fused_model(model: nn.Module, meshes: Mapping[str, DeviceMesh]) -> None:
    """Shard the modules of a whole ``MimoModel`` that have a mesh; the others stay replicated (and whole)."""
    if not meshes:
        return
    # A rank whose microbatch has no rows of a modality must still run that encoder's backward collectives.
    model.rows_always_in_graph = frozenset(module for module in meshes if module != LANGUAGE_MODULE)
    for module, mesh in meshes.items():
        for layer in _layers(model, module):
            _shard(layer, mesh)
        if module != LANGUAGE_MODULE:
            _shard(model.modalities[module], mesh)
    if LANGUAGE_MODULE not in meshes:
        return  # every sharded modality is a root of its own; the language model stays whole
    # Modalities without a mesh stay whole: the root unit leaves their parameters alone (the trainer all-reduces).
    replicated = {p for name, sub in model.modalities.items() if name not in meshes for p in sub.parameters()}
    _shard(model, meshes[LANGUAGE_MODULE], replicated)
