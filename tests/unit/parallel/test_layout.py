"""ModuleLayout rank arithmetic, whole-world validation and per-rank roles."""

from __future__ import annotations

import re

import pytest

from mimo.parallel.layout import ModuleLayout, Placement, RankRole, placement_of, role_of, validate_layouts

L = ModuleLayout


def _enumerate_coords(layout: ModuleLayout) -> dict[int, tuple[int, int, int]]:
    """Rank -> (dp_rank, stage, tp_rank) by counting in the documented order: tp fastest, then dp, then pp."""
    coords, rank = {}, layout.rank_offset
    for stage in range(layout.pp):
        for dp_rank in range(layout.dp):
            for tp_rank in range(layout.tp):
                coords[rank] = (dp_rank, stage, tp_rank)
                rank += 1
    return coords


@pytest.mark.parametrize(
    "layout", [L(), L(dp=2), L(pp=3), L(dp=2, pp=2, rank_offset=4), L(dp=3, pp=2, tp=2, rank_offset=1)]
)
def test_coords_and_rank_of_follow_tp_dp_pp_order(layout: ModuleLayout) -> None:
    expected = _enumerate_coords(layout)
    assert list(layout.ranks) == list(expected)
    assert layout.size == len(expected)
    for rank, (dp_rank, stage, tp_rank) in expected.items():
        assert layout.coords(rank) == (dp_rank, stage, tp_rank)
        assert layout.rank_of(dp_rank, stage, tp_rank) == rank
        assert layout.stage_of(rank) == stage


def test_stage_and_replica_ranks() -> None:
    layout = L(dp=2, pp=2, rank_offset=4)
    assert layout.stage_ranks(0) == [4, 5]
    assert layout.stage_ranks(1) == [6, 7]
    assert layout.replica_ranks(0) == [4, 6]
    assert layout.replica_ranks(1) == [5, 7]


