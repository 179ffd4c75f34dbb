"""What a merged trace says: per-stage costs, measured idle time per rank, and the schedule's prediction from
those same costs (``simulate_timed``), side by side.

Definitions, the same for measured and predicted so they compare:

- a step's *pipeline* runs from the first action of any rank to the last action of any rank;
- a rank's *compute* is its forwards and backwards (a forward includes loading its microbatch);
- its *communication* is posting sends plus the transfer part of its receives: the time after the last send the
  receive waits for had been posted (``recv end - max(recv start, send end)``);
- its *idle* time is the rest of the pipeline: waiting in receives, and before its first or after its last action.

The prediction replays the schedule many times and takes the medians; it keeps what the measured steps show
about costs on shared cores (checked on 36 traces of the three non-colocated tiny recipes on 2 cores):

- A rank enters the pipeline at its own moment: the previous step's optimizer and this step's set-up end at
  different times on different ranks, up to a sixth of the pipeline, and a late rank delays those that wait for
  it. Replaying each measured step with its own durations gives back its measured idle time per rank within 0.4
  points (median; at most 6) when every rank enters when it did, but up to 13 points off when all enter at 0.
- A rank's costs are its own, not its stage's: replicas of one stage see other samples and another share of the
  cores (two image replicas of a fan-in measured 17 points apart in idle time).
- A rank slowed by another process on its core stays slow for a while, not one action at a time: drawing every
  action's cost on its own spreads that slowness thin, and missed ranks by up to 13.6 points even with the entry
  times.

So each replay gives each rank the costs (compute, send, transfer) of one of its measured steps, drawn for every
rank on its own, and the ranks enter as in one measured step. Measured against predicted idle time per rank: 2.1
points apart (median) with 5 traced steps, within 5 points with 19 (README, "Benchmarks").

The timeline draws one replay with the mean costs per stage and each rank's median entry time. The predicted step
time is the replayed pipeline plus what the step measured outside its pipeline (zero_grad, grad-reduce,
optimizer). Pure: no torch.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from mimo.parallel.layout import ModuleLayout
from mimo.parallel.topology import Topology
from mimo.pipeline.actions import Action, ActionKind, Schedule, parse_action, parse_actions
from mimo.pipeline.timed import (
    Costs,
    Hop,
    Send,
    StageCost,
    StageKey,
    TimedResult,
    matching_sends,
    simulate_timed,
)

__all__ = [
    "Comparison",
    "CostSamples",
    "MeasuredAction",
    "MeasuredPhase",
    "RankSteps",
    "SpreadPrediction",
    "StepCosts",
    "StepMeasure",
    "TracePlan",
    "action_spans",
    "compare",
    "measure_step",
    "measured_costs",
    "measured_samples",
    "median_entry_s",
    "phase_spans",
    "plan_of",
    "predict_with_spread",
    "step_costs",
    "traced_steps",
]


class MeasuredAction(NamedTuple):
    rank: int
    step: int
    action: Action
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class MeasuredPhase(NamedTuple):
    rank: int
    step: int
    name: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TracePlan:
    """What the run executed: the layouts, topology, micro batch size and every rank's action list."""

    layouts: dict[str, ModuleLayout]
    topology: Topology
    micro_batch_size: int
    schedule: Schedule
    stages: dict[int, str]

    def sends_of(self) -> dict[tuple[int, Action], list[Send]]:
        return matching_sends(self.schedule, self.layouts, self.topology, self.micro_batch_size)


def plan_of(trace: Mapping[str, Any]) -> TracePlan | None:
    """The plan stored in a merged trace; None when the run had no pipeline (colocated: no action lists)."""
    meta = trace["mimo"]
    plan, texts = meta.get("plan"), meta.get("schedule", {})
    schedule = {int(rank): parse_actions(text) for rank, text in texts.items() if text}
    if plan is None or not schedule:
        return None
    return TracePlan(
        layouts={name: ModuleLayout(**entry) for name, entry in plan["layouts"].items()},
        topology=Topology(plan["topology"]),
        micro_batch_size=plan["micro_batch_size"],
        schedule=dict(sorted(schedule.items())),
        stages={int(rank): stage for rank, stage in meta.get("stages", {}).items()},
    )


def action_spans(trace: Mapping[str, Any]) -> list[MeasuredAction]:
    """Every recorded action, in seconds on the trace's clock, ordered by rank and start."""
    spans = [
        MeasuredAction(event["pid"], event["args"]["step"], parse_action(event["name"]), event["ts"] / 1e6,
                       (event["ts"] + event["dur"]) / 1e6)
        for event in trace["traceEvents"]
        if event.get("ph") == "X" and "kind" in event.get("args", {}) and "module" in event["args"]
    ]
    return sorted(spans, key=lambda span: (span.rank, span.start_s))


