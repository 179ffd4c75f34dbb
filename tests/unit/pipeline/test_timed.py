"""simulate_timed: hand-computed 1F1B timings, transfer and send costs, and agreement with the unit simulator."""

from __future__ import annotations

import pytest

from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.topology import default_topology
from mimo.pipeline.actions import ActionKind, parse_action
from mimo.pipeline.schedules import build_train_schedule
from mimo.pipeline.simulate import SimulationError, simulate
from mimo.pipeline.timed import Costs, Hop, StageCost, matching_sends, simulate_timed

PP2 = {"language": L(pp=2)}
F, B = ActionKind.F, ActionKind.B


def _timed(layouts, num_microbatches: int, costs: Costs, micro_batch_size: int = 4):
    topology = default_topology(list(layouts))
    schedule = build_train_schedule(layouts, topology, num_microbatches)
    return simulate_timed(schedule, layouts, topology, micro_batch_size, costs)


def _uniform(layouts, forward: float, backward: float) -> Costs:
    return Costs({(m, s): StageCost(forward, backward) for m, layout in layouts.items() for s in range(layout.pp)})


def test_two_stage_1f1b_with_free_transfers_is_the_bubble_formula() -> None:
    # f=1, b=2, 4 microbatches, 2 stages: (m + p - 1)(f + b) = 15; each rank idles (p - 1)(f + b) = 3.
    result = _timed(PP2, 4, _uniform(PP2, 1.0, 2.0))
    assert result.step_time_s == pytest.approx(15.0)
    assert result.ranks[0].busy_s == pytest.approx(12.0) and result.ranks[1].busy_s == pytest.approx(12.0)
    assert result.ranks[0].finish_s == pytest.approx(15.0) and result.ranks[1].finish_s == pytest.approx(13.0)
    assert result.idle_s(0) == pytest.approx(3.0) and result.idle_s(1) == pytest.approx(3.0)
    assert result.idle_fraction(0) == pytest.approx(0.2)
    starts = {(t.rank, str(t.action)): t.start_s for t in result.actions}
    assert starts[(0, "language.0B0")] == pytest.approx(4.0)  # waits for stage 1's F0 (1..2) and B0 (2..4)
    assert starts[(0, "language.0B3")] == pytest.approx(13.0)


def test_transfer_costs_delay_receives_and_count_as_communication() -> None:
    # f=1, b=2, 2 microbatches, transfers 0.5 each way. By hand:
    # rank 0: F0 0-1, F1 1-2, RECV_B0 2-5 (B0 sent at 4.5 +0.5), B0 5-7, RECV_B1 7-8.5, B1 8.5-10.5
    # rank 1: RECV_F0 0-1.5, F0 1.5-2.5, B0 2.5-4.5, RECV_F1 4.5-5, F1 5-6, B1 6-8
    transfers = {Hop(F, ("language", 0), ("language", 1)): 0.5, Hop(B, ("language", 1), ("language", 0)): 0.5}
    costs = Costs(_uniform(PP2, 1.0, 2.0).stages, transfers)
    result = _timed(PP2, 2, costs)
    assert result.step_time_s == pytest.approx(10.5)
    assert result.ranks[0].comm_s == pytest.approx(1.0) and result.ranks[1].comm_s == pytest.approx(1.0)
    assert result.idle_s(0) == pytest.approx(3.5) and result.idle_s(1) == pytest.approx(3.5)
    receives = {str(t.action): t for t in result.actions if t.action.kind.is_recv}
    assert (receives["language.0RECV_B0"].start_s, receives["language.0RECV_B0"].end_s) == pytest.approx((2.0, 5.0))
    assert receives["language.0RECV_B0"].wait_s == pytest.approx(2.5)
    assert receives["language.1RECV_F1"].wait_s == pytest.approx(0.0)


def test_send_cost_keeps_the_sender_busy() -> None:
    # One microbatch, f=1, b=2, posting a send 0.25: rank 0 F0 0-1, SEND 1-1.25; rank 1 RECV 0-1.25, F 1.25-2.25,
    # B 2.25-4.25, SEND_B 4.25-4.5; rank 0 RECV_B 1.25-4.5, B0 4.5-6.5.
    stages = {("language", s): StageCost(1.0, 2.0, 0.25, 0.25) for s in (0, 1)}
    result = _timed(PP2, 1, Costs(stages))
    assert result.step_time_s == pytest.approx(6.5)
    assert result.ranks[0].comm_s == pytest.approx(0.25) and result.ranks[1].comm_s == pytest.approx(0.25)


def test_a_rank_entering_late_is_idle_until_then_and_delays_the_ranks_that_wait_for_it() -> None:
    # The 2-stage, 1-microbatch step of the test above, with rank 0 entering at 1.5: its F0 runs 1.5-2.5 and
    # everything after shifts by 1.5 (step 8.0); rank 1 waits in its receive until 2.75.
    stages = {("language", s): StageCost(1.0, 2.0, 0.25, 0.25) for s in (0, 1)}
    topology = default_topology(["language"])
    schedule = build_train_schedule(PP2, topology, 1)
    result = simulate_timed(schedule, PP2, topology, 4, Costs(stages), start_s={0: 1.5})
    assert result.step_time_s == pytest.approx(8.0)
    starts = {(t.rank, str(t.action)): t.start_s for t in result.actions}
    assert starts[(0, "language.0F0")] == pytest.approx(1.5) and starts[(1, "language.1F0")] == pytest.approx(2.75)
    assert result.idle_s(0) == pytest.approx(1.5 + 3.25)  # before F0, then in RECV_B0 from 2.75 until 6.0
    assert result.idle_s(1) == pytest.approx(2.75 + 2.0)  # in RECV_F0, then done at 6.0
    with pytest.raises(ValueError, match=r"start times must be >= 0.*\{1: -0.5\}"):
        simulate_timed(schedule, PP2, topology, 4, Costs(stages), start_s={1: -0.5})


