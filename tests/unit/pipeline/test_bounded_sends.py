"""Bounded sends cannot deadlock a schedule: a model of the communicator's rules, run on every rank at once.

The communicator (``comm.p2p``) adds two rules to the schedule's semantics ("sends are posted at once"):

- a channel keeps at most ``max_in_flight`` hops in flight: posting hop ``i`` first waits until hop
  ``i - max_in_flight`` completed, i.e. until its receiver posted that receive;
- a receiver posts the receive of hop ``i + 1`` right after consuming hop ``i`` (and of hop 0 at the start of
  the step) when it posts early (gloo), or only when its RECV action runs otherwise.

This model steps every rank's action list with those rules and fails on a state where no rank can move. It
covers the layouts the simulator's tests use plus deeper pipelines, fan-in and fan-out, frozen modules and
forward-only runs, for ``max_in_flight`` 1 and 2 and both ways of posting receives.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Mapping

import pytest

from mimo.comm.routing import RoutingPlan
from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.topology import Topology, default_topology
from mimo.pipeline.actions import Action, ActionKind, Schedule
from mimo.pipeline.schedules import build_eval_schedule, build_train_schedule

Channel = tuple[str, int, int]
"""(direction F or B, sending rank, receiving rank)."""


def _channels(action: Action, rank: int, routing: RoutingPlan, backward: Collection[str]) -> list[Channel]:
    module, stage, kind = action.module, action.stage, action.kind
    if kind is ActionKind.SEND_F:
        return [("F", rank, r.transfer.dst_rank) for r in routing.routes_out(rank, module, stage)]
    if kind is ActionKind.RECV_F:
        return [("F", r.transfer.src_rank, rank) for r in routing.routes_in(rank, module, stage)]
    if kind is ActionKind.SEND_B:
        return [("B", rank, r.transfer.src_rank) for r in routing.routes_in(rank, module, stage)
                if stage > 0 or r.src_module in backward]
    if kind is ActionKind.RECV_B:
        return [("B", r.transfer.dst_rank, rank) for r in routing.routes_out(rank, module, stage)]
    return []


def run_with_bounded_sends(schedule: Schedule, layouts: Mapping[str, L], topology: Topology, micro_batch_size: int,
                           *, backward: Collection[str], max_in_flight: int, early: bool) -> None:
    routing = RoutingPlan(layouts, topology, micro_batch_size)
    plans = {rank: [(a, _channels(a, rank, routing, backward)) for a in actions] for rank, actions in schedule.items()}
    expected: Counter[Channel] = Counter(
        c for plan in plans.values() for a, cs in plan if a.kind.is_recv for c in cs
    )
    sent: Counter[Channel] = Counter()
    consumed: Counter[Channel] = Counter()
    posted: dict[Channel, int] = defaultdict(int)
    if early:
        for channel, count in expected.items():
            posted[channel] = min(1, count)
    pc = dict.fromkeys(plans, 0)
    while any(pc[r] < len(plans[r]) for r in plans):
        moved = False
        for rank, plan in plans.items():
            while pc[rank] < len(plan):
                action, channels = plan[pc[rank]]
                if action.kind.is_send:
                    if any(sent[c] - max_in_flight >= posted[c] for c in channels):
                        break  # the hop max_in_flight before has no posted receive yet
                    for c in channels:
                        sent[c] += 1
                elif action.kind.is_recv:
                    if not early:
                        for c in channels:
                            posted[c] = max(posted[c], consumed[c] + 1)
                    if any(sent[c] <= consumed[c] for c in channels):
                        break
                    for c in channels:
                        consumed[c] += 1
                        if early:
                            posted[c] = min(consumed[c] + 1, expected[c])
                pc[rank] += 1
                moved = True
        if not moved:
            stuck = {r: str(plans[r][pc[r]][0]) for r in plans if pc[r] < len(plans[r])}
            raise AssertionError(f"deadlock with max_in_flight={max_in_flight}, early={early}: {stuck}")
    assert sent == consumed == expected


LAYOUTS: dict[str, tuple[dict[str, L], int]] = {
    "language_pp2": ({"language": L(pp=2)}, 2),
    "language_pp4": ({"language": L(pp=4)}, 2),
    "language_pp8": ({"language": L(pp=8)}, 2),
    "language_dp2_pp4": ({"language": L(dp=2, pp=4)}, 2),
    "images_language_pp2": ({"images": L(), "language": L(pp=2, rank_offset=1)}, 4),
    "images_pp2_language_pp2": ({"images": L(pp=2), "language": L(pp=2, rank_offset=2)}, 4),
    "images_pp3_language_pp4": ({"images": L(pp=3), "language": L(pp=4, rank_offset=3)}, 4),
    "fan_in": ({"images": L(dp=2), "language": L(pp=2, rank_offset=2)}, 4),
    "fan_in_4_to_1_pp3": ({"images": L(dp=4), "language": L(pp=3, rank_offset=4)}, 4),
    "fan_out": ({"images": L(), "language": L(dp=2, pp=2, rank_offset=1)}, 4),
    "images_dp2_language_dp2_pp2": ({"images": L(dp=2), "language": L(dp=2, pp=2, rank_offset=2)}, 4),
    "images_pp2_audio_language_pp3": (
        {"images": L(pp=2), "audio": L(rank_offset=2), "language": L(pp=3, rank_offset=3)}, 6),
}


@pytest.mark.parametrize("max_in_flight", [1, 2])
@pytest.mark.parametrize("early", [True, False])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_bounded_sends_never_deadlock(name, early, max_in_flight):
    layouts, micro_batch_size = LAYOUTS[name]
    topology = default_topology(list(layouts))
    backwards = [None, frozenset(["language"]), frozenset()]  # all train; encoders frozen; forward only
    for microbatches in (1, 2, 3, 8, 17):
        for backward in backwards:
            schedule = (build_eval_schedule(layouts, topology, microbatches) if backward == frozenset()
                        else build_train_schedule(layouts, topology, microbatches, backward_modules=backward))
            run_with_bounded_sends(schedule, layouts, topology, micro_batch_size,
                                   backward=set(layouts) if backward is None else backward,
                                   max_in_flight=max_in_flight, early=early)


def test_the_model_finds_a_deadlock_when_a_receive_is_never_posted():
    # The receiver never gets to its receives: the second send waits for the first hop forever.
    layouts = {"language": L(pp=2)}
    sends = [Action("language", 0, ActionKind.SEND_F, mb) for mb in range(3)]
    with pytest.raises(AssertionError, match="deadlock.*language.0SEND_F1"):
        run_with_bounded_sends({0: sends, 1: []}, layouts, default_topology(["language"]), 2,
                               backward=set(layouts), max_in_flight=1, early=False)
