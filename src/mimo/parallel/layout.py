"""Per-module parallel layouts: rank arithmetic, whole-world validation and the role of one rank.

Pure: nothing here creates a process group. A module's data-parallel size is ``dp * dp_shard`` (``dp``
replicas, each sharded over ``dp_shard`` ranks by FSDP2); its data-parallel rank combines both,
``dp_rank = replica * dp_shard + shard``, and every data-parallel rank reads its own samples. Rank order inside one
module's span is tp fastest, then dp_shard, then dp replica, then pp, so the ranks of one pipeline stage are
contiguous and the shard ranks of one replica are the mesh's contiguous inner dimension::

    rank = rank_offset + ((stage * dp + replica) * dp_shard + shard) * tp + tp_rank

Example: ``ModuleLayout(dp=2, pp=2, rank_offset=4)`` spans ranks 4..7; stage 0 is ``[4, 5]`` (replicas 0, 1)
and stage 1 is ``[6, 7]``. ``ModuleLayout(dp=2, dp_shard=2)`` spans 0..3: replica 0 is ``[0, 1]`` (its two
shards), replica 1 is ``[2, 3]``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import combinations

from mimo.model.configs import LANGUAGE_MODULE

__all__ = [
    "ModuleLayout",
    "Placement",
    "RankRole",
    "colocated_rows",
    "placement_of",
    "role_of",
    "validate_layouts",
]


class Placement(StrEnum):
    """How the modules share ranks."""

    COLOCATED = "colocated"
    """Every module spans the same ranks. With pp == 1 everywhere each rank holds the whole model and hand-offs
    between modules are local; a pipelined language model may share the ranks of encoders with pp == 1, each rank
    then holding an encoder and one language stage (``RunPlan.is_fused`` tells the two apart)."""
    NON_COLOCATED = "non_colocated"
    """Modules sit on disjoint rank spans that tile the world; a rank holds exactly one module."""


@dataclass(frozen=True)
class ModuleLayout:
    """The parallel layout of one module on the contiguous ranks ``[rank_offset, rank_offset + size)``."""

    dp: int = 1
    pp: int = 1
    tp: int = 1
    rank_offset: int = 0
    dp_shard: int = 1
    """Ranks each replica's parameters, gradients and optimizer state are sharded over (FSDP2)."""

    def __post_init__(self) -> None:
        for name in ("dp", "pp", "tp", "dp_shard"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModuleLayout.{name} must be a positive integer, got {value!r} in {self}")
        offset = self.rank_offset
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"ModuleLayout.rank_offset must be a non-negative integer, got {offset!r} in {self}")

    @property
    def dp_size(self) -> int:
        """The data-parallel size: replicas times shard ranks (each reads its own samples)."""
        return self.dp * self.dp_shard

    @property
    def size(self) -> int:
        return self.dp_size * self.pp * self.tp

    def replica_and_shard(self, dp_rank: int) -> tuple[int, int]:
        """``(replica, shard)`` of a combined data-parallel rank."""
        if not 0 <= dp_rank < self.dp_size:
            raise ValueError(f"dp_rank {dp_rank} is outside [0, {self.dp_size}) of {self}")
        return divmod(dp_rank, self.dp_shard)

    @property
    def ranks(self) -> range:
        return range(self.rank_offset, self.rank_offset + self.size)

    def span_text(self) -> str:
        """The span as ``[first, last]`` for error messages."""
        return f"[{self.ranks.start}, {self.ranks.stop - 1}]"

    def contains(self, rank: int) -> bool:
        return rank in self.ranks

    def coords(self, rank: int) -> tuple[int, int, int]:
        """``(dp_rank, stage, tp_rank)`` of a global rank inside this span (``dp_rank`` combines replica and shard)."""
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is outside the span {self.span_text()} of {self}")
        local = rank - self.rank_offset
        replica_major, tp_rank = divmod(local, self.tp)
        stage, dp_rank = divmod(replica_major, self.dp_size)
        return dp_rank, stage, tp_rank

    def rank_of(self, dp_rank: int, stage: int, tp_rank: int = 0) -> int:
        """The global rank holding ``(dp_rank, stage, tp_rank)`` (``dp_rank`` in ``[0, dp * dp_shard)``)."""
        if not (0 <= dp_rank < self.dp_size and 0 <= stage < self.pp and 0 <= tp_rank < self.tp):
            raise ValueError(
                f"coordinates dp_rank={dp_rank}, stage={stage}, tp_rank={tp_rank} are outside {self}"
            )
        return self.rank_offset + (stage * self.dp_size + dp_rank) * self.tp + tp_rank

    def stage_of(self, rank: int) -> int:
        return self.coords(rank)[1]

    def stage_ranks(self, stage: int) -> list[int]:
        """Every rank of one pipeline stage, replica-major (tp fastest)."""
        return [self.rank_of(d, stage, t) for d in range(self.dp_size) for t in range(self.tp)]

    def dp_ranks(self, stage: int, tp_rank: int = 0) -> list[int]:
        """The data-parallel ranks of one stage that hold tensor-parallel part ``tp_rank``: the ranks that sum
        the same gradients."""
        return [self.rank_of(d, stage, tp_rank) for d in range(self.dp_size)]

    def replica_ranks(self, dp_rank: int) -> list[int]:
        """Every rank of one data-parallel replica, stage-major (tp fastest)."""
        return [self.rank_of(dp_rank, s, t) for s in range(self.pp) for t in range(self.tp)]


