"""A language model pipelined over the ranks of its colocated encoders: the plan, the schedule and the checks."""

from __future__ import annotations

import pytest

from mimo.comm.routing import RoutingPlan
from mimo.config import config_from_dict
from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.layout import Placement, validate_layouts
from mimo.parallel.topology import default_topology
from mimo.pipeline.actions import parse_actions
from mimo.pipeline.schedules import build_eval_schedule, build_train_schedule
from mimo.pipeline.simulate import simulate
from mimo.training.run_plan import plan_run

IMAGES4_LANGUAGE_PP2_DP2 = {"images": L(dp=4), "language": L(dp=2, pp=2)}


def test_layout_is_colocated_and_accepted():
    placement = validate_layouts(IMAGES4_LANGUAGE_PP2_DP2, world_size=4, micro_batch_size=4,
                                 module_names=["images", "language"])
    assert placement is Placement.COLOCATED


def test_each_rank_runs_its_encoder_forwards_then_its_language_stage_then_its_encoder_backwards():
    schedule = build_train_schedule(IMAGES4_LANGUAGE_PP2_DP2, default_topology(["images", "language"]), 2)
    encoder_forwards = "images.0F0 images.0SEND_F0 images.0F1 images.0SEND_F1"
    encoder_backwards = "images.0RECV_B0 images.0B0 images.0RECV_B1 images.0B1"
    first = ("language.0RECV_F0 language.0F0 language.0SEND_F0 language.0RECV_F1 language.0F1 language.0SEND_F1 "
             "language.0RECV_B0 language.0B0 language.0SEND_B0 language.0RECV_B1 language.0B1 language.0SEND_B1")
    last = ("language.1RECV_F0 language.1F0 language.1B0 language.1SEND_B0 "
            "language.1RECV_F1 language.1F1 language.1B1 language.1SEND_B1")
    for rank, stage_actions in ((0, first), (1, first), (2, last), (3, last)):
        assert schedule[rank] == parse_actions(f"{encoder_forwards} {stage_actions} {encoder_backwards}"), rank


@pytest.mark.parametrize("layouts", [
    IMAGES4_LANGUAGE_PP2_DP2,
    {"images": L(dp=2), "language": L(pp=2)},
    {"images": L(dp=4), "language": L(pp=4)},
    {"images": L(dp=2, tp=2), "language": L(dp=2, pp=2)},
], ids=["dp4_pp2_dp2", "dp2_pp2", "dp4_pp4", "tp2_pp2_dp2"])
@pytest.mark.parametrize("num_microbatches", [1, 3, 8])
def test_schedule_runs_to_the_end_without_deadlock(layouts, num_microbatches):
    topology = default_topology(list(layouts))
    for schedule in (build_train_schedule(layouts, topology, num_microbatches),
                     build_eval_schedule(layouts, topology, num_microbatches)):
        simulate(schedule, layouts, topology, micro_batch_size=4)  # raises on a deadlock or a lost message


def test_routes_that_stay_on_a_rank_and_routes_that_cross():
    routing = RoutingPlan(IMAGES4_LANGUAGE_PP2_DP2, default_topology(["images", "language"]), 4)
    # language replica 0 (first stage on rank 0) owns the samples of image replicas 0 and 1; replica 1 (rank 1)
    # those of image replicas 2 and 3
    destinations = {rank: [r.transfer.dst_rank for r in routing.routes_out(rank, "images", 0)] for rank in range(4)}
    assert destinations == {0: [0], 1: [0], 2: [1], 3: [1]}
    assert routing.shared_channels() == []


def test_two_encoders_feeding_one_language_rank_from_one_rank_are_refused():
    layouts = {"images": L(dp=2), "audio": L(dp=2), "language": L(pp=2)}
    clashes = RoutingPlan(layouts, default_topology(list(layouts)), 4).shared_channels()
    assert clashes[0] == "activations from rank 1 to rank 0 would carry both audio -> language and images -> language"
    raw = {
        "model": {
            "language": {"vocab_size": 48, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 48},
            "modalities": {
                "images": {"placeholder_id": 1, "encoders": {"vit": {
                    "kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_layers": 1,
                    "num_heads": 2}}},
                "audio": {"placeholder_id": 2, "encoders": {"mel": {
                    "kind": "audio", "num_mel_bins": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2}}},
            },
        },
        "train": {"global_batch_size": 8, "num_microbatches": 2},
        "layout": {"images": {"dp": 2}, "audio": {"dp": 2}, "language": {"pp": 2}},
    }
    with pytest.raises(ValueError, match=r"layout: activations from rank 1 to rank 0 would carry both audio -> "
                                         r"language and images -> language; with a language model pipelined over "
                                         r"colocated encoders, two streams may not share a channel between two ranks "
                                         r"\(place all but one of that rank's encoders on ranks of their own\)"):
        plan_run(config_from_dict(raw), world_size=2)


def test_a_tensor_parallel_relay_meeting_a_route_on_one_channel_is_refused():
    # language stage 0 is split over ranks 0 and 1: its leader relays gradients to rank 1, where it also sends the
    # gradients of rank 1's image rows
    layouts = {"images": L(dp=4), "language": L(pp=2, tp=2)}
    clashes = RoutingPlan(layouts, default_topology(list(layouts)), 4).shared_channels()
    assert clashes == ["gradients from rank 0 to rank 1 would carry both images -> language and the relay of "
                       "language's tensor-parallel leader"]
    fine = {"images": L(dp=2, tp=2), "language": L(dp=2, pp=2)}  # the image leader's relay has a channel of its own
    assert RoutingPlan(fine, default_topology(list(fine)), 4).shared_channels() == []


@pytest.mark.parametrize("layouts", [
    IMAGES4_LANGUAGE_PP2_DP2,
    {"images": L(dp=2), "language": L(pp=2)},
    {"images": L(dp=4), "language": L(pp=4)},
    {"images": L(dp=2, tp=2), "language": L(dp=2, pp=2)},
    {"images": L(dp=6), "language": L(dp=3, pp=2)},
], ids=["dp4_pp2_dp2", "dp2_pp2", "dp4_pp4", "tp2_pp2_dp2", "dp6_pp2_dp3"])
def test_bridge_rows_and_stage_hops_each_flow_one_way_between_two_ranks(layouts):
    """Why bridges get their own groups here (``parallel.groups``): on NCCL a group runs one stream per rank, so
    traffic both ways between two ranks on one group can block; stage hops and relays go up, bridge rows down."""
    routing = RoutingPlan(layouts, default_topology(list(layouts)), 12)
    bridge, hops = set(), set()
    for module, layout in layouts.items():
        for rank in layout.ranks:
            for route in routing.routes_out(rank, module, layout.stage_of(rank)):
                pair = (route.transfer.src_rank, route.transfer.dst_rank)
                (hops if route.src_module == route.dst_module else bridge).add(pair)
            leader, followers = routing.tensor_parallel_group(rank, module)
            hops |= {(leader, follower) for follower in followers}
    assert bridge and all(src >= dst for src, dst in bridge)
    assert hops and all(src < dst for src, dst in hops)
