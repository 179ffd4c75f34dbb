"""Replay a schedule in seconds instead of unit steps: predicted step time and idle time per rank.

Why: ``simulate`` says whether a schedule runs and how long its bubble is when every compute costs one step.
Real stages do not cost the same (a small encoder stage next to a language stage) and transfers cost something.
Replaying every rank's action list with *measured* per-stage costs predicts what the schedule itself allows, so
a measured trace can be compared with it: the gap is the runtime's overhead, not the schedule's.

Model (the runner's semantics, in time):

- a rank enters the step at 0, or at its ``start_s`` (measured ranks enter their pipeline at different moments:
  the previous step's optimizer and this step's set-up take different times per rank); before that it is idle;
- a rank runs its actions in list order, one at a time;
- ``F`` / ``B`` take the stage's forward / backward cost;
- a send takes the stage's send cost (posting it) and never waits for its receiver;
- a receive starts when its rank reaches it and ends ``transfer`` seconds after the later of its start and the
  end of the last send it waits for (``Costs``: the largest cost of its hops, 0 when not given). The time
  before that send ended is waiting.

Costs come from a ``CostModel``, asked per rank and action: fixed per stage and hop (``Costs``), or anything
else, such as ``mimo.tracing.analysis``'s draws from each rank's measured durations (which replays their spread
and the differences between replicas of one stage).

With every compute costing 1 and communication free, the step time equals ``simulate``'s step count.
Pure: no torch, no process group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

from mimo.comm.routing import RoutingPlan
from mimo.parallel.layout import ModuleLayout
from mimo.parallel.topology import Topology
from mimo.pipeline.actions import Action, ActionKind, Schedule
from mimo.pipeline.simulate import SimulationError

__all__ = [
    "CostModel",
    "Costs",
    "Hop",
    "RankTime",
    "Send",
    "StageCost",
    "TimedAction",
    "TimedResult",
    "matching_sends",
    "simulate_timed",
]

StageKey = tuple[str, int]
"""``(module, stage)``."""


class Hop(NamedTuple):
    """The path of one message between two stages: ``direction`` F (activations) or B (gradients)."""

    direction: ActionKind
    sender: StageKey
    receiver: StageKey


class Send(NamedTuple):
    """A send a receive waits for: the sending rank, its action, and the hop the message travels."""

    rank: int
    action: Action
    hop: Hop


class CostModel(Protocol):
    """What ``simulate_timed`` asks, once per action it replays."""

    def local_cost(self, rank: int, action: Action) -> float:
        """Seconds ``action`` (a forward, backward or send) keeps ``rank`` busy."""
        ...

    def transfer_cost(self, rank: int, action: Action, hops: Sequence[Hop]) -> float:
        """Seconds the receive ``action`` of ``rank`` takes once the last send it waits for (on ``hops``) ended."""
        ...


@dataclass(frozen=True)
class StageCost:
    """Seconds one microbatch costs a stage; sends count the time the sender spends posting."""

    forward_s: float = 0.0
    backward_s: float = 0.0
    send_forward_s: float = 0.0
    send_backward_s: float = 0.0


@dataclass(frozen=True)
class Costs:
    """Measured (or assumed) costs: per stage, and per hop for transfers (missing entries cost 0)."""

    stages: Mapping[StageKey, StageCost]
    transfer_s: Mapping[Hop, float] = field(default_factory=dict)

    def local_cost(self, rank: int, action: Action) -> float:
        """Time ``action`` keeps its own rank busy (receives are timed by their messages instead); the same on
        every replica of a stage."""
        cost = self.stages.get((action.module, action.stage), StageCost())
        return {
            ActionKind.F: cost.forward_s,
            ActionKind.B: cost.backward_s,
            ActionKind.SEND_F: cost.send_forward_s,
            ActionKind.SEND_B: cost.send_backward_s,
        }.get(action.kind, 0.0)

    def transfer_cost(self, rank: int, action: Action, hops: Sequence[Hop]) -> float:
        """The slowest of the receive's hops (its messages travel side by side)."""
        return max((self.transfer_s.get(hop, 0.0) for hop in hops), default=0.0)

    def compute_only(self) -> Costs:
        """The same forwards and backwards with free communication: the schedule's ideal."""
        stages = {key: StageCost(cost.forward_s, cost.backward_s) for key, cost in self.stages.items()}
        return replace(self, stages=stages, transfer_s={})


@dataclass(frozen=True)
class TimedAction:
    rank: int
    action: Action
    start_s: float
    end_s: float
    wait_s: float = 0.0
    """Receives only: the part of ``[start_s, end_s]`` spent before the last awaited send ended."""


@dataclass(frozen=True)
class RankTime:
    busy_s: float
    """Forwards and backwards."""
    comm_s: float
    """Posting sends plus the transfer part of receives."""
    finish_s: float


