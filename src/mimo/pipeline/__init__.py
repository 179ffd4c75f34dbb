"""Pipeline schedules as data: actions, pure builders and a simulator.

Importing this package must never import ``torch.distributed``; the runner that executes a schedule is
imported by its own module name.
"""

from __future__ import annotations

from mimo.pipeline.actions import Action, ActionKind, Schedule, format_actions, parse_action, parse_actions
from mimo.pipeline.schedules import (
    build_eval_schedule,
    build_train_schedule,
    forward_only,
    modules_needing_backward,
    one_f_one_b,
)
from mimo.pipeline.simulate import (
    DeadlockError,
    SimulationError,
    SimulationResult,
    Timeline,
    UnreceivedMessageError,
    format_grid,
    simulate,
)

__all__ = [
    "Action",
    "ActionKind",
    "DeadlockError",
    "Schedule",
    "SimulationError",
    "SimulationResult",
    "Timeline",
    "UnreceivedMessageError",
    "build_eval_schedule",
    "build_train_schedule",
    "format_actions",
    "format_grid",
    "forward_only",
    "modules_needing_backward",
    "one_f_one_b",
    "parse_action",
    "parse_actions",
    "simulate",
]
