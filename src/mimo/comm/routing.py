"""Who sends which samples of a microbatch to whom: bridge and stage-to-stage routing plans.

Pure. Data-parallel replica ``i`` of a module with dp ``a`` owns the contiguous samples
``[i * B / a, (i + 1) * B / a)`` of a microbatch of ``B`` samples. A bridge joins the last stage of a source
module to the first stage of its destination and moves, for every pair of replicas, the samples they share.

Worked example, ``B = 4``, source dp 2 (ranks 0, 1), destination dp 1 (rank 2), i.e. fan-in::

    Transfer(src_rank=0, dst_rank=2, src_samples=range(0, 2), dst_samples=range(0, 2))
    Transfer(src_rank=1, dst_rank=2, src_samples=range(0, 2), dst_samples=range(2, 4))

Sample ranges are relative to each side's own shard. A receiver concatenates its transfers in list order,
which is sample order; a sender splits its rows in list order, which is also sample order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mimo.parallel.layout import ModuleLayout
from mimo.parallel.topology import Topology

__all__ = [
    "Route",
    "RoutingPlan",
    "Transfer",
    "plan_bridge",
    "plan_stage_edges",
    "shard_samples",
    "split_received_rows",
    "split_rows",
    "transfers_from",
    "transfers_to",
]


class Transfer(NamedTuple):
    """The samples of one microbatch that one rank hands to another."""

    src_rank: int
    dst_rank: int
    src_samples: range
    """Samples moved, relative to the sender's own shard."""
    dst_samples: range
    """The same samples, relative to the receiver's own shard."""


def shard_samples(dp_rank: int, dp: int, micro_batch_size: int) -> range:
    """Samples of a microbatch owned by one data-parallel replica."""
    if micro_batch_size % dp:
        raise ValueError(f"micro_batch_size {micro_batch_size} is not divisible by dp {dp}")
    per_replica = micro_batch_size // dp
    return range(dp_rank * per_replica, (dp_rank + 1) * per_replica)


def plan_bridge(src: ModuleLayout, dst: ModuleLayout, micro_batch_size: int) -> list[Transfer]:
    """Transfers from the last stage of ``src`` to the first stage of ``dst``, by (dst_rank, sample start).

    Covers fan-in (src dp > dst dp), fan-out (src dp < dst dp) and equal dp. With tp > 1 only tensor-parallel
    rank 0 of each replica appears on either side: the source's ranks all hold the same output, and the
    destination's rank 0 relays what it received to the rest of its group (``tensor_parallel_group``).
    """
    transfers = []
    # Data-parallel ranks are replicas times shard ranks (dp * dp_shard): each owns its own samples.
    for i in range(src.dp_size):
        owned = shard_samples(i, src.dp_size, micro_batch_size)
        for j in range(dst.dp_size):
            wanted = shard_samples(j, dst.dp_size, micro_batch_size)
            start, stop = max(owned.start, wanted.start), min(owned.stop, wanted.stop)
            if start >= stop:
                continue
            transfers.append(
                Transfer(
                    src_rank=src.rank_of(i, src.pp - 1),
                    dst_rank=dst.rank_of(j, 0),
                    src_samples=range(start - owned.start, stop - owned.start),
                    dst_samples=range(start - wanted.start, stop - wanted.start),
                )
            )
    return sorted(transfers, key=lambda t: (t.dst_rank, t.dst_samples.start))


def plan_stage_edges(layout: ModuleLayout, stage: int, micro_batch_size: int) -> list[Transfer]:
    """Transfers from ``stage`` to ``stage + 1`` of one module: each replica passes its whole shard on."""
    if not 0 <= stage < layout.pp - 1:
        raise ValueError(f"stage {stage} has no next stage in {layout}")
    whole = range(len(shard_samples(0, layout.dp_size, micro_batch_size)))
    return [
        Transfer(layout.rank_of(d, stage), layout.rank_of(d, stage + 1), whole, whole)
        for d in range(layout.dp_size)
    ]


def transfers_to(transfers: Sequence[Transfer], rank: int) -> list[Transfer]:
    return [t for t in transfers if t.dst_rank == rank]


def transfers_from(transfers: Sequence[Transfer], rank: int) -> list[Transfer]:
    return [t for t in transfers if t.src_rank == rank]


def split_rows(tokens_per_sample: Sequence[int], transfers_from_me: Sequence[Transfer]) -> list[int]:
    """Rows per outgoing transfer of a sample-major payload with ``tokens_per_sample`` rows per local sample."""
    return _rows_per_transfer(tokens_per_sample, [t.src_samples for t in transfers_from_me])


def split_received_rows(tokens_per_sample: Sequence[int], transfers_to_me: Sequence[Transfer]) -> list[int]:
    """Rows per incoming transfer, e.g. to split a gradient back to the senders of a fan-in."""
    return _rows_per_transfer(tokens_per_sample, [t.dst_samples for t in transfers_to_me])


