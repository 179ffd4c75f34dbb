"""Bridge and stage routing by samples, checked sample by sample against a direct computation."""

from __future__ import annotations

import pytest

from mimo.comm.routing import (
    Route,
    RoutingPlan,
    Transfer,
    plan_bridge,
    plan_stage_edges,
    split_received_rows,
    split_rows,
    transfers_from,
    transfers_to,
)
from mimo.parallel.layout import ModuleLayout as L
from mimo.parallel.topology import default_topology


def _per_sample_moves(src: L, dst: L, micro_batch_size: int) -> dict[int, list[tuple[int, int, int]]]:
    """dst rank -> (src rank, src local index, dst local index) per sample, in sample order."""
    src_share, dst_share = micro_batch_size // src.dp, micro_batch_size // dst.dp
    moves: dict[int, list[tuple[int, int, int]]] = {}
    for sample in range(micro_batch_size):
        src_rank = src.rank_of(sample // src_share, src.pp - 1)
        dst_rank = dst.rank_of(sample // dst_share, 0)
        moves.setdefault(dst_rank, []).append((src_rank, sample % src_share, sample % dst_share))
    return dict(sorted(moves.items()))


def _expand(transfers: list[Transfer]) -> dict[int, list[tuple[int, int, int]]]:
    moves: dict[int, list[tuple[int, int, int]]] = {}
    for t in transfers:
        assert len(t.src_samples) == len(t.dst_samples) > 0
        moves.setdefault(t.dst_rank, []).extend(
            (t.src_rank, s, d) for s, d in zip(t.src_samples, t.dst_samples)
        )
    return moves


BRIDGES = {
    "fan_in_2_to_1": (L(dp=2), L(pp=2, rank_offset=2), 4),
    "fan_out_1_to_2": (L(pp=2), L(dp=2, rank_offset=2), 4),
    "fan_out_2_to_4": (L(dp=2, pp=2), L(dp=4, rank_offset=4), 8),
    "fan_in_4_to_2": (L(dp=4), L(dp=2, pp=2, rank_offset=4), 4),
    "equal_2_to_2": (L(dp=2, pp=3), L(dp=2, rank_offset=6), 6),
}


@pytest.mark.parametrize("name", list(BRIDGES))
def test_bridge_delivers_every_sample_in_order(name: str) -> None:
    src, dst, micro_batch_size = BRIDGES[name]
    transfers = plan_bridge(src, dst, micro_batch_size)
    assert _expand(transfers) == _per_sample_moves(src, dst, micro_batch_size)
    assert transfers == sorted(transfers, key=lambda t: (t.dst_rank, t.dst_samples.start))


def test_fan_in_and_fan_out_literal_plans() -> None:
    assert plan_bridge(L(dp=2), L(rank_offset=2), 4) == [
        Transfer(0, 2, range(0, 2), range(0, 2)),
        Transfer(1, 2, range(0, 2), range(2, 4)),
    ]
    # Source stage 1 lives on rank 1; destination replicas on ranks 2 and 3.
    assert plan_bridge(L(pp=2), L(dp=2, rank_offset=2), 4) == [
        Transfer(1, 2, range(0, 2), range(0, 2)),
        Transfer(1, 3, range(2, 4), range(0, 2)),
    ]


def test_transfers_to_and_from() -> None:
    transfers = plan_bridge(L(dp=4), L(dp=2, rank_offset=4), 4)
    assert [t.src_rank for t in transfers_to(transfers, 5)] == [2, 3]
    assert [t.dst_rank for t in transfers_from(transfers, 1)] == [4]
    assert transfers_to(transfers, 0) == []


def test_bridge_rejects_batch_not_divisible_by_dp() -> None:
    with pytest.raises(ValueError, match="micro_batch_size 3 is not divisible by dp 2"):
        plan_bridge(L(dp=2), L(rank_offset=2), 3)


def test_stage_edges_connect_same_replica() -> None:
    layout = L(dp=2, pp=3, rank_offset=1)
    assert plan_stage_edges(layout, 1, 4) == [
        Transfer(3, 5, range(2), range(2)),
        Transfer(4, 6, range(2), range(2)),
    ]
    with pytest.raises(ValueError, match="stage 2 has no next stage"):
        plan_stage_edges(layout, 2, 4)


def test_split_rows_sums_tokens_of_each_transfer() -> None:
    transfers = plan_bridge(L(), L(dp=2, rank_offset=1), 4)  # rank 0 sends samples 0-1 and 2-3
    tokens = [3, 0, 5, 2]
    assert split_rows(tokens, transfers_from(transfers, 0)) == [3 + 0, 5 + 2]
    fan_in = plan_bridge(L(dp=2), L(rank_offset=2), 4)
    assert split_received_rows(tokens, transfers_to(fan_in, 2)) == [3 + 0, 5 + 2]


def test_split_rows_rejects_mismatched_shard() -> None:
    transfers = transfers_from(plan_bridge(L(), L(dp=2, rank_offset=1), 4), 0)
    with pytest.raises(ValueError, match="transfers cover 4 samples but tokens_per_sample has 3"):
        split_rows([1, 2, 3], transfers)
    with pytest.raises(ValueError, match="must cover the shard in sample order"):
        split_rows([1, 2, 3, 4], list(reversed(transfers)))


def test_routing_plan_in_a_dag() -> None:
    layouts = {"images": L(dp=2, pp=2), "audio": L(rank_offset=4), "language": L(pp=2, rank_offset=5)}
    plan = RoutingPlan(layouts, default_topology(list(layouts)), micro_batch_size=2)
    assert plan.routes_out(0, "images", 0) == [Route("images", 0, "images", 1, Transfer(0, 2, range(1), range(1)))]
    assert plan.routes_in(5, "language", 0) == [
        Route("images", 1, "language", 0, Transfer(2, 5, range(0, 1), range(0, 1))),
        Route("images", 1, "language", 0, Transfer(3, 5, range(0, 1), range(1, 2))),
        Route("audio", 0, "language", 0, Transfer(4, 5, range(0, 2), range(0, 2))),
    ]
    assert plan.routes_out(4, "audio", 0) == [Route("audio", 0, "language", 0, Transfer(4, 5, range(2), range(2)))]
    assert plan.routes_out(6, "language", 1) == []
    assert plan.routes_in(0, "images", 0) == []
    with pytest.raises(ValueError, match="rank 2 holds stage 1 of 'images', not stage 0"):
        plan.routes_out(2, "images", 0)