def placement_of(layouts: Mapping[str, ModuleLayout]) -> Placement:
    """COLOCATED when there are several modules and all share one span; NON_COLOCATED otherwise."""
    spans = {(layout.rank_offset, layout.size) for layout in layouts.values()}
    return Placement.COLOCATED if len(layouts) > 1 and len(spans) == 1 else Placement.NON_COLOCATED


def validate_layouts(
    layouts: Mapping[str, ModuleLayout],
    *,
    world_size: int,
    micro_batch_size: int,
    module_names: Collection[str],
) -> Placement:
    """Check that the layouts place every module on the world consistently, and return the placement.

    Raises:
        ValueError: naming the offending modules and values.
    """
    _check_names(layouts, module_names)
    if world_size <= 0 or micro_batch_size <= 0:
        raise ValueError(
            f"world_size ({world_size}) and micro_batch_size ({micro_batch_size}) must be positive"
        )
    placement = placement_of(layouts)
    if placement is Placement.COLOCATED:
        _check_colocated(layouts, world_size)
    else:
        _check_tiling(layouts, world_size)
    _check_dp_sizes(layouts, micro_batch_size)
    return placement


def _check_names(layouts: Mapping[str, ModuleLayout], module_names: Collection[str]) -> None:
    unknown = sorted(set(layouts) - set(module_names))
    if unknown:
        raise ValueError(f"layouts name unknown modules {unknown}; the modules are {sorted(module_names)}")
    missing = sorted(set(module_names) - set(layouts))
    if missing:
        raise ValueError(f"modules {missing} have no layout; layouts are given for {sorted(layouts)}")


def _check_colocated(layouts: Mapping[str, ModuleLayout], world_size: int) -> None:
    language = layouts.get(LANGUAGE_MODULE)
    if language is not None and language.pp > 1:
        # Each rank then holds an encoder and one language stage: encoders run whole, their rows cross to the
        # language replicas that own their samples (local or not, ``comm.routing``), so any dp sizes that divide
        # one another work.
        pipelined = {name: layout.pp for name, layout in layouts.items() if layout.pp != 1 and name != LANGUAGE_MODULE}
        if pipelined:
            raise ValueError(
                f"colocated encoders must have pp == 1 (only the language model may be pipelined over their "
                f"ranks), got pp {pipelined}"
            )
    else:
        pipelined = {name: layout.pp for name, layout in layouts.items() if layout.pp != 1}
        if pipelined:
            raise ValueError(f"colocated modules must have pp == 1 (or a pipelined language model), got pp {pipelined}")
        _check_colocated_rows(layouts)
    layout = next(iter(layouts.values()))
    if layout.ranks != range(world_size):
        raise ValueError(
            f"colocated modules span ranks {layout.span_text()} but must span the world [0, {world_size - 1}]"
        )