class _PerRank:
    """Costs that differ between two replicas of one stage (what pooling per stage cannot express)."""

    def __init__(self, forward: dict[int, float]) -> None:
        self.forward = forward

    def local_cost(self, rank: int, action) -> float:
        return self.forward.get(rank, 1.0) if action.kind is F else 1.0 if action.kind is B else 0.0

    def transfer_cost(self, rank: int, action, hops) -> float:
        return 0.0


def test_costs_are_asked_per_rank_so_replicas_of_a_stage_may_differ() -> None:
    # Fan-in: two image replicas (ranks 0, 1) feed one language rank (2) that waits for both.
    layouts = {"images": L(dp=2), "language": L(rank_offset=2)}
    topology = default_topology(list(layouts))
    schedule = build_train_schedule(layouts, topology, 1)
    result = simulate_timed(schedule, layouts, topology, 4, _PerRank({0: 1.0, 1: 3.0}))
    starts = {(t.rank, str(t.action)): t.start_s for t in result.actions}
    assert starts[(2, "language.0F0")] == pytest.approx(3.0)  # after the slower replica's forward
    assert result.step_time_s == pytest.approx(6.0)  # rank 2: F 3-4, B 4-5; replicas' B 5-6
    assert result.idle_s(0) == pytest.approx(4.0) and result.idle_s(1) == pytest.approx(2.0)


def test_compute_only_drops_communication_costs() -> None:
    costs = Costs({("language", 0): StageCost(1.0, 2.0, 0.5, 0.5)}, {Hop(F, ("a", 0), ("b", 0)): 1.0})
    ideal = costs.compute_only()
    assert ideal.stages[("language", 0)] == StageCost(1.0, 2.0) and not ideal.transfer_s


@pytest.mark.parametrize(
    ("layouts", "num_microbatches"),
    [
        ({"language": L(pp=4)}, 4),
        ({"images": L(), "language": L(pp=2, rank_offset=1)}, 4),
        ({"images": L(pp=2), "audio": L(rank_offset=2), "language": L(pp=3, rank_offset=3)}, 6),
        ({"images": L(dp=2), "language": L(pp=2, rank_offset=2)}, 4),
        ({"images": L(dp=2), "language": L(dp=2)}, 2),
    ],
)
def test_unit_costs_reproduce_the_step_simulator(layouts, num_microbatches: int) -> None:
    topology = default_topology(list(layouts))
    schedule = build_train_schedule(layouts, topology, num_microbatches)
    steps = simulate(schedule, layouts, topology, 4).num_steps
    assert _timed(layouts, num_microbatches, _uniform(layouts, 1.0, 1.0)).step_time_s == pytest.approx(steps)


def test_heterogeneous_stage_costs_shift_the_bottleneck() -> None:
    # A cheap encoder (0.1 / 0.2) in front of a 2-stage language model (1 / 2): the encoder idles most of the step.
    layouts = {"images": L(), "language": L(pp=2, rank_offset=1)}
    stages = {("images", 0): StageCost(0.1, 0.2), ("language", 0): StageCost(1, 2), ("language", 1): StageCost(1, 2)}
    result = _timed(layouts, 4, Costs(stages))
    # The language chain dominates: its 1F1B takes (4 + 1)(1 + 2) = 15, shifted by the encoder's first forward.
    assert result.step_time_s == pytest.approx(15.0 + 0.1 + 0.2)
    assert result.idle_fraction(0) > 0.9
    assert result.ranks[0].busy_s == pytest.approx(4 * 0.3)


def test_matching_sends_follow_the_routes() -> None:
    layouts = {"images": L(dp=2), "language": L(pp=2, rank_offset=2)}
    topology = default_topology(list(layouts))
    schedule = build_train_schedule(layouts, topology, 2)
    sends = matching_sends(schedule, layouts, topology, 4)
    fan_in = sends[(2, parse_action("language.0RECV_F1"))]
    assert [(s.rank, str(s.action)) for s in fan_in] == [(0, "images.0SEND_F1"), (1, "images.0SEND_F1")]
    back = sends[(0, parse_action("images.0RECV_B1"))]
    assert [(s.rank, str(s.action), s.hop.direction) for s in back] == [(2, "language.0SEND_B1", B)]


def test_a_missing_send_is_reported() -> None:
    topology = default_topology(["language"])
    schedule = build_train_schedule(PP2, topology, 2)
    schedule[0].remove(parse_action("language.0SEND_F1"))
    with pytest.raises(SimulationError, match="language.0SEND_F1"):
        simulate_timed(schedule, PP2, topology, 4, _uniform(PP2, 1.0, 1.0))