def phase_spans(trace: Mapping[str, Any]) -> list[MeasuredPhase]:
    """Every recorded phase (step, data, grad-reduce, optimizer, ...), ordered by rank and start."""
    spans = [
        MeasuredPhase(event["pid"], event["args"]["step"], event["name"], event["ts"] / 1e6,
                      (event["ts"] + event["dur"]) / 1e6)
        for event in trace["traceEvents"]
        if event.get("ph") == "X" and "module" not in event.get("args", {})
    ]
    return sorted(spans, key=lambda span: (span.rank, span.start_s))


def traced_steps(trace: Mapping[str, Any]) -> list[int]:
    """Steps with anything recorded, in order."""
    return sorted({event["args"]["step"] for event in trace["traceEvents"] if event.get("ph") == "X"})


def _by_step(spans: Sequence[MeasuredAction]) -> dict[int, dict[tuple[int, Action], MeasuredAction]]:
    steps: dict[int, dict[tuple[int, Action], MeasuredAction]] = defaultdict(dict)
    for span in spans:
        steps[span.step][(span.rank, span.action)] = span
    return steps


def _complete(step: Mapping[tuple[int, Action], MeasuredAction], plan: TracePlan) -> bool:
    return all((rank, action) in step for rank, actions in plan.schedule.items() for action in actions)


def _receive_split(
    step: Mapping[tuple[int, Action], MeasuredAction], sends_of: Mapping[tuple[int, Action], list[Send]]
) -> dict[tuple[int, Action], tuple[float, float]]:
    """``(wait, transfer)`` of every receive of one complete step."""
    split = {}
    for key, sends in sends_of.items():
        receive = step[key]
        sent = max((step[(s.rank, s.action)].end_s for s in sends), default=receive.start_s)
        wait = min(max(sent - receive.start_s, 0.0), receive.duration_s)
        split[key] = (wait, receive.duration_s - wait)
    return split


@dataclass(frozen=True)
class StepMeasure:
    step: int
    pipeline_start_s: float
    pipeline_s: float
    step_s: float | None
    """First to last moment of the step over all ranks (its ``step`` spans); None if not recorded."""
    busy_s: dict[int, float]
    comm_s: dict[int, float]
    wait_s: dict[tuple[int, Action], float]
    """The waiting part of every receive."""

    def idle_s(self, rank: int) -> float:
        return max(self.pipeline_s - self.busy_s[rank] - self.comm_s[rank], 0.0)

    def idle_fraction(self, rank: int) -> float:
        return self.idle_s(rank) / self.pipeline_s if self.pipeline_s > 0 else 0.0


def measure_step(trace: Mapping[str, Any], plan: TracePlan, step: int) -> StepMeasure:
    """Pipeline time, compute, communication and idle time per rank of one traced step."""
    actions = _by_step(action_spans(trace)).get(step, {})
    if not actions or not _complete(actions, plan):
        raise ValueError(f"step {step} is not completely traced (traced steps: {traced_steps(trace)})")
    return _measure(step, actions, plan, plan.sends_of(), phase_spans(trace))


def _measure(step: int, actions: Mapping[tuple[int, Action], MeasuredAction], plan: TracePlan,
             sends_of: Mapping[tuple[int, Action], list[Send]], phases: Sequence[MeasuredPhase]) -> StepMeasure:
    split = _receive_split(actions, sends_of)
    start = min(span.start_s for span in actions.values())
    end = max(span.end_s for span in actions.values())
    busy, comm = dict.fromkeys(plan.schedule, 0.0), dict.fromkeys(plan.schedule, 0.0)
    for (rank, action), span in actions.items():
        if action.kind.is_compute:
            busy[rank] += span.duration_s
        elif action.kind.is_send:
            comm[rank] += span.duration_s
        else:
            comm[rank] += split[(rank, action)][1]
    steps = [phase for phase in phases if phase.name == "step" and phase.step == step]
    step_s = max(p.end_s for p in steps) - min(p.start_s for p in steps) if steps else None
    return StepMeasure(step, start, end - start, step_s, busy, comm, {key: w for key, (w, _) in split.items()})


@dataclass(frozen=True)
class CostSamples:
    """Every measured duration of a trace's complete steps: per stage and action kind, and per hop (transfers)."""

    stages: Mapping[tuple[StageKey, ActionKind], Sequence[float]]
    transfers: Mapping[Hop, Sequence[float]]

    def means(self) -> Costs:
        def mean(key: StageKey, kind: ActionKind) -> float:
            values = self.stages.get((key, kind))
            return statistics.fmean(values) if values else 0.0

        keys = sorted({key for key, _ in self.stages})
        return Costs(
            stages={key: StageCost(mean(key, ActionKind.F), mean(key, ActionKind.B), mean(key, ActionKind.SEND_F),
                                   mean(key, ActionKind.SEND_B)) for key in keys},
            transfer_s={hop: statistics.fmean(values) for hop, values in self.transfers.items() if values},
        )


