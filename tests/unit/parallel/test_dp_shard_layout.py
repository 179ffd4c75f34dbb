"""``dp_shard``: the rank order of a sharded module's span, its data-parallel size, validation and routing."""

from __future__ import annotations

import re

import pytest

from mimo.comm.routing import plan_bridge, plan_stage_edges
from mimo.config import config_from_dict
from mimo.parallel.layout import ModuleLayout, role_of, validate_layouts
from mimo.training.run_plan import plan_run
from tests.hf_fixtures import tiny_hf_models  # noqa: F401

L = ModuleLayout


def test_span_is_pp_times_dp_times_dp_shard_in_stage_replica_shard_order() -> None:
    layout = L(dp=2, pp=2, dp_shard=2, rank_offset=1)
    assert layout.dp_size == 4 and layout.size == 8 and layout.ranks == range(1, 9)
    # Counted by hand: stage slowest, then replica, then shard.
    rank = 1
    for stage in range(2):
        for replica in range(2):
            for shard in range(2):
                dp_rank = replica * 2 + shard
                assert layout.coords(rank) == (dp_rank, stage, 0)
                assert layout.rank_of(dp_rank, stage) == rank
                assert layout.replica_and_shard(dp_rank) == (replica, shard)
                rank += 1
    assert layout.stage_ranks(1) == [5, 6, 7, 8]
    assert layout.replica_ranks(3) == [4, 8]


def test_roles_carry_the_combined_data_parallel_rank() -> None:
    layouts = {"images": L(), "language": L(pp=2, dp_shard=2, rank_offset=1)}
    assert [role_of(r, layouts).dp_rank for r in range(1, 5)] == [
        {"language": 0}, {"language": 1}, {"language": 0}, {"language": 1}
    ]
    assert role_of(4, layouts).stages == {"language": 1}


def test_bridge_and_stage_edges_route_samples_to_every_shard_rank() -> None:
    images, language = L(), L(pp=2, dp_shard=2, rank_offset=1)
    transfers = plan_bridge(images, language, micro_batch_size=4)
    assert [(t.src_rank, t.dst_rank, t.src_samples, t.dst_samples) for t in transfers] == [
        (0, 1, range(0, 2), range(0, 2)), (0, 2, range(2, 4), range(0, 2))
    ]
    edges = plan_stage_edges(language, 0, micro_batch_size=4)
    assert [(t.src_rank, t.dst_rank, t.src_samples) for t in edges] == [(1, 3, range(0, 2)), (2, 4, range(0, 2))]


def test_validation_uses_dp_times_dp_shard() -> None:
    layouts = {"images": L(dp=3), "language": L(dp=1, dp_shard=2, rank_offset=3)}
    with pytest.raises(ValueError, match=re.escape("'language' has dp * dp_shard = 1 * 2 = 2")):
        validate_layouts(layouts, world_size=5, micro_batch_size=6, module_names=list(layouts))
    with pytest.raises(ValueError, match=re.escape("micro_batch_size 6 is not divisible by dp * dp_shard = 2 * 2 = 4")):
        layouts = {"language": L(dp=2, dp_shard=2)}
        validate_layouts(layouts, world_size=4, micro_batch_size=6, module_names=["language"])
    # Colocated modules may split the same data-parallel size differently.
    layouts = {"images": L(dp=4), "language": L(dp=2, dp_shard=2)}
    validate_layouts(layouts, world_size=4, micro_batch_size=4, module_names=list(layouts))


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_bad_dp_shard_is_a_value_error_naming_the_field(value) -> None:
    with pytest.raises(ValueError, match=re.escape(f"ModuleLayout.dp_shard must be a positive integer, got {value!r}")):
        L(dp_shard=value)


def _raw(language: dict) -> dict:
    return {"model": {"language": {"vocab_size": 48, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                                   "max_seq_len": 48}, "modalities": {}},
            "layout": {"language": language}}


def test_config_accepts_dp_shard_and_plans_its_span() -> None:
    cfg = config_from_dict(_raw({"dp": 2, "dp_shard": 2}))
    layout = plan_run(cfg, 4).layouts["language"]
    assert (layout.dp, layout.dp_shard, layout.size) == (2, 2, 4)
    with pytest.raises(ValueError, match=re.escape("layouts cover 4 ranks")):
        plan_run(cfg, 2)


def test_config_rejects_a_bad_dp_shard() -> None:
    with pytest.raises(ValueError, match=re.escape("layout.language.dp_shard must be a positive integer, got 0")):
        config_from_dict(_raw({"dp_shard": 0}))


def test_sharding_a_hugging_face_encoder_is_refused_before_launch(tiny_hf_models) -> None:
    """Its slices skip the layers for a microbatch without items, which would desynchronise FSDP's collectives."""
    raw = {"model": {"language": {"hf": str(tiny_hf_models["language"])}, "modalities": {"images": {
               "placeholder": "<image>", "encoders": {"siglip": {"hf": str(tiny_hf_models["siglip"])}}}}},
           "layout": {"images": {"dp_shard": 2}, "language": {"rank_offset": 2}}}
    with pytest.raises(ValueError, match=re.escape("layout.images.dp_shard=2: sharding Hugging Face encoders "
                                                   "(siglip) is not supported yet")):
        config_from_dict(raw)
    raw["layout"] = {"images": {"dp": 2}, "language": {"dp_shard": 2}}  # the language model may be sharded
    assert config_from_dict(raw).layout["language"].dp_shard == 2
