"""Merging parts onto one clock, and the analysis on a trace whose spans follow the timed model exactly: then the
measured costs are the costs used, and measured idle time equals the prediction."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.topology import default_topology
from mimo.pipeline.actions import ActionKind, format_actions
from mimo.pipeline.schedules import build_train_schedule
from mimo.pipeline.timed import Costs, Hop, StageCost, TimedResult, simulate_timed
from mimo.tracing.analysis import (
    StepCosts,
    action_spans,
    compare,
    measure_step,
    measured_costs,
    median_entry_s,
    plan_of,
    predict_with_spread,
    step_costs,
    traced_steps,
)
from mimo.tracing.files import load_trace, merge_parts, part_path, trace_path, write_json
from mimo.tracing.plot import draw_timeline
from mimo.tracing.recorder import PART_FORMAT, Lane

LAYOUTS = {"images": L(), "language": L(pp=2, rank_offset=1)}
TOPOLOGY = default_topology(list(LAYOUTS))
MICROBATCHES, MBS = 4, 4
F, B = ActionKind.F, ActionKind.B
COSTS = Costs(
    stages={("images", 0): StageCost(0.002, 0.004, 0.0005, 0.0),
            ("language", 0): StageCost(0.003, 0.006, 0.0005, 0.0005),
            ("language", 1): StageCost(0.004, 0.007, 0.0, 0.0005)},
    transfer_s={Hop(F, ("images", 0), ("language", 0)): 0.001, Hop(F, ("language", 0), ("language", 1)): 0.001,
                Hop(B, ("language", 1), ("language", 0)): 0.002, Hop(B, ("language", 0), ("images", 0)): 0.002},
)
FAN_IN = {"images": L(dp=2), "language": L(pp=2, rank_offset=2)}


def _plan(layouts) -> dict:
    topology = default_topology(list(layouts))
    return {"layouts": {name: {"dp": l.dp, "pp": l.pp, "tp": l.tp, "rank_offset": l.rank_offset}
                        for name, l in layouts.items()},
            "topology": {m: list(topology.successors(m)) for m in topology.modules}, "micro_batch_size": MBS}


def _schedule(layouts=LAYOUTS):
    return build_train_schedule(layouts, default_topology(list(layouts)), MICROBATCHES)


def _parts(result: TimedResult, steps: list[int], *, monotonic_base: dict[int, int] | None = None,
           host: dict[int, str] | None = None, outside_s: float = 0.003, layouts=LAYOUTS) -> list[dict]:
    """Rank parts as the recorder writes them, with every step's actions exactly where the model puts them."""
    schedule, ns = _schedule(layouts), 1_000_000_000
    parts = []
    for rank, actions in schedule.items():
        base = (monotonic_base or {}).get(rank, 10 * ns)
        wall = 1_700_000_000 * ns  # every rank's wall clock agrees; their monotonic clocks need not
        spans = []
        for i, step in enumerate(steps):
            t0 = base + int(i * (result.step_time_s + outside_s) * ns)
            mine = [t for t in result.actions if t.rank == rank]
            spans.append(["step", Lane.STEP, t0, t0 + int((result.step_time_s + outside_s) * ns), {"step": step}])
            for index, timed in enumerate(mine):
                a = timed.action
                spans.append([str(a), Lane.ACTIONS, t0 + round(timed.start_s * ns), t0 + round(timed.end_s * ns),
                              {"module": a.module, "stage": a.stage, "kind": str(a.kind), "microbatch": a.microbatch,
                               "step": step, "index": index}])
        parts.append({"format": PART_FORMAT, "rank": rank, "window": [steps[0], steps[-1]],
                      "clock": {"monotonic_ns": base, "wall_ns": wall, "host": (host or {}).get(rank, "one"),
                                "boot_id": "b"},
                      "spans": spans, "actions": format_actions(actions), "stage": "", "plan": _plan(layouts)})
    return parts


@pytest.fixture(scope="module")
def modelled() -> TimedResult:
    return simulate_timed(_schedule(), LAYOUTS, TOPOLOGY, MBS, COSTS)


