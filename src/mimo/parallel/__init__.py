"""Parallel layouts and the module graph.

``layout`` and ``topology`` are pure planning code; importing this package must never import
``torch.distributed`` (the file that creates process groups is imported by its own name).
"""

from __future__ import annotations

from mimo.parallel.layout import ModuleLayout, Placement, RankRole, placement_of, role_of, validate_layouts
from mimo.parallel.topology import Topology, default_topology

__all__ = [
    "ModuleLayout",
    "Placement",
    "RankRole",
    "Topology",
    "default_topology",
    "placement_of",
    "role_of",
    "validate_layouts",
]