def _rows_per_transfer(tokens_per_sample: Sequence[int], sample_ranges: Sequence[range]) -> list[int]:
    expected_start = 0
    for samples in sample_ranges:
        if samples.start != expected_start:
            raise ValueError(f"transfers must cover the shard in sample order, got {list(sample_ranges)}")
        expected_start = samples.stop
    if expected_start != len(tokens_per_sample):
        raise ValueError(
            f"transfers cover {expected_start} samples but tokens_per_sample has {len(tokens_per_sample)}: "
            f"{list(tokens_per_sample)}"
        )
    return [sum(tokens_per_sample[s] for s in samples) for samples in sample_ranges]


class Route(NamedTuple):
    """One forward message of a microbatch between two stages (backward gradients travel it in reverse)."""

    src_module: str
    src_stage: int
    dst_module: str
    dst_stage: int
    transfer: Transfer


@dataclass(frozen=True)
class RoutingPlan:
    """Forward routes of every stage: to the next stage of its module, or over the bridges of the topology.

    Meant for layouts with transfers: non-colocated ones, and a language model pipelined over colocated encoders
    (where a route may start and end on one rank). A whole model on every rank hands over on the rank.
    """

    layouts: Mapping[str, ModuleLayout]
    topology: Topology
    micro_batch_size: int

    def routes_out(self, rank: int, module: str, stage: int) -> list[Route]:
        """Where the forward output of ``(module, stage)`` on ``rank`` goes; successors in topology order."""
        layout = self._layout_at(rank, module, stage)
        if stage < layout.pp - 1:
            edges = transfers_from(plan_stage_edges(layout, stage, self.micro_batch_size), rank)
            return [Route(module, stage, module, stage + 1, t) for t in edges]
        return [
            Route(module, stage, successor, 0, t)
            for successor in self.topology.successors(module)
            for t in transfers_from(plan_bridge(layout, self.layouts[successor], self.micro_batch_size), rank)
        ]

    def routes_in(self, rank: int, module: str, stage: int) -> list[Route]:
        """What the forward of ``(module, stage)`` on ``rank`` receives; sources in topology order."""
        layout = self._layout_at(rank, module, stage)
        if stage > 0:
            edges = transfers_to(plan_stage_edges(layout, stage - 1, self.micro_batch_size), rank)
            return [Route(module, stage - 1, module, stage, t) for t in edges]
        routes = []
        for source in self.topology.sources_of(module):
            src = self.layouts[source]
            bridge = transfers_to(plan_bridge(src, layout, self.micro_batch_size), rank)
            routes += [Route(source, src.pp - 1, module, 0, t) for t in bridge]
        return routes

    def shared_channels(self) -> list[str]:
        """Rank pairs over which two different streams would travel in the same direction.

        A direction between two ranks is one channel with one stream of numbered messages (``comm.p2p``), which
        one communicator on each side owns. The streams are the routes between module stages and the relays of a
        tensor-parallel leader to its followers (both directions). Where a rank holds two modules, two streams can
        meet on one channel (two encoders sending to the same language rank, or a language leader relaying to a
        follower that also holds an encoder it sends gradients to), and their messages would interleave. Empty
        where every channel carries one stream (always, for non-colocated layouts).
        """
        streams: dict[tuple[str, int, int], set[str]] = {}

        def add(direction: str, src: int, dst: int, stream: str) -> None:
            if src != dst:  # a route on one rank is handed over there (``comm.local_handoffs``)
                streams.setdefault((direction, src, dst), set()).add(stream)

        for module, layout in self.layouts.items():
            for rank in layout.ranks:
                for route in self.routes_out(rank, module, layout.stage_of(rank)):
                    stream = f"{route.src_module} -> {route.dst_module}"
                    add("activations", route.transfer.src_rank, route.transfer.dst_rank, stream)
                    add("gradients", route.transfer.dst_rank, route.transfer.src_rank, stream)
                leader, followers = self.tensor_parallel_group(rank, module)
                stage = layout.stage_of(rank)
                relayed = [direction for direction, relays in (
                    ("activations", stage > 0 or bool(self.topology.sources_of(module))),  # it receives inputs
                    ("gradients", bool(self.routes_out(rank, module, stage))),  # its outputs go somewhere
                ) if relays]
                for follower in followers if rank == leader else ():
                    for direction in relayed:
                        add(direction, leader, follower, f"the relay of {module}'s tensor-parallel leader")
        return [
            f"{direction} from rank {src} to rank {dst} would carry both " + " and ".join(sorted(names))
            for (direction, src, dst), names in sorted(streams.items()) if len(names) > 1
        ]

    def tensor_parallel_group(self, rank: int, module: str) -> tuple[int, list[int]]:
        """``(leader, followers)`` of the tensor-parallel group of ``rank`` in ``module``.

        Every rank of the group holds the same activations and input gradients, so one transfer per group
        crosses each hop: the leader (tensor-parallel rank 0) sends and receives for the group, and relays what
        it receives to the followers, which send nothing.
        """
        layout = self.layouts[module]
        dp_rank, stage, _ = layout.coords(rank)
        group = [layout.rank_of(dp_rank, stage, tp_rank) for tp_rank in range(layout.tp)]
        return group[0], group[1:]

    def _layout_at(self, rank: int, module: str, stage: int) -> ModuleLayout:
        layout = self.layouts[module]
        if layout.stage_of(rank) != stage:
            raise ValueError(f"rank {rank} holds stage {layout.stage_of(rank)} of {module!r}, not stage {stage}")
        return layout