def test_coords_outside_span_and_bad_coordinates_raise() -> None:
    layout = L(dp=2, rank_offset=2)
    with pytest.raises(ValueError, match=r"rank 1 is outside the span \[2, 3\]"):
        layout.coords(1)
    with pytest.raises(ValueError, match="dp_rank=2, stage=0"):
        layout.rank_of(2, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dp": 0}, "ModuleLayout.dp must be a positive integer, got 0"),
        ({"pp": -1}, "ModuleLayout.pp must be a positive integer, got -1"),
        ({"tp": 0}, "ModuleLayout.tp must be a positive integer, got 0"),
        ({"rank_offset": -2}, "ModuleLayout.rank_offset must be a non-negative integer, got -2"),
    ],
)
def test_non_positive_sizes_and_negative_offset_raise(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ModuleLayout(**kwargs)


def _validate(layouts: dict[str, ModuleLayout], world_size: int, micro_batch_size: int = 4) -> Placement:
    return validate_layouts(
        layouts, world_size=world_size, micro_batch_size=micro_batch_size, module_names=list(layouts)
    )


def test_valid_non_colocated_and_colocated_layouts() -> None:
    assert _validate({"images": L(dp=2), "language": L(pp=2, rank_offset=2)}, 4) is Placement.NON_COLOCATED
    assert _validate({"images": L(dp=2), "language": L(dp=2)}, 2) is Placement.COLOCATED
    assert _validate({"language": L(pp=4)}, 4) is Placement.NON_COLOCATED


@pytest.mark.parametrize(
    ("layouts", "world_size", "micro_batch_size", "message"),
    [
        (
            {"images": L(dp=2), "language": L(pp=2, rank_offset=1)},
            3,
            4,
            r"modules 'images' \(ranks \[0, 1\]\) and 'language' \(ranks \[1, 2\]\) overlap",
        ),
        (
            {"images": L(), "language": L(pp=2, rank_offset=2)},
            3,
            4,
            r"layouts leave ranks \[1\] without a module and place ranks \[3\] outside world_size 3",
        ),
        (
            {"images": L(), "language": L(pp=2, rank_offset=1)},
            4,
            4,
            r"layouts cover 3 ranks \(images: \[0, 0\], language: \[1, 2\]\) but world_size is 4",
        ),
        (
            {"images": L(dp=2), "language": L(dp=3, rank_offset=2)},
            5,
            6,
            r"dp sizes must divide one another: 'images' has dp 2, 'language' has dp 3",
        ),
        (
            {"images": L(dp=4), "language": L(dp=2, rank_offset=4)},
            6,
            2,
            r"micro_batch_size 2 is not divisible by dp 4 of module 'images'",
        ),
        (
            {"images": L(tp=2), "language": L(dp=2)},
            2,
            4,
            r"colocated module 'images' has data-parallel size 1 \(tp 2\), not a multiple of the language model's 2",
        ),
        (
            {"images": L(pp=2), "language": L(pp=2)},
            2,
            4,
            r"colocated encoders must have pp == 1 \(only the language model may be pipelined over their ranks\), "
            r"got pp \{'images': 2\}",
        ),
        (
            {"images": L(pp=2), "language": L(dp=2)},
            2,
            4,
            r"colocated modules must have pp == 1 \(or a pipelined language model\), got pp \{'images': 2\}",
        ),
        (
            {"images": L(dp=2), "language": L(dp=2, rank_offset=1)},
            3,
            4,
            r"modules 'images' \(ranks \[0, 1\]\) and 'language' \(ranks \[1, 2\]\) overlap",
        ),
        (
            {"images": L(dp=2, rank_offset=1), "language": L(dp=2, rank_offset=1)},
            3,
            4,
            r"colocated modules span ranks \[1, 2\] but must span the world \[0, 2\]",
        ),
        ({"language": L()}, 0, 4, r"world_size \(0\) and micro_batch_size \(4\) must be positive"),
    ],
)
def test_layout_errors_name_the_values(
    layouts: dict[str, ModuleLayout], world_size: int, micro_batch_size: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _validate(layouts, world_size, micro_batch_size)


def test_unknown_and_missing_modules_are_named() -> None:
    layouts = {"images": L(), "language": L(rank_offset=1)}
    with pytest.raises(ValueError, match=r"layouts name unknown modules \['images'\]; the modules are \['language'\]"):
        validate_layouts(layouts, world_size=2, micro_batch_size=1, module_names=["language"])
    with pytest.raises(ValueError, match=r"modules \['audio'\] have no layout"):
        validate_layouts(layouts, world_size=2, micro_batch_size=1, module_names=["images", "audio", "language"])


def test_single_module_is_never_colocated() -> None:
    assert placement_of({"language": L(pp=2)}) is Placement.NON_COLOCATED


def test_roles_non_colocated() -> None:
    layouts = {"images": L(pp=2), "language": L(dp=2, pp=2, rank_offset=2)}
    roles = {rank: role_of(rank, layouts) for rank in range(6)}
    assert roles[0] == RankRole(rank=0, stages={"images": 0}, dp_rank={"images": 0}, num_stages={"images": 2},
                                tp_rank={"images": 0})
    assert roles[0].needs_modality_data("images") and not roles[1].needs_modality_data("images")
    assert roles[1].is_last_stage("images") and not roles[1].holds("language")
    assert [rank for rank, role in roles.items() if role.needs_tokens] == [2, 3]
    assert [rank for rank, role in roles.items() if role.needs_labels] == [4, 5]
    assert [rank for rank, role in roles.items() if role.is_loss_stage] == [4, 5]
    assert roles[5].dp_rank == {"language": 1} and roles[5].stages == {"language": 1}
    assert not roles[2].needs_modality_data("images")


def test_roles_colocated_hold_every_module_at_stage_zero() -> None:
    layouts = {"images": L(dp=2), "language": L(dp=2)}
    role = role_of(1, layouts)
    assert role.modules == ("images", "language")
    assert role.stages == {"images": 0, "language": 0} and role.dp_rank == {"images": 1, "language": 1}
    assert role.needs_modality_data("images") and role.needs_tokens and role.needs_labels and role.is_loss_stage


def test_role_errors() -> None:
    layouts = {"language": L(pp=2)}
    with pytest.raises(ValueError, match=r"rank 2 is in no module's span \{'language': '\[0, 1\]'\}"):
        role_of(2, layouts)
    with pytest.raises(ValueError, match="'language' is not a modality"):
        role_of(0, layouts).needs_modality_data("language")
