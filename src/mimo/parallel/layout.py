"""Per-module parallel layouts: rank arithmetic, whole-world validation and the role of one rank.

Pure: nothing here creates a process group. Rank order inside one module's span is tp fastest, then dp,
then pp, so the ranks of one pipeline stage are contiguous::

    rank = rank_offset + (stage * dp + dp_rank) * tp + tp_rank

Example: ``ModuleLayout(dp=2, pp=2, rank_offset=4)`` spans ranks 4..7; stage 0 is ``[4, 5]`` (replicas 0, 1)
and stage 1 is ``[6, 7]``.
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
    "placement_of",
    "role_of",
    "validate_layouts",
]


class Placement(StrEnum):
    """How the modules share ranks."""

    COLOCATED = "colocated"
    """Every module spans the same ranks (pp == 1); hand-offs between modules are local."""
    NON_COLOCATED = "non_colocated"
    """Modules sit on disjoint rank spans that tile the world; a rank holds exactly one module."""


@dataclass(frozen=True)
class ModuleLayout:
    """The parallel layout of one module on the contiguous ranks ``[rank_offset, rank_offset + size)``."""

    dp: int = 1
    pp: int = 1
    tp: int = 1
    rank_offset: int = 0

    def __post_init__(self) -> None:
        for name in ("dp", "pp", "tp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModuleLayout.{name} must be a positive integer, got {value!r} in {self}")
        offset = self.rank_offset
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"ModuleLayout.rank_offset must be a non-negative integer, got {offset!r} in {self}")

    @property
    def size(self) -> int:
        return self.dp * self.pp * self.tp

    @property
    def ranks(self) -> range:
        return range(self.rank_offset, self.rank_offset + self.size)

    def span_text(self) -> str:
        """The span as ``[first, last]`` for error messages."""
        return f"[{self.ranks.start}, {self.ranks.stop - 1}]"

    def contains(self, rank: int) -> bool:
        return rank in self.ranks

    def coords(self, rank: int) -> tuple[int, int, int]:
        """``(dp_rank, stage, tp_rank)`` of a global rank inside this span."""
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is outside the span {self.span_text()} of {self}")
        local = rank - self.rank_offset
        replica_major, tp_rank = divmod(local, self.tp)
        stage, dp_rank = divmod(replica_major, self.dp)
        return dp_rank, stage, tp_rank

    def rank_of(self, dp_rank: int, stage: int, tp_rank: int = 0) -> int:
        """The global rank holding ``(dp_rank, stage, tp_rank)``."""
        if not (0 <= dp_rank < self.dp and 0 <= stage < self.pp and 0 <= tp_rank < self.tp):
            raise ValueError(
                f"coordinates dp_rank={dp_rank}, stage={stage}, tp_rank={tp_rank} are outside {self}"
            )
        return self.rank_offset + (stage * self.dp + dp_rank) * self.tp + tp_rank

    def stage_of(self, rank: int) -> int:
        return self.coords(rank)[1]

    def stage_ranks(self, stage: int) -> list[int]:
        """Every rank of one pipeline stage, replica-major (tp fastest)."""
        return [self.rank_of(d, stage, t) for d in range(self.dp) for t in range(self.tp)]

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
    unsupported = {name: layout.tp for name, layout in layouts.items() if layout.tp != 1}
    if unsupported:
        raise ValueError(f"tp > 1 is not supported yet, got tp {unsupported}")
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
    pipelined = {name: layout.pp for name, layout in layouts.items() if layout.pp != 1}
    if pipelined:
        raise ValueError(
            f"colocated modules (all on the same ranks) must have pp == 1, got pp {pipelined}"
        )
    # Equal spans with pp == 1 and tp == 1 already mean equal dp, so there is no separate dp check.
    layout = next(iter(layouts.values()))
    if layout.ranks != range(world_size):
        raise ValueError(
            f"colocated modules span ranks {layout.span_text()} but must span the world [0, {world_size - 1}]"
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
    for (name_a, a), (name_b, b) in combinations(layouts.items(), 2):
        if max(a.dp, b.dp) % min(a.dp, b.dp):
            raise ValueError(
                f"dp sizes must divide one another: {name_a!r} has dp {a.dp}, {name_b!r} has dp {b.dp}"
            )
    for name, layout in layouts.items():
        if micro_batch_size % layout.dp:
            raise ValueError(
                f"micro_batch_size {micro_batch_size} is not divisible by dp {layout.dp} of module {name!r}"
            )


@dataclass(frozen=True)
class RankRole:
    """What one rank holds: for each module on it, the pipeline stage and the data-parallel replica."""

    rank: int
    stages: dict[str, int]
    """Module -> stage index held by this rank (every module at stage 0 when colocated)."""
    dp_rank: dict[str, int]
    num_stages: dict[str, int]
    """Module -> pp of that module, for the modules on this rank."""

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.stages)

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
    )