def _complete_steps(
    trace: Mapping[str, Any], plan: TracePlan, steps: Sequence[int] | None
) -> list[tuple[dict[tuple[int, Action], MeasuredAction], dict[tuple[int, Action], tuple[float, float]]]]:
    """The actions of every completely traced step (of ``steps``, default all), each with its receives' split."""
    by_step = _by_step(action_spans(trace))
    sends_of = plan.sends_of()
    complete = []
    for step in steps if steps is not None else sorted(by_step):
        actions = by_step.get(step, {})
        if actions and _complete(actions, plan):
            complete.append((actions, _receive_split(actions, sends_of)))
    return complete


def measured_samples(trace: Mapping[str, Any], plan: TracePlan, steps: Sequence[int] | None = None) -> CostSamples:
    """Every forward, backward and send duration per stage and transfer time per hop over complete traced steps."""
    sends_of = plan.sends_of()
    samples: dict[tuple[StageKey, ActionKind], list[float]] = defaultdict(list)
    transfers: dict[Hop, list[float]] = defaultdict(list)
    for actions, split in _complete_steps(trace, plan, steps):
        for (rank, action), span in actions.items():
            if action.kind.is_recv:
                for send in sends_of[(rank, action)]:
                    transfers[send.hop].append(split[(rank, action)][1])
            else:
                samples[((action.module, action.stage), action.kind)].append(span.duration_s)
    return CostSamples(dict(samples), dict(transfers))


def measured_costs(trace: Mapping[str, Any], plan: TracePlan, steps: Sequence[int] | None = None) -> Costs:
    """Mean forward, backward and send cost per stage and transfer cost per hop over complete traced steps."""
    return measured_samples(trace, plan, steps).means()


@dataclass(frozen=True)
class StepCosts:
    """One complete traced step as a replay uses it: what each action cost its rank (the transfer part for a
    receive), and when each rank entered the pipeline."""

    seconds: Mapping[tuple[int, Action], float]
    entry_s: Mapping[int, float]
    """The rank's first action's start after the pipeline's start (0 for the earliest)."""


def step_costs(trace: Mapping[str, Any], plan: TracePlan, steps: Sequence[int] | None = None) -> list[StepCosts]:
    """The costs and entry times of every complete traced step (of ``steps``, default all)."""
    measured = []
    for actions, split in _complete_steps(trace, plan, steps):
        start = min(span.start_s for span in actions.values())
        entry = {rank: math.inf for rank in plan.schedule}
        seconds = {}
        for (rank, action), span in actions.items():
            entry[rank] = min(entry[rank], span.start_s - start)
            seconds[(rank, action)] = split[(rank, action)][1] if action.kind.is_recv else span.duration_s
        measured.append(StepCosts(seconds, entry))
    return measured


def median_entry_s(steps: Sequence[StepCosts]) -> dict[int, float]:
    """Each rank's median entry time, less the earliest rank's (so that one enters at 0)."""
    if not steps:
        return {}
    medians = {rank: statistics.median(step.entry_s[rank] for step in steps) for rank in steps[0].entry_s}
    earliest = min(medians.values())
    return {rank: median - earliest for rank, median in medians.items()}


class RankSteps:
    """A ``CostModel`` that gives each rank the costs of one of its measured steps: ``steps[rank]``."""

    def __init__(self, steps: Mapping[int, StepCosts]) -> None:
        self._steps = steps

    def local_cost(self, rank: int, action: Action) -> float:
        return self._steps[rank].seconds.get((rank, action), 0.0)

    def transfer_cost(self, rank: int, action: Action, hops: Sequence[Hop]) -> float:
        return self._steps[rank].seconds.get((rank, action), 0.0)


@dataclass(frozen=True)
class SpreadPrediction:
    """Medians over replays of the measured steps' costs: the step the schedule allows given how they vary."""

    pipeline_s: float
    idle_fraction: Mapping[int, float]


REPLAYS = 101
"""Replays per prediction: enough for a stable median, a fraction of a second on small plans."""


def predict_with_spread(plan: TracePlan, steps: Sequence[StepCosts], replays: int = REPLAYS) -> SpreadPrediction:
    """Replay the plan ``replays`` times, each rank with the costs of one of its measured steps (drawn for each
    rank on its own) and the ranks entering as in one measured step (seeded: a trace gives one prediction)."""
    if not steps:
        raise ValueError("no complete traced step to predict from")
    rng = random.Random(0)
    results = []
    for _ in range(replays):
        costs = RankSteps({rank: rng.choice(steps) for rank in plan.schedule})
        results.append(simulate_timed(plan.schedule, plan.layouts, plan.topology, plan.micro_batch_size, costs,
                                      start_s=rng.choice(steps).entry_s))
    return SpreadPrediction(
        pipeline_s=statistics.median(result.step_time_s for result in results),
        idle_fraction={rank: statistics.median(result.idle_fraction(rank) for result in results)
                       for rank in plan.schedule},
    )