def test_a_trace_that_follows_the_model_is_predicted_exactly(modelled: TimedResult) -> None:
    trace = merge_parts(_parts(modelled, [2, 3, 4]))
    assert traced_steps(trace) == [2, 3, 4]
    plan = plan_of(trace)
    assert plan is not None and plan.schedule == _schedule()
    costs = measured_costs(trace, plan)
    for key, cost in COSTS.stages.items():
        assert costs.stages[key].forward_s == pytest.approx(cost.forward_s, abs=1e-8)
        assert costs.stages[key].backward_s == pytest.approx(cost.backward_s, abs=1e-8)
        assert costs.stages[key].send_forward_s == pytest.approx(cost.send_forward_s, abs=1e-8)
    for hop, seconds in COSTS.transfer_s.items():
        assert costs.transfer_s[hop] == pytest.approx(seconds, abs=1e-8)
    comparison = compare(trace)
    assert comparison is not None and comparison.steps == [2, 3, 4]
    assert comparison.measured_pipeline_s == pytest.approx(modelled.step_time_s, abs=1e-7)
    assert comparison.predicted.step_time_s == pytest.approx(modelled.step_time_s, abs=1e-7)
    assert comparison.outside_pipeline_s == pytest.approx(0.003, abs=1e-7)
    for rank in _schedule():
        assert comparison.measured_idle_fraction(rank) == pytest.approx(modelled.idle_fraction(rank), abs=1e-5)
    assert comparison.ideal.step_time_s < comparison.predicted.step_time_s
    text = comparison.format()
    assert "step time" in text and "pipeline" in text and "idle rank 2" in text
    assert f"{modelled.step_time_s * 1e3:.1f} ms" in text


def test_measured_receives_split_into_waiting_and_transfer(modelled: TimedResult) -> None:
    trace = merge_parts(_parts(modelled, [2]))
    measure = measure_step(trace, plan_of(trace), 2)
    waits = {(rank, str(action)): wait for (rank, action), wait in measure.wait_s.items()}
    modelled_waits = {(t.rank, str(t.action)): t.wait_s for t in modelled.actions if t.action.kind.is_recv}
    assert waits == pytest.approx(modelled_waits, abs=1e-8)


def test_ranks_on_one_host_keep_the_monotonic_clock_and_others_are_aligned_by_wall_clock(modelled) -> None:
    shifted = {0: 5_000_000_000, 1: 9_000_000_000, 2: 7_000_000_000}
    one_host = merge_parts(_parts(modelled, [2], monotonic_base=shifted))
    assert "shared by every rank" in one_host["mimo"]["clock"]
    starts = {rank: min(s.start_s for s in action_spans(one_host) if s.rank == rank) for rank in shifted}
    assert starts[1] - starts[0] == pytest.approx(4.0, abs=1e-3)  # kept as recorded: one clock
    hosts = merge_parts(_parts(modelled, [2], monotonic_base=shifted, host={0: "a", 1: "b", 2: "c"}))
    assert "NTP" in hosts["mimo"]["clock"]
    # Each rank's (monotonic, wall) pair maps its spans onto the shared wall clock: the steps line up again.
    assert compare(hosts).measured_pipeline_s == pytest.approx(modelled.step_time_s, abs=1e-7)


def test_timeline_merges_parts_and_draws_a_png(tmp_path, modelled: TimedResult) -> None:
    for part in _parts(modelled, [2, 3]):
        write_json(part_path(tmp_path, part["rank"]), part)
    trace = load_trace(tmp_path)
    assert trace_path(tmp_path).is_file() and trace == load_trace(tmp_path)
    out = draw_timeline(trace, tmp_path / "t.png", step=3)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 400 and len(data) > 20_000
    with pytest.raises(ValueError, match="step 9"):
        draw_timeline(trace, tmp_path / "x.png", step=9)


def test_no_trace_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="train.trace=true"):
        load_trace(tmp_path)


