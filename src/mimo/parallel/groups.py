"""The one place that creates process groups: one data-parallel group per (module, stage, tensor-parallel rank),
the meshes of sharded or tensor-parallel module stages, and two groups for point-to-point traffic.

``new_group`` is collective, so every rank creates every group, in the same order (modules in layout order,
stages in order, then the two point-to-point groups), keeping only the groups it belongs to.

Activations and gradients travel on two separate world-sized groups. In 1F1B two neighbours can each post a
send before their receive (``SEND_F`` then ``RECV_B`` on one side, ``SEND_B`` then ``RECV_F`` on the other); gloo
buffers the sends, but NCCL runs one communicator's operations in order on one stream, so with a single group
each send would wait for a receive queued behind the other side's send. With one group per direction the two
sends and the two receives pair up on different streams.

That holds while traffic between two ranks on one group goes one way. Where a language model is pipelined over
its encoders' ranks, stage hops (and tensor-parallel relays) run towards higher ranks while bridge rows run towards
lower ones (an encoder's rows go to the language replica owning its samples, whose first stage sits on a rank no
higher), so bridges get a pair of groups of their own there; each group then carries one-way traffic per pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from mimo.model.configs import LANGUAGE_MODULE
from mimo.parallel.layout import ModuleLayout, Placement, placement_of


@dataclass(frozen=True)
class ModuleGroups:
    """The data-parallel group of each module stage held by this rank (its ranks with the same tensor-parallel
    rank: they hold the same parameter shards), and the point-to-point groups (all None in a single process)."""

    dp: dict[str, dist.ProcessGroup | None]
    activations: dist.ProcessGroup | None = None
    gradients: dist.ProcessGroup | None = None
    bridge_activations: dist.ProcessGroup | None = None
    """Bridge rows where a language model is pipelined over its encoders' ranks; the ``activations`` group
    elsewhere (see the module docstring)."""
    bridge_gradients: dist.ProcessGroup | None = None
    tied: dist.ProcessGroup | None = None
    """The first and last stage of this rank's language replica, when they hold copies of tied embeddings."""
    rows: dict[str, dist.ProcessGroup] = field(default_factory=dict)
    """Modality -> the ranks of this rank's language replica, where a colocated encoder more data-parallel than
    the language model gathers the rows its ranks encoded (``comm.colocated_rows``)."""

    def dp_group(self, module: str) -> dist.ProcessGroup | None:
        return self.dp[module]


def build_module_groups(
    layouts: Mapping[str, ModuleLayout], rank: int, *, timeout: timedelta, tied_module: str | None = None
) -> ModuleGroups:
    """Create every module stage's DP group on every rank (collective, fixed order).

    ``tied_module``: a pipelined module whose first and last stages hold copies of one tied parameter (the
    language model's embedding and head): one group per replica joins those two stages to sum the copies'
    gradients, as Megatron's embedding group does.

    ``timeout`` is given to every group: ``new_group`` does not inherit the default group's timeout (it falls
    back to the backend default of 30 minutes), and a dead peer must end a wait on any group just as fast.
    """
    groups: dict[str, dist.ProcessGroup | None] = {}
    for module, layout in layouts.items():
        for stage in range(layout.pp):
            for tp_rank in range(layout.tp):
                ranks = layout.dp_ranks(stage, tp_rank)
                group = dist.new_group(ranks, timeout=timeout) if dist.is_initialized() else None
                if rank in ranks:
                    groups[module] = group
    if not dist.is_initialized():
        return ModuleGroups(dp=groups)
    tied = None
    if tied_module is not None and layouts[tied_module].pp > 1:
        layout = layouts[tied_module]
        for dp_rank in range(layout.dp_size):
            for tp_rank in range(layout.tp):
                ends = [layout.rank_of(dp_rank, 0, tp_rank), layout.rank_of(dp_rank, layout.pp - 1, tp_rank)]
                group = dist.new_group(ends, timeout=timeout)
                if rank in ends:
                    tied = group
    world = list(range(dist.get_world_size()))
    activations, gradients = dist.new_group(world, timeout=timeout), dist.new_group(world, timeout=timeout)
    bridge_activations, bridge_gradients = activations, gradients
    language = layouts.get(LANGUAGE_MODULE)
    if language is not None and language.pp > 1 and placement_of(layouts) is Placement.COLOCATED:
        bridge_activations, bridge_gradients = (dist.new_group(world, timeout=timeout),
                                                dist.new_group(world, timeout=timeout))
    return ModuleGroups(
        dp=groups,
        activations=activations,
        gradients=gradients,
        bridge_activations=bridge_activations,
        bridge_gradients=bridge_gradients,
        tied=tied,
        rows=_row_groups(layouts, rank, timeout),
    )