@dataclass(frozen=True)
class Comparison:
    """Measured against predicted (measured costs) and ideal (free communication), medians over traced steps."""

    steps: list[int]
    plan: TracePlan
    clock: str
    measured: list[StepMeasure]
    predicted: TimedResult
    """One replay with the mean costs per stage and the measured entry times (what the timeline draws)."""
    spread: SpreadPrediction
    """Replays of the measured steps' costs (what the summary prints as predicted)."""
    ideal: TimedResult

    @property
    def measured_pipeline_s(self) -> float:
        return statistics.median(m.pipeline_s for m in self.measured)

    @property
    def outside_pipeline_s(self) -> float | None:
        """The measured step time outside the pipeline (zero_grad, grad-reduce, optimizer): taken as is."""
        values = [m.step_s - m.pipeline_s for m in self.measured if m.step_s is not None]
        return statistics.median(values) if values else None

    @property
    def measured_step_s(self) -> float | None:
        values = [m.step_s for m in self.measured if m.step_s is not None]
        return statistics.median(values) if values else None

    def measured_idle_fraction(self, rank: int) -> float:
        return statistics.median(m.idle_fraction(rank) for m in self.measured)

    def format(self) -> str:
        ms = 1e3
        outside = self.outside_pipeline_s
        first, last = self.steps[0], self.steps[-1]
        lines = [f"trace: steps {first}..{last} ({len(self.steps)} complete) on {len(self.plan.schedule)} ranks, "
                 f"{self.clock}"]
        rows = [("", "measured", "predicted", "ideal")]
        if outside is not None and self.measured_step_s is not None:
            rows.append(("step time", f"{self.measured_step_s * ms:.1f} ms",
                         f"{(self.spread.pipeline_s + outside) * ms:.1f} ms",
                         f"{(self.ideal.step_time_s + outside) * ms:.1f} ms"))
        rows.append(("pipeline", f"{self.measured_pipeline_s * ms:.1f} ms", f"{self.spread.pipeline_s * ms:.1f} ms",
                     f"{self.ideal.step_time_s * ms:.1f} ms"))
        for rank in self.plan.schedule:
            rows.append((f"idle rank {rank} {self.plan.stages.get(rank, '')}".rstrip(),
                         f"{100 * self.measured_idle_fraction(rank):.1f} %",
                         f"{100 * self.spread.idle_fraction[rank]:.1f} %",
                         f"{100 * self.ideal.idle_fraction(rank):.1f} %"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines += ["  " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                                   enumerate(zip(row, widths))).rstrip() for row in rows]
        lines.append(f"  predicted: medians of {REPLAYS} replays of the schedule, each rank with the costs (compute, "
                     "send, transfer) of one of its measured steps, the ranks entering as in one measured step; "
                     "ideal: mean compute, free communication"
                     + ("; step time adds the "
                     f"{outside * ms:.1f} ms measured outside the pipeline" if outside is not None else ""))
        lines.append("  measured compute / communication per rank and step (medians): " + ", ".join(
            f"{rank}: {statistics.median(m.busy_s[rank] for m in self.measured) * ms:.1f} / "
            f"{statistics.median(m.comm_s[rank] for m in self.measured) * ms:.1f} ms" for rank in self.plan.schedule))
        return "\n".join(lines)


def compare(trace: Mapping[str, Any]) -> Comparison | None:
    """The comparison over every completely traced step; None without a pipeline or a complete step."""
    plan = plan_of(trace)
    if plan is None:
        return None
    by_step = _by_step(action_spans(trace))
    steps = [step for step in sorted(by_step) if _complete(by_step[step], plan)]
    if not steps:
        return None
    sends_of, phases = plan.sends_of(), phase_spans(trace)
    measured = [_measure(step, by_step[step], plan, sends_of, phases) for step in steps]
    costs = measured_costs(trace, plan, steps)
    measured_steps = step_costs(trace, plan, steps)
    replay = (plan.schedule, plan.layouts, plan.topology, plan.micro_batch_size)
    return Comparison(
        steps=steps,
        plan=plan,
        clock=trace["mimo"].get("clock", ""),
        measured=measured,
        predicted=simulate_timed(*replay, costs, start_s=median_entry_s(measured_steps)),
        spread=predict_with_spread(plan, measured_steps),
        ideal=simulate_timed(*replay, costs.compute_only()),
    )
