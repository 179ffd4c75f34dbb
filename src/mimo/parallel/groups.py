"""The one place that creates process groups: one data-parallel group per (module, stage).

``new_group`` is collective, so every rank creates every group, in the same order (modules in layout order,
stages in order), keeping only the groups it belongs to. Point-to-point traffic uses global ranks on the
default group and needs no group of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed as dist

from mimo.parallel.layout import ModuleLayout


@dataclass(frozen=True)
class ModuleGroups:
    """The data-parallel group of each module stage held by this rank (None in a single process)."""

    dp: dict[str, dist.ProcessGroup | None]

    def dp_group(self, module: str) -> dist.ProcessGroup | None:
        return self.dp[module]


def build_module_groups(layouts: Mapping[str, ModuleLayout], rank: int) -> ModuleGroups:
    """Create every module stage's DP group on every rank (collective, fixed order)."""
    groups: dict[str, dist.ProcessGroup | None] = {}
    for module, layout in layouts.items():
        for stage in range(layout.pp):
            ranks = layout.stage_ranks(stage)
            group = dist.new_group(ranks) if dist.is_initialized() else None
            if rank in ranks:
                groups[module] = group
    return ModuleGroups(dp=groups)