def _check_colocated_rows(layouts: Mapping[str, ModuleLayout]) -> None:
    # Equal spans with pp == 1 mean equal dp * dp_shard * tp: only tp makes data-parallel sizes differ. An encoder
    # more data-parallel than the language model splits each language replica's samples over the ranks of that
    # replica and gathers the rows back (``colocated_rows``); the other way round would need rows scattered.
    language = layouts.get(LANGUAGE_MODULE)
    if language is None:
        return
    for name, layout in layouts.items():
        if layout.dp_size % language.dp_size:
            raise ValueError(
                f"colocated module {name!r} has data-parallel size {layout.dp_size} (tp {layout.tp}), not a "
                f"multiple of the language model's {language.dp_size} (tp {language.tp}): an encoder next to the "
                "language model must split each language replica's samples (give it the smaller tp)"
            )


def _check_tiling(layouts: Mapping[str, ModuleLayout], world_size: int) -> None:
    for (name_a, a), (name_b, b) in combinations(layouts.items(), 2):
        if a.ranks.start < b.ranks.stop and b.ranks.start < a.ranks.stop:
            raise ValueError(
                f"modules {name_a!r} (ranks {a.span_text()}) and {name_b!r} (ranks {b.span_text()}) "
                f"overlap; spans must be all identical (colocated) or pairwise disjoint"
            )
    total = sum(layout.size for layout in layouts.values())
    spans = ", ".join(f"{name}: {layout.span_text()}" for name, layout in layouts.items())
    if total != world_size:
        raise ValueError(f"layouts cover {total} ranks ({spans}) but world_size is {world_size}")
    covered = {rank for layout in layouts.values() for rank in layout.ranks}
    missing = sorted(set(range(world_size)) - covered)
    if missing:
        outside = sorted(covered - set(range(world_size)))
        raise ValueError(
            f"layouts leave ranks {missing} without a module and place ranks {outside} outside "
            f"world_size {world_size} ({spans})"
        )


def _check_dp_sizes(layouts: Mapping[str, ModuleLayout], micro_batch_size: int) -> None:
    # The data-parallel size that cuts the microbatch is dp * dp_shard (every shard rank reads its own samples).
    for (name_a, a), (name_b, b) in combinations(layouts.items(), 2):
        if max(a.dp_size, b.dp_size) % min(a.dp_size, b.dp_size):
            raise ValueError(
                f"dp sizes must divide one another: {name_a!r} has {_dp_text(a)}, {name_b!r} has {_dp_text(b)}"
            )
    for name, layout in layouts.items():
        if micro_batch_size % layout.dp_size:
            raise ValueError(
                f"micro_batch_size {micro_batch_size} is not divisible by {_dp_text(layout)} of module {name!r}"
            )


def _dp_text(layout: ModuleLayout) -> str:
    if layout.dp_shard == 1:
        return f"dp {layout.dp}"
    return f"dp * dp_shard = {layout.dp} * {layout.dp_shard} = {layout.dp_size}"


