"""Tensor parallelism and sharded data parallelism per module, applied to what the provider built.

Tensor parallelism (``tp > 1``) comes first: each family slice splits its own layers over the mesh's ``tp``
dimension (``apply_tensor_parallel``, DTensor plans). Then FSDP2 (``dp_shard > 1``) shards over the mesh's
``dp_shard`` dimension (``dp`` too for HSDP), on top of the tensor-parallel DTensors when both apply.

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

__all__ = ["counts_once", "reduced_by_fsdp", "shard_fused_model", "shard_stage"]


def reduced_by_fsdp(parameter: nn.Parameter) -> bool:
    """True for a parameter FSDP sharded (its gradient is reduced by FSDP, not the trainer). A parameter that
    only tensor parallelism split is a DTensor too, but on a mesh without ``dp_shard``."""
    return isinstance(parameter, DTensor) and "dp_shard" in (parameter.device_mesh.mesh_dim_names or ())


def counts_once(parameter: nn.Parameter, coordinates: Mapping[str, int]) -> bool:
    """True where this rank's part of ``parameter`` counts towards sums over the world (gradient norms).

    ``coordinates`` is this rank's place in its module stage: ``{"dp": replica, "dp_shard": shard, "tp":
    tp_rank}``. Along a dimension that splits the parameter every rank holds a different part and adds it; along
    one that copies it (a Replicate placement, or a dimension the parameter's mesh lacks: a plain parameter is
    copied along all of them) only the rank at coordinate 0 adds its copy.
    """
    split: set[str] = set()
    if isinstance(parameter, DTensor):
        names = parameter.device_mesh.mesh_dim_names or ()
        # Not ``is_shard()``: FSDP over tensor-parallel rows shards with a ``_StridedShard``, which says False.
        split = {name for name, placement in zip(names, parameter.placements)
                 if not (placement.is_replicate() or placement.is_partial())}
    return all(coordinate == 0 for name, coordinate in coordinates.items() if name not in split)


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


def _fsdp_mesh(mesh: DeviceMesh) -> DeviceMesh | None:
    """The FSDP part of a module stage's mesh (``dp_shard``, with ``dp`` for HSDP), or None without sharding."""
    names = mesh.mesh_dim_names or ()
    if "dp_shard" not in names:
        return None
    return mesh["dp", "dp_shard"] if "dp" in names else mesh["dp_shard"]


def apply_tensor_parallel(model: nn.Module, module: str, mesh: DeviceMesh) -> None:
    """Split the layers of ``module``'s slices in ``model`` over the mesh's ``tp`` dimension, if it has one."""
    if "tp" not in (mesh.mesh_dim_names or ()):
        return
    for part in module_slices(model, module):
        split = getattr(part, "apply_tensor_parallel", None)
        if split is None:
            raise ValueError(f"module {module!r}: {type(part).__name__} does not support tensor parallelism (tp > 1)")
        split(mesh["tp"])


def shard_stage(stage: nn.Module, module: str, mesh: DeviceMesh) -> None:
    """Split (tp) and shard (dp_shard) one pipeline stage, or a whole single-module model, of ``module``: with
    FSDP its layers are units, then the stage."""
    apply_tensor_parallel(stage, module, mesh)
    fsdp_mesh = _fsdp_mesh(mesh)
    if fsdp_mesh is None:
        return
    for layer in _layers(stage, module):
        _shard(layer, fsdp_mesh)
    _shard(stage, fsdp_mesh)


def shard_fused_model(model: nn.Module, meshes: Mapping[str, DeviceMesh]) -> None:
    """Split and shard the modules of a whole ``MimoModel`` that have a mesh; the others stay whole."""
    for module, mesh in meshes.items():
        apply_tensor_parallel(model, module, mesh)
    fsdp_meshes = {module: fsdp for module, mesh in meshes.items() if (fsdp := _fsdp_mesh(mesh)) is not None}
    if not fsdp_meshes:
        return
    # A rank whose microbatch has no rows of a modality must still run that encoder's backward collectives.
    model.rows_always_in_graph = frozenset(module for module in fsdp_meshes if module != LANGUAGE_MODULE)
    for module, mesh in fsdp_meshes.items():
        for layer in _layers(model, module):
            _shard(layer, mesh)
        if module != LANGUAGE_MODULE:
            _shard(model.modalities[module], mesh)
    if LANGUAGE_MODULE not in fsdp_meshes:
        return  # every sharded modality is a root of its own; the language model stays whole
    # Modalities without a mesh stay whole: the root unit leaves their parameters alone (the trainer all-reduces).
    replicated = {p for name, sub in model.modalities.items() if name not in fsdp_meshes for p in sub.parameters()}
    _shard(model, fsdp_meshes[LANGUAGE_MODULE], replicated)
