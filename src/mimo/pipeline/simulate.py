"""Dry-run a schedule on every rank at once: count the steps (the bubble) and catch deadlocks.

Model: all ranks step together. A compute action (F or B) takes one step. Sends take no time; their messages
can be received from the next step on. A receive takes no time but completes only once every message it
expects (from ``RoutingPlan``) has arrived. A compute also waits for inputs produced on the same rank (the
hand-offs of a whole model on every rank, which has no transfer actions, and the forward before its own
backward). A step in which no rank can move while some
are unfinished is a deadlock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from mimo.comm.routing import Route, RoutingPlan
from mimo.parallel.layout import ModuleLayout, Placement, placement_of, role_of
from mimo.parallel.topology import Topology
from mimo.pipeline.actions import Action, ActionKind, Schedule

__all__ = [
    "DeadlockError",
    "SimulationError",
    "SimulationResult",
    "Timeline",
    "UnreceivedMessageError",
    "format_grid",
    "simulate",
]


@dataclass(frozen=True)
class Timeline:
    """The compute action each rank ran at each step (an idle rank is absent from that step)."""

    ranks: tuple[int, ...]
    steps: tuple[Mapping[int, Action], ...]


@dataclass(frozen=True)
class SimulationResult:
    num_steps: int
    timeline: Timeline


class SimulationError(RuntimeError):
    """A schedule that cannot run to completion as written."""


class DeadlockError(SimulationError):
    """No rank can progress; the message holds the grid up to that step with the blocked actions."""

    def __init__(self, message: str, *, step: int, blocked: Mapping[int, Action]) -> None:
        super().__init__(message)
        self.step = step
        self.blocked = dict(blocked)


class UnreceivedMessageError(SimulationError):
    """Every rank finished but some sent messages were never received."""


class _Message(NamedTuple):
    direction: ActionKind  # F for activations, B for gradients
    route: Route
    microbatch: int


def simulate(
    schedule: Schedule,
    layouts: Mapping[str, ModuleLayout],
    topology: Topology,
    micro_batch_size: int,
) -> SimulationResult:
    """Step every rank's actions together and return the step count and the compute timeline.

    Raises:
        ValueError: an action names a stage its rank does not hold.
        DeadlockError: some step leaves every unfinished rank blocked.
        UnreceivedMessageError: messages are left over at the end.
    """
    simulator = _Simulator(schedule, layouts, RoutingPlan(layouts, topology, micro_batch_size), topology)
    return simulator.run()


def format_grid(timeline: Timeline, blocked: Mapping[int, Action] | None = None) -> str:
    """One row per step, one column per rank, compute actions in text form, blank when idle.

    With ``blocked``, a last row shows each blocked rank's pending action marked ``<-- blocked``.
    """
    rows = [["step", *(f"rank {rank}" for rank in timeline.ranks)]]
    for index, step in enumerate(timeline.steps):
        rows.append([str(index), *(str(step.get(rank, "")) for rank in timeline.ranks)])
    if blocked:
        marks = [f"{blocked[rank]} <-- blocked" if rank in blocked else "" for rank in timeline.ranks]
        rows.append([str(len(timeline.steps)), *marks])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


class _Simulator:
    """Mutable state of one simulation; lives only inside ``simulate``."""

    def __init__(
        self, schedule: Schedule, layouts: Mapping[str, ModuleLayout], plan: RoutingPlan, topology: Topology
    ) -> None:
        self.schedule = {rank: list(actions) for rank, actions in sorted(schedule.items())}
        self.plan = plan
        self.topology = topology
        self.roles = {rank: role_of(rank, layouts) for rank in self.schedule}
        self.whole_model = placement_of(layouts) is Placement.COLOCATED and all(l.pp == 1 for l in layouts.values())
        """Every rank holds the whole model: modules hand over on the rank, with no transfer actions (a
        language model pipelined over colocated encoders receives their rows by transfer actions, local or not)."""
        self._check_stages_held()
        self.backward_modules = {a.module for actions in schedule.values() for a in actions if a.kind is ActionKind.B}
        self.cursor = dict.fromkeys(self.schedule, 0)
        self.done: dict[int, set[Action]] = {rank: set() for rank in self.schedule}
        self.in_flight: dict[_Message, list[int]] = defaultdict(list)  # message -> steps it is receivable from
        self.steps: list[dict[int, Action]] = []

    def _check_stages_held(self) -> None:
        for rank, actions in self.schedule.items():
            stages = self.roles[rank].stages
            for action in actions:
                if stages.get(action.module) != action.stage:
                    raise ValueError(f"rank {rank} runs {action} but holds only stages {stages}")

    def run(self) -> SimulationResult:
        while any(self.cursor[rank] < len(actions) for rank, actions in self.schedule.items()):
            step = len(self.steps)
            row: dict[int, Action] = {}
            progressed = [self._advance(rank, step, row) for rank in self.schedule]
            if not any(progressed):
                self._raise_deadlock(step)
            self.steps.append(row)
        leftovers = [message for message, arrivals in self.in_flight.items() for _ in arrivals]
        if leftovers:
            lines = "\n".join(f"  {_describe(message)}" for message in leftovers)
            raise UnreceivedMessageError(
                f"{len(leftovers)} messages were sent but never received:\n{lines}\n{format_grid(self.timeline)}"
            )
        return SimulationResult(num_steps=len(self.steps), timeline=self.timeline)

    @property
    def timeline(self) -> Timeline:
        return Timeline(ranks=tuple(self.schedule), steps=tuple(self.steps))

    def _advance(self, rank: int, step: int, row: dict[int, Action]) -> bool:
        """Run one rank's actions for one step: zero-time actions around at most one compute."""
        actions, start = self.schedule[rank], self.cursor[rank]
        while self.cursor[rank] < len(actions):
            action = actions[self.cursor[rank]]
            if action.kind.is_compute:
                if rank in row or not self._compute_ready(rank, action):
                    break
                row[rank] = action
                self.done[rank].add(action)
            elif action.kind.is_send:
                for message in self._messages(rank, action):
                    self.in_flight[message].append(step + 1)
            elif not self._receive(rank, action, step):
                break
            self.cursor[rank] += 1
        return self.cursor[rank] > start

    def _receive(self, rank: int, action: Action, step: int) -> bool:
        """Consume every message ``action`` expects if all are receivable by ``step``."""
        expected = self._messages(rank, action)
        if any(not any(t <= step for t in self.in_flight.get(m, [])) for m in expected):
            return False
        for message in expected:
            arrivals = self.in_flight[message]
            arrivals.remove(min(arrivals))
            if not arrivals:
                del self.in_flight[message]
        return True

    def _messages(self, rank: int, action: Action) -> list[_Message]:
        """Messages a send posts or a receive expects, following the semantics in ``actions``."""
        module, stage, kind, mb = action
        if kind in (ActionKind.SEND_F, ActionKind.RECV_B):
            routes = self.plan.routes_out(rank, module, stage)
        else:
            routes = self.plan.routes_in(rank, module, stage)
        if kind is ActionKind.SEND_B:
            routes = [route for route in routes if route.src_module in self.backward_modules]
        direction = ActionKind.F if kind in (ActionKind.SEND_F, ActionKind.RECV_F) else ActionKind.B
        return [_Message(direction, route, mb) for route in routes]

    def _local_inputs(self, rank: int, action: Action) -> list[Action]:
        """Compute actions on the same rank that ``action`` consumes."""
        module, stage, kind, mb = action
        held = self.roles[rank].stages if self.whole_model else {module: stage}
        if kind is ActionKind.F:
            sources = self.topology.sources_of(module) if stage == 0 else ()
            return [Action(src, held[src], ActionKind.F, mb) for src in sources if src in held]
        successors = [
            name for name in self.topology.successors(module) if name in held and name in self.backward_modules
        ]
        is_last = self.roles[rank].is_last_stage(module)
        return [action._replace(kind=ActionKind.F)] + [
            Action(name, 0, ActionKind.B, mb) for name in successors if is_last
        ]

    def _compute_ready(self, rank: int, action: Action) -> bool:
        return all(needed in self.done[rank] for needed in self._local_inputs(rank, action))

    def _raise_deadlock(self, step: int) -> None:
        blocked = {
            rank: actions[self.cursor[rank]]
            for rank, actions in self.schedule.items()
            if self.cursor[rank] < len(actions)
        }
        details = "\n".join(f"  rank {rank}: {self._why_blocked(rank, action)}" for rank, action in blocked.items())
        raise DeadlockError(
            f"deadlock at step {step}: no rank can progress\n{format_grid(self.timeline, blocked)}{details}",
            step=step,
            blocked=blocked,
        )

    def _why_blocked(self, rank: int, action: Action) -> str:
        if action.kind.is_compute:
            missing = [str(a) for a in self._local_inputs(rank, action) if a not in self.done[rank]]
            return f"{action} waits for local {missing}"
        missing = [m for m in self._messages(rank, action) if m not in self.in_flight]
        return f"{action} waits for " + "; ".join(self._describe_missing(m) for m in missing)

    def _describe_missing(self, message: _Message) -> str:
        route = message.route
        if message.direction is ActionKind.F:
            sender, send = route.transfer.src_rank, Action(route.src_module, route.src_stage, ActionKind.SEND_F, 0)
        else:
            sender, send = route.transfer.dst_rank, Action(route.dst_module, route.dst_stage, ActionKind.SEND_B, 0)
        send = send._replace(microbatch=message.microbatch)
        never = "" if send in self.schedule.get(sender, []) else f" (rank {sender}'s schedule has no {send})"
        return _describe(message) + never


def _describe(message: _Message) -> str:
    route, transfer = message.route, message.route.transfer
    src_rank, dst_rank = transfer.src_rank, transfer.dst_rank
    if message.direction is ActionKind.B:
        src_rank, dst_rank = dst_rank, src_rank
    return (
        f"{message.direction} of microbatch {message.microbatch} on {route.src_module}.{route.src_stage} -> "
        f"{route.dst_module}.{route.dst_stage} from rank {src_rank} to rank {dst_rank}"
    )
