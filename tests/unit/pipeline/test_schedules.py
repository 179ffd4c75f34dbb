"""Schedule builders: 1F1B order, communication insertion, colocated order, frozen modules, eval."""

from __future__ import annotations

import pytest

from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.topology import default_topology
from mimo.pipeline.actions import Action, ActionKind, parse_actions
from mimo.pipeline.schedules import (
    build_eval_schedule,
    build_train_schedule,
    modules_needing_backward,
    one_f_one_b,
)


def _compact(actions: list[Action]) -> str:
    return " ".join(f"{a.kind}{a.microbatch}" for a in actions)


@pytest.mark.parametrize(
    ("num_warmup", "num_microbatches", "expected"),
    [
        (0, 3, "F0 B0 F1 B1 F2 B2"),
        (1, 4, "F0 F1 B0 F2 B1 F3 B2 B3"),
        (2, 4, "F0 F1 F2 B0 F3 B1 B2 B3"),
        (3, 3, "F0 F1 F2 B0 B1 B2"),
        (1, 1, "F0 B0"),
    ],
)
def test_one_f_one_b_order(num_warmup: int, num_microbatches: int, expected: str) -> None:
    actions = one_f_one_b("language", 2, num_warmup, num_microbatches)
    assert _compact(actions) == expected
    assert {(a.module, a.stage) for a in actions} == {("language", 2)}


@pytest.mark.parametrize(("num_warmup", "num_microbatches"), [(-1, 2), (3, 2), (0, 0)])
def test_one_f_one_b_rejects_bad_counts(num_warmup: int, num_microbatches: int) -> None:
    with pytest.raises(ValueError, match=f"num_warmup={num_warmup}, num_microbatches={num_microbatches}"):
        one_f_one_b("language", 0, num_warmup, num_microbatches)


IMG1_LANG2 = {"images": L(), "language": L(pp=2, rank_offset=1)}


def test_train_schedule_inserts_receives_and_sends() -> None:
    schedule = build_train_schedule(IMG1_LANG2, default_topology(list(IMG1_LANG2)), 2)
    assert schedule == {
        0: parse_actions(
            "images.0F0 images.0SEND_F0 images.0F1 images.0SEND_F1"
            " images.0RECV_B0 images.0B0 images.0RECV_B1 images.0B1"
        ),
        1: parse_actions(
            "language.0RECV_F0 language.0F0 language.0SEND_F0 language.0RECV_F1 language.0F1 language.0SEND_F1"
            " language.0RECV_B0 language.0B0 language.0SEND_B0 language.0RECV_B1 language.0B1 language.0SEND_B1"
        ),
        2: parse_actions(
            "language.1RECV_F0 language.1F0 language.1B0 language.1SEND_B0"
            " language.1RECV_F1 language.1F1 language.1B1 language.1SEND_B1"
        ),
    }


def test_colocated_schedule_runs_forwards_in_order_then_backwards_reversed() -> None:
    layouts = {"images": L(dp=2), "audio": L(dp=2), "language": L(dp=2)}
    schedule = build_train_schedule(layouts, default_topology(list(layouts)), 2)
    expected = parse_actions(
        "images.0F0 audio.0F0 language.0F0 language.0B0 audio.0B0 images.0B0"
        " images.0F1 audio.0F1 language.0F1 language.0B1 audio.0B1 images.0B1"
    )
    assert schedule == {0: expected, 1: expected}


def test_modules_needing_backward_adds_everything_downstream() -> None:
    topology = default_topology(["images", "audio", "language"])
    assert modules_needing_backward(topology, ["images"]) == {"images", "language"}
    assert modules_needing_backward(topology, ["language"]) == {"language"}
    assert modules_needing_backward(topology, []) == frozenset()


def test_frozen_encoder_gets_no_backward_and_no_gradient_crosses_its_bridge() -> None:
    topology = default_topology(list(IMG1_LANG2))
    schedule = build_train_schedule(IMG1_LANG2, topology, 3, backward_modules={"language"})
    assert schedule[0] == parse_actions(
        "images.0F0 images.0SEND_F0 images.0F1 images.0SEND_F1 images.0F2 images.0SEND_F2"
    )
    kinds_stage0 = {a.kind for a in schedule[1]}
    assert ActionKind.B in kinds_stage0 and ActionKind.SEND_B not in kinds_stage0
    assert ActionKind.SEND_B in {a.kind for a in schedule[2]}


def test_backward_modules_must_be_closed_downstream_and_known() -> None:
    topology = default_topology(list(IMG1_LANG2))
    with pytest.raises(ValueError, match=r"module 'images' runs a backward, so its successors \['language'\] must too"):
        build_train_schedule(IMG1_LANG2, topology, 2, backward_modules={"images"})
    with pytest.raises(ValueError, match=r"backward_modules name unknown modules \['video'\]"):
        build_train_schedule(IMG1_LANG2, topology, 2, backward_modules={"video", "language"})


def test_train_schedule_input_errors() -> None:
    topology = default_topology(list(IMG1_LANG2))
    with pytest.raises(ValueError, match="num_microbatches must be positive, got 0"):
        build_train_schedule(IMG1_LANG2, topology, 0)
    with pytest.raises(ValueError, match=r"extra in the topology \['audio'\]"):
        build_train_schedule(IMG1_LANG2, default_topology(["images", "audio", "language"]), 2)
    colocated_pipeline = {"images": L(pp=2), "language": L(pp=2)}
    with pytest.raises(ValueError, match=r"colocated encoders must have pp == 1, got pp \{'images': 2\}"):
        build_train_schedule(colocated_pipeline, default_topology(list(colocated_pipeline)), 2)


def test_eval_schedule_is_forward_only_with_forward_comms() -> None:
    schedule = build_eval_schedule(IMG1_LANG2, default_topology(list(IMG1_LANG2)), 2)
    assert schedule == {
        0: parse_actions("images.0F0 images.0SEND_F0 images.0F1 images.0SEND_F1"),
        1: parse_actions(
            "language.0RECV_F0 language.0F0 language.0SEND_F0 language.0RECV_F1 language.0F1 language.0SEND_F1"
        ),
        2: parse_actions("language.1RECV_F0 language.1F0 language.1RECV_F1 language.1F1"),
    }


@pytest.mark.parametrize(
    "layouts",
    [
        {"language": L(pp=4)},
        {"images": L(dp=2, pp=2), "audio": L(rank_offset=4), "language": L(pp=3, rank_offset=5)},
        {"images": L(dp=2), "language": L(dp=2)},
    ],
)
def test_every_stage_runs_each_microbatch_once_forward_before_backward(layouts: dict[str, L]) -> None:
    num_microbatches = 5
    schedule = build_train_schedule(layouts, default_topology(list(layouts)), num_microbatches)
    for actions in schedule.values():
        compute = [a for a in actions if a.kind.is_compute]
        for module, stage in {(a.module, a.stage) for a in compute}:
            for kind in (ActionKind.F, ActionKind.B):
                mbs = [a.microbatch for a in compute if (a.module, a.stage, a.kind) == (module, stage, kind)]
                assert sorted(mbs) == list(range(num_microbatches))
            for mb in range(num_microbatches):
                assert compute.index(Action(module, stage, ActionKind.F, mb)) < compute.index(
                    Action(module, stage, ActionKind.B, mb)
                )