@dataclass(frozen=True)
class RankRole:
    """What one rank holds: for each module on it, the pipeline stage and the data-parallel replica."""

    rank: int
    stages: dict[str, int]
    """Module -> stage index held by this rank (encoders at stage 0 when colocated; the language model at any
    stage when it is pipelined over their ranks)."""
    dp_rank: dict[str, int]
    """Module -> combined data-parallel rank (``replica * dp_shard + shard``): which samples this rank reads."""
    tp_rank: dict[str, int]
    """Module -> tensor-parallel rank: which part of the module's split layers this rank holds (0 with tp 1)."""
    num_stages: dict[str, int]
    """Module -> pp of that module, for the modules on this rank."""

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.stages)

    @property
    def reports_losses(self) -> bool:
        """False on a tensor-parallel follower of the language model: its tensor-parallel rank 0 reports the same
        losses and token counts (an encoder split on this rank does not matter: only the language model has a
        loss)."""
        return self.tp_rank.get(LANGUAGE_MODULE, 0) == 0

    def holds(self, module: str) -> bool:
        return module in self.stages

    def is_first_stage(self, module: str) -> bool:
        return self.stages.get(module) == 0

    def is_last_stage(self, module: str) -> bool:
        return module in self.stages and self.stages[module] == self.num_stages[module] - 1

    def needs_modality_data(self, modality: str) -> bool:
        """True on the first stage of that modality's encoder, which reads its inputs."""
        if modality == LANGUAGE_MODULE:
            raise ValueError(f"{modality!r} is not a modality; use needs_tokens / needs_labels")
        return self.is_first_stage(modality)

    @property
    def needs_tokens(self) -> bool:
        """The language first stage embeds input_ids (and position_ids)."""
        return self.is_first_stage(LANGUAGE_MODULE)

    @property
    def needs_labels(self) -> bool:
        """The language last stage needs labels and loss_mask."""
        return self.is_last_stage(LANGUAGE_MODULE)

    @property
    def is_loss_stage(self) -> bool:
        return self.is_last_stage(LANGUAGE_MODULE)


def colocated_rows(rank: int, encoder: ModuleLayout, language: ModuleLayout) -> tuple[list[int], list[int], int]:
    """How a colocated encoder more data-parallel than the language model shares out its work on ``rank``.

    The language replica of ``rank`` reads samples that ``k = encoder.dp_size / language.dp_size`` encoder
    replicas own, and those replicas sit on the ranks of that language replica (both layouts order ranks with
    tp fastest). Each rank encodes its own replica's part; the rows are then gathered over the language replica.

    Returns ``(group, sources, part)``: the ranks of the language replica (the gather's group, in order), the
    positions in ``group`` of one rank per encoder replica (tensor-parallel rank 0), in sample order, and which
    of those ``k`` parts of the language replica's samples this rank encodes.
    """
    language_dp, _, _ = language.coords(rank)
    group = [language.rank_of(language_dp, 0, tp_rank) for tp_rank in range(language.tp)]
    share = encoder.dp_size // language.dp_size
    sources = [index for index, member in enumerate(group) if encoder.coords(member)[2] == 0]
    part = encoder.coords(rank)[0] - language_dp * share
    if len(sources) != share or not 0 <= part < share:
        raise ValueError(f"rank {rank}: encoder layout {encoder} does not split the samples of language layout "
                         f"{language} over the language replica's ranks")
    return group, sources, part


def role_of(rank: int, layouts: Mapping[str, ModuleLayout]) -> RankRole:
    """The role of ``rank``: every module whose span contains it, with stage and replica."""
    held = {name: layout for name, layout in layouts.items() if layout.contains(rank)}
    if not held:
        spans = {name: layout.span_text() for name, layout in layouts.items()}
        raise ValueError(f"rank {rank} is in no module's span {spans}")
    coords = {name: layout.coords(rank) for name, layout in held.items()}
    return RankRole(
        rank=rank,
        stages={name: stage for name, (_, stage, _) in coords.items()},
        dp_rank={name: dp_rank for name, (dp_rank, _, _) in coords.items()},
        num_stages={name: layout.pp for name, layout in held.items()},
        tp_rank={name: tp_rank for name, (_, _, tp_rank) in coords.items()},
    )
