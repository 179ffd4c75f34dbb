"""Simulator: golden step-by-rank grids, bubble step counts, and deadlock reports.

Regenerate the golden grids after an intended schedule change with
``MIMO_UPDATE_GOLDEN=1 pytest tests/unit/pipeline/test_simulate.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.topology import default_topology
from mimo.pipeline.actions import Action, ActionKind, Schedule, parse_action
from mimo.pipeline.schedules import build_eval_schedule, build_train_schedule
from mimo.pipeline.simulate import (
    DeadlockError,
    Timeline,
    UnreceivedMessageError,
    format_grid,
    simulate,
)

GOLDEN = Path(__file__).parent / "golden"

CASES: dict[str, tuple[dict[str, L], int]] = {
    "language_pp4_mb4": ({"language": L(pp=4)}, 4),
    "images_pp1_language_pp2_mb4": ({"images": L(), "language": L(pp=2, rank_offset=1)}, 4),
    "images_pp2_language_pp2_mb4": ({"images": L(pp=2), "language": L(pp=2, rank_offset=2)}, 4),
    "images_pp2_audio_pp1_language_pp3_mb6": (
        {"images": L(pp=2), "audio": L(rank_offset=2), "language": L(pp=3, rank_offset=3)},
        6,
    ),
    "colocated_dp2_images_language_mb2": ({"images": L(dp=2), "language": L(dp=2)}, 2),
    "images_dp2_language_pp2_mb4": ({"images": L(dp=2), "language": L(pp=2, rank_offset=2)}, 4),
}
# Steps of an ideal 1F1B over the longest chain: every F and B takes one step.
EXPECTED_STEPS = {
    "language_pp4_mb4": 2 * (4 + 4 - 1),
    "images_pp1_language_pp2_mb4": 2 * (4 + 3 - 1),
    "images_pp2_language_pp2_mb4": 2 * (4 + 4 - 1),
    "images_pp2_audio_pp1_language_pp3_mb6": 2 * (6 + 5 - 1),
    "colocated_dp2_images_language_mb2": 2 * 4,  # per microbatch: 2 forwards then 2 backwards, serially
    "images_dp2_language_pp2_mb4": 2 * (4 + 3 - 1),
}


def _run(layouts: dict[str, L], schedule: Schedule, micro_batch_size: int = 4):
    return simulate(schedule, layouts, default_topology(list(layouts)), micro_batch_size)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("MIMO_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name", list(CASES))
def test_train_grid_matches_golden_and_step_count(name: str) -> None:
    layouts, num_microbatches = CASES[name]
    schedule = build_train_schedule(layouts, default_topology(list(layouts)), num_microbatches)
    result = _run(layouts, schedule)
    assert result.num_steps == EXPECTED_STEPS[name]
    _check_golden(name, format_grid(result.timeline))


@pytest.mark.parametrize(
    ("num_stages", "num_microbatches"), [(1, 1), (1, 3), (2, 1), (2, 5), (3, 2), (4, 4), (4, 8), (5, 3)]
)
def test_single_chain_steps_equal_the_bubble_formula(num_stages: int, num_microbatches: int) -> None:
    layouts = {"language": L(pp=num_stages)}
    schedule = build_train_schedule(layouts, default_topology(["language"]), num_microbatches)
    assert _run(layouts, schedule).num_steps == 2 * (num_microbatches + num_stages - 1)


@pytest.mark.parametrize(("images_pp", "language_pp", "num_microbatches"), [(1, 1, 3), (2, 3, 2), (3, 2, 6), (1, 4, 1)])
def test_encoder_chain_steps_equal_the_bubble_formula(images_pp: int, language_pp: int, num_microbatches: int) -> None:
    layouts = {"images": L(dp=2, pp=images_pp), "language": L(pp=language_pp, rank_offset=2 * images_pp)}
    schedule = build_train_schedule(layouts, default_topology(list(layouts)), num_microbatches)
    chain = images_pp + language_pp
    assert _run(layouts, schedule).num_steps == 2 * (num_microbatches + chain - 1)


def _leading_forwards(actions: list[Action]) -> int:
    compute = [a for a in actions if a.kind.is_compute]
    return next(i for i, a in enumerate(compute) if a.kind is ActionKind.B)


def test_shallow_branch_warms_up_less_and_does_not_deadlock() -> None:
    layouts, num_microbatches = CASES["images_pp2_audio_pp1_language_pp3_mb6"]
    schedule = build_train_schedule(layouts, default_topology(list(layouts)), num_microbatches)
    # 1F1B runs warmup + 1 forwards before its first backward: images stage 0 has 5 stages left, audio 4.
    assert _leading_forwards(schedule[0]) == 5
    assert _leading_forwards(schedule[2]) == 4
    assert _run(layouts, schedule).num_steps == EXPECTED_STEPS["images_pp2_audio_pp1_language_pp3_mb6"]


@pytest.mark.parametrize(
    "name", ["language_pp4_mb4", "images_pp2_audio_pp1_language_pp3_mb6", "images_dp2_language_pp2_mb4"]
)
def test_eval_schedule_steps_are_microbatches_plus_depth(name: str) -> None:
    layouts, num_microbatches = CASES[name]
    topology = default_topology(list(layouts))
    schedule = build_eval_schedule(layouts, topology, num_microbatches)
    result = _run(layouts, schedule)
    assert result.num_steps == num_microbatches + topology.total_depth(layouts) - 1
    assert all(a.kind is ActionKind.F for step in result.timeline.steps for a in step.values())


def test_frozen_encoder_schedule_completes() -> None:
    layouts, num_microbatches = CASES["images_pp2_language_pp2_mb4"]
    topology = default_topology(list(layouts))
    schedule = build_train_schedule(layouts, topology, num_microbatches, backward_modules={"language"})
    result = _run(layouts, schedule)
    computed = [a for step in result.timeline.steps for a in step.values()]
    assert sum(a.kind is ActionKind.B for a in computed) == 2 * num_microbatches  # language stages only
    assert sum(a.kind is ActionKind.F for a in computed) == 4 * num_microbatches


FAN_IN = CASES["images_dp2_language_pp2_mb4"][0]


def _fan_in_schedule() -> Schedule:
    return build_train_schedule(FAN_IN, default_topology(list(FAN_IN)), 3)


def test_dropped_send_is_a_deadlock_with_the_grid_in_the_message() -> None:
    schedule = _fan_in_schedule()
    schedule[0].remove(parse_action("images.0SEND_F1"))
    with pytest.raises(DeadlockError) as error:
        _run(FAN_IN, schedule)
    message = str(error.value)
    assert error.value.step == 4
    assert error.value.blocked[2] == parse_action("language.0RECV_F1")
    blocked = {rank: f"{action} <-- blocked" for rank, action in error.value.blocked.items()}
    assert len(blocked) == 4
    grid_lines = message.splitlines()[1:7]
    assert grid_lines[0].split() == ["step", "rank", "0", "rank", "1", "rank", "2", "rank", "3"]
    assert grid_lines[5].split("  ")[0] == "4" and all(mark in grid_lines[5] for mark in blocked.values())
    assert "from rank 0 to rank 2 (rank 0's schedule has no images.0SEND_F1)" in message


def test_receive_moved_before_its_producer_is_a_deadlock() -> None:
    schedule = _fan_in_schedule()
    recv = parse_action("language.0RECV_B0")
    schedule[2].remove(recv)
    schedule[2].insert(0, recv)
    with pytest.raises(DeadlockError, match=r"deadlock at step 3: no rank can progress") as error:
        _run(FAN_IN, schedule)
    assert error.value.blocked[2] == recv
    assert "language.0RECV_B0 <-- blocked" in str(error.value)


def test_colocated_forward_before_its_input_is_a_local_deadlock() -> None:
    layouts = {"images": L(dp=2), "language": L(dp=2)}
    schedule = build_train_schedule(layouts, default_topology(list(layouts)), 1)
    schedule[1][0], schedule[1][1] = schedule[1][1], schedule[1][0]
    with pytest.raises(DeadlockError, match=r"rank 1: language.0F0 waits for local \['images.0F0'\]"):
        _run(layouts, schedule)


def test_message_never_received_is_reported() -> None:
    schedule = _fan_in_schedule()
    schedule[1].append(parse_action("images.0SEND_F2"))
    expected = "F of microbatch 2 on images.0 -> language.0 from rank 1 to rank 2"
    with pytest.raises(UnreceivedMessageError, match=expected):
        _run(FAN_IN, schedule)


def test_action_on_a_stage_the_rank_does_not_hold_is_rejected() -> None:
    schedule = _fan_in_schedule()
    schedule[3].append(parse_action("language.0F0"))
    with pytest.raises(ValueError, match=r"rank 3 runs language.0F0 but holds only stages \{'language': 1\}"):
        _run(FAN_IN, schedule)


def test_format_grid_layout() -> None:
    f0, f1 = parse_action("language.0F0"), parse_action("language.1F0")
    timeline = Timeline(ranks=(0, 1), steps=({0: f0}, {1: f1}))
    assert format_grid(timeline) == (
        "step  rank 0        rank 1\n"
        "0     language.0F0\n"
        "1                   language.1F0\n"
    )
    assert format_grid(timeline, blocked={0: parse_action("language.0RECV_B0")}).splitlines()[-1] == (
        "2     language.0RECV_B0 <-- blocked"
    )