def _row_groups(layouts: Mapping[str, ModuleLayout], rank: int, timeout: timedelta) -> dict[str, dist.ProcessGroup]:
    """One group per language replica for each colocated modality more data-parallel than the language model."""
    language = layouts.get(LANGUAGE_MODULE)
    if language is None or language.pp > 1 or placement_of(layouts) is not Placement.COLOCATED:
        return {}  # a pipelined language model receives its rows by transfers (``comm.routing``)
    rows = {}
    for module, layout in layouts.items():
        if module == LANGUAGE_MODULE or layout.dp_size == language.dp_size:
            continue
        for replica in range(language.dp_size):
            ranks = language.replica_ranks(replica)
            group = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                rows[module] = group
    return rows


MESH_AXES = ("dp", "dp_shard", "tp")
"""Names of a module stage's mesh axes, outermost first (the rank order of ``ModuleLayout``)."""


def mesh_axes(layout: ModuleLayout) -> tuple[str, ...]:
    """The dimensions of a module stage's mesh: ``dp_shard`` (with ``dp`` too for HSDP) where FSDP2 shards, and
    ``tp`` where tensor parallelism splits layers. Plain replication (``dp`` without ``dp_shard``) is reduced by
    the trainer over its own groups, so it is not a mesh dimension; a layout with none of these has no mesh."""
    dims = []
    if layout.dp_shard > 1:
        dims += ["dp", "dp_shard"] if layout.dp > 1 else ["dp_shard"]
    if layout.tp > 1:
        dims.append("tp")
    return tuple(dims)


def build_module_meshes(
    layouts: Mapping[str, ModuleLayout], rank: int, *, device_type: str, timeout: timedelta
) -> dict[str, DeviceMesh]:
    """The mesh of each module stage this rank holds whose layout shards it (``dp_shard > 1``) or splits its
    layers (``tp > 1``), with the axes of ``mesh_axes`` (collective, fixed order).

    A module need not cover the world, so the mesh is built from groups made here over its stage's ranks
    (``DeviceMesh.from_group``) rather than by ``init_device_mesh``. Every rank creates every group in the same
    order (modules, stages, then each mesh dimension's lines over the stage's whole ``(dp, dp_shard, tp)`` grid)
    because ``new_group`` is collective. Slice it by name: ``mesh["tp"]``, ``mesh["dp_shard"]``.
    """
    meshes: dict[str, DeviceMesh] = {}
    if not dist.is_initialized():
        return meshes
    for module, layout in layouts.items():
        dims = mesh_axes(layout)
        if not dims:
            continue
        for stage in range(layout.pp):
            grid = torch.tensor([[[layout.rank_of(replica * layout.dp_shard + shard, stage, tp_rank)
                                   for tp_rank in range(layout.tp)]
                                  for shard in range(layout.dp_shard)]
                                 for replica in range(layout.dp)])
            mine = {}
            for name in dims:
                axis = MESH_AXES.index(name)
                for line in grid.movedim(axis, -1).reshape(-1, grid.shape[axis]).tolist():
                    group = dist.new_group(line, timeout=timeout)
                    if rank in line:
                        mine[name] = group
            if not mine:
                continue
            # This rank's sub-grid: its own coordinate on every dimension that is not a mesh dimension.
            where = (grid == rank).nonzero()[0].tolist()
            index = tuple(slice(None) if name in dims else where[axis] for axis, name in enumerate(MESH_AXES))
            meshes[module] = DeviceMesh.from_group([mine[name] for name in dims], device_type, mesh=grid[index],
                                                   mesh_dim_names=dims)
    return meshes