@dataclass(frozen=True)
class TimedResult:
    step_time_s: float
    """When the last rank finishes its list (the step starts at 0)."""
    ranks: Mapping[int, RankTime]
    actions: tuple[TimedAction, ...]

    def idle_s(self, rank: int) -> float:
        """Time in the step that ``rank`` neither computes nor communicates: entering late, waiting in receives,
        or done early."""
        time = self.ranks[rank]
        return max(self.step_time_s - time.busy_s - time.comm_s, 0.0)

    def idle_fraction(self, rank: int) -> float:
        return self.idle_s(rank) / self.step_time_s if self.step_time_s > 0 else 0.0


def matching_sends(
    schedule: Schedule, layouts: Mapping[str, ModuleLayout], topology: Topology, micro_batch_size: int
) -> dict[tuple[int, Action], list[Send]]:
    """For every receive of every rank, the sends it waits for (following ``RoutingPlan``, as the runner does)."""
    plan = RoutingPlan(layouts, topology, micro_batch_size)
    result: dict[tuple[int, Action], list[Send]] = {}
    for rank, actions in schedule.items():
        for action in actions:
            module, stage, kind, mb = action
            if kind is ActionKind.RECV_F:
                result[(rank, action)] = [
                    Send(route.transfer.src_rank, Action(route.src_module, route.src_stage, ActionKind.SEND_F, mb),
                         Hop(ActionKind.F, (route.src_module, route.src_stage), (module, stage)))
                    for route in plan.routes_in(rank, module, stage)
                ]
            elif kind is ActionKind.RECV_B:
                result[(rank, action)] = [
                    Send(route.transfer.dst_rank, Action(route.dst_module, route.dst_stage, ActionKind.SEND_B, mb),
                         Hop(ActionKind.B, (route.dst_module, route.dst_stage), (module, stage)))
                    for route in plan.routes_out(rank, module, stage)
                ]
    return result


def simulate_timed(
    schedule: Schedule,
    layouts: Mapping[str, ModuleLayout],
    topology: Topology,
    micro_batch_size: int,
    costs: CostModel,
    start_s: Mapping[int, float] | None = None,
) -> TimedResult:
    """Replay every rank's actions with ``costs``, rank r entering at ``start_s[r]`` (default 0); return the step
    time, per-rank busy/comm/idle and each action.

    Raises:
        ValueError: a start time is negative.
        SimulationError: a receive waits for a send that no rank's list has, or the lists block each other
            (``simulate`` reports the same schedule with a step-by-step grid).
    """
    sends_of = matching_sends(schedule, layouts, topology, micro_batch_size)
    ranks = sorted(schedule)
    starts = {rank: (start_s or {}).get(rank, 0.0) for rank in ranks}
    early = {rank: start for rank, start in starts.items() if start < 0}
    if early:
        raise ValueError(f"start times must be >= 0 (the step starts at 0), got {early}")
    posted = {(rank, action) for rank in ranks for action in schedule[rank] if action.kind.is_send}
    for (rank, action), sends in sends_of.items():
        missing = [f"rank {s.rank}'s {s.action}" for s in sends if (s.rank, s.action) not in posted]
        if missing:
            raise SimulationError(f"rank {rank}'s {action} waits for {', '.join(missing)}, which no list has")
    clock = dict(starts)
    cursor = dict.fromkeys(ranks, 0)
    busy, comm = dict.fromkeys(ranks, 0.0), dict.fromkeys(ranks, 0.0)
    send_end: dict[tuple[int, Action], float] = {}
    timed: list[TimedAction] = []
    progressed = True
    while progressed:
        progressed = False
        for rank in ranks:
            actions = schedule[rank]
            while cursor[rank] < len(actions):
                action, start = actions[cursor[rank]], clock[rank]
                wait = 0.0
                if action.kind.is_recv:
                    sends = sends_of[(rank, action)]
                    if any((s.rank, s.action) not in send_end for s in sends):
                        break
                    ready = max([start, *(send_end[(s.rank, s.action)] for s in sends)])
                    transfer = costs.transfer_cost(rank, action, [s.hop for s in sends])
                    wait, end = ready - start, ready + transfer
                    comm[rank] += transfer
                else:
                    end = start + costs.local_cost(rank, action)
                    if action.kind.is_send:
                        send_end[(rank, action)] = end
                        comm[rank] += end - start
                    else:
                        busy[rank] += end - start
                timed.append(TimedAction(rank, action, start, end, wait))
                clock[rank] = end
                cursor[rank] += 1
                progressed = True
    blocked = {rank: schedule[rank][cursor[rank]] for rank in ranks if cursor[rank] < len(schedule[rank])}
    if blocked:
        details = ", ".join(f"rank {rank} at {action}" for rank, action in blocked.items())
        raise SimulationError(f"the action lists block each other ({details}); run simulate() for the grid")
    step_time = max(clock.values(), default=0.0)
    return TimedResult(
        step_time_s=step_time,
        ranks={rank: RankTime(busy[rank], comm[rank], clock[rank]) for rank in ranks},
        actions=tuple(sorted(timed, key=lambda t: (t.rank, t.start_s))),
    )