def test_replays_equal_the_model_when_steps_do_not_vary_and_follow_a_rank_slow_in_most_steps(
    modelled: TimedResult,
) -> None:
    trace = merge_parts(_parts(modelled, [2, 3, 4]))
    plan = plan_of(trace)
    steps = step_costs(trace, plan)
    assert len(steps) == 3 and all(step.entry_s == {0: 0.0, 1: 0.0, 2: 0.0} for step in steps)
    steady = predict_with_spread(plan, steps, replays=5)
    assert steady.pipeline_s == pytest.approx(modelled.step_time_s, abs=1e-7)
    for rank in _schedule():
        assert steady.idle_fraction[rank] == pytest.approx(modelled.idle_fraction(rank), abs=1e-5)
    # Rank 1 (language.0) lost its core for two of the three steps: every forward took twice as long. A replay
    # gives each rank one of its steps, so most replays have a slow rank 1, and the median is that step.
    slow = [StepCosts({key: cost * (2.0 if key[0] == 1 and key[1].kind is F else 1.0)
                       for key, cost in step.seconds.items()}, step.entry_s) for step in steps[:2]]
    stages = dict(COSTS.stages)
    stages[("language", 0)] = replace(stages[("language", 0)], forward_s=2 * stages[("language", 0)].forward_s)
    slow_model = simulate_timed(_schedule(), LAYOUTS, TOPOLOGY, MBS, replace(COSTS, stages=stages))
    predicted = predict_with_spread(plan, [*slow, steps[2]])
    assert predicted.pipeline_s == pytest.approx(slow_model.step_time_s, abs=1e-7)
    assert predicted == predict_with_spread(plan, [*slow, steps[2]])  # seeded: reproducible


def test_a_rank_that_enters_late_is_predicted_late() -> None:
    # The image rank enters 10 ms after the language ranks (its previous step ended later): idle before its
    # first action, and the language ranks wait longer for its activations.
    late = simulate_timed(_schedule(), LAYOUTS, TOPOLOGY, MBS, COSTS, start_s={0: 0.010})
    trace = merge_parts(_parts(late, [2, 3, 4]))
    plan = plan_of(trace)
    assert median_entry_s(step_costs(trace, plan)) == pytest.approx({0: 0.010, 1: 0.0, 2: 0.0}, abs=1e-9)
    comparison = compare(trace)
    assert comparison.spread.pipeline_s == pytest.approx(comparison.measured_pipeline_s, abs=1e-7)
    assert comparison.predicted.step_time_s == pytest.approx(comparison.measured_pipeline_s, abs=1e-7)
    on_time = simulate_timed(_schedule(), LAYOUTS, TOPOLOGY, MBS, COSTS)
    for rank in _schedule():
        assert comparison.spread.idle_fraction[rank] == pytest.approx(comparison.measured_idle_fraction(rank), abs=1e-5)
        # Every rank entering at 0 would predict each rank 5-9 points less idle than measured.
        assert comparison.measured_idle_fraction(rank) > on_time.idle_fraction(rank) + 0.05


class _ReplicaCosts:
    """COSTS, except that image replica 1 takes 3x as long as replica 0 for its forward and backward."""

    def local_cost(self, rank: int, action) -> float:
        return COSTS.local_cost(rank, action) * (3.0 if rank == 1 and action.kind.is_compute else 1.0)

    def transfer_cost(self, rank: int, action, hops) -> float:
        return COSTS.transfer_cost(rank, action, hops)


def test_replicas_of_a_stage_keep_their_own_costs() -> None:
    fan_in = simulate_timed(_schedule(FAN_IN), FAN_IN, default_topology(list(FAN_IN)), MBS, _ReplicaCosts())
    assert fan_in.idle_fraction(0) > fan_in.idle_fraction(1) + 0.05
    comparison = compare(merge_parts(_parts(fan_in, [2, 3], layouts=FAN_IN)))
    for rank in (0, 1, 2, 3):
        assert comparison.spread.idle_fraction[rank] == pytest.approx(fan_in.idle_fraction(rank), abs=1e-5)
    assert comparison.spread.pipeline_s == pytest.approx(fan_in.step_time_s, abs=1e-7)
