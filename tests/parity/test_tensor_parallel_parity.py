"""Tensor parallelism (``tp``) trains exactly like one process (loss and weights, fp32, 1e-5).

Same oracle as ``test_layout_parity``: 3 SGD steps (one AdamW case) on gloo processes against ``reference_run``;
then a checkpoint saved under ``dp_shard: 2`` + ``tp: 2`` resumed under ``dp: 1`` and under a colocated layout.
"""

from __future__ import annotations

import pytest

from tests.distributed.test_checkpoint_resume import _raw, _run
from tests.parity.harness import assert_adamw_run_matches, assert_run_matches_reference
from tests.parity.test_layout_parity import STEPS, _config
from tests.parity.test_sharded_parity import _fresh, _initial

pytestmark = pytest.mark.distributed


def _entry(dp: int = 1, pp: int = 1, offset: int = 0, shard: int = 1, tp: int = 1) -> dict[str, int]:
    return {"dp": dp, "pp": pp, "rank_offset": offset, "dp_shard": shard, "tp": tp}


CASES = {
    # the language model split over two ranks, fed by one image rank (the bridge sends once, to tp rank 0)
    "images1_language_tp2": (3, _config(layout={"images": _entry(), "language": _entry(offset=1, tp=2)})),
    # the encoder split: its two ranks send one copy of the rows, fan-in into one language rank
    "images_tp2_language1": (3, _config(layout={"images": _entry(tp=2), "language": _entry(offset=2)})),
    # colocated, both split over the same two ranks
    "colocated_tp2": (2, _config(layout={"images": _entry(tp=2), "language": _entry(tp=2)})),
    # pipeline stages split: stage-to-stage hops go tp rank 0 to tp rank 0, relayed inside each stage
    "images1_language_pp2_tp2": (5, _config(layout={"images": _entry(), "language": _entry(pp=2, offset=1, tp=2)})),
    # FSDP2 over tensor-parallel DTensors (a 2-D mesh, strided shards) with two replicas reading their own
    # samples; the first step is clipped, so the norm must take every part of every split gradient once
    "images1_language_dp_shard2_tp2": (
        5, {**_config(layout={"images": _entry(), "language": _entry(offset=1, shard=2, tp=2)}),
            "optim": {"default": {"name": "sgd", "lr": 0.5}, "lr_schedule": {"decay": "constant"}, "clip_grad": 1.0}}
    ),
    # replicas of a split module: gradients summed over the ranks holding the same tensor-parallel part
    "images_tp2_language_dp2_tp2": (
        6, _config(layout={"images": _entry(tp=2), "language": _entry(dp=2, offset=2, tp=2)})
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
def test_tensor_parallel_layout_matches_single_process_reference(case, tmp_path):
    world_size, raw = CASES[case]
    assert_run_matches_reference(raw, STEPS, world_size=world_size, tmp_path=tmp_path, initial=_initial(raw))


@pytest.mark.timeout(120)
def test_tensor_parallel_adamw_matches_reference(tmp_path):
    """AdamW state of split parameters, with clipping over a norm summed from the parts: loss 1e-5, weights 1e-4."""
    raw = {
        **_config(layout={"images": _entry(tp=2), "language": _entry(offset=2, tp=2)}),
        "optim": {"default": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                  "modules": {"images": {"name": "adamw", "lr": 1e-2, "beta2": 0.99}},
                  "lr_schedule": {"warmup_steps": 2, "decay": "constant"}, "clip_grad": 1.0},
    }
    assert_adamw_run_matches(raw, STEPS, world_size=4, tmp_path=tmp_path, initial=_initial(raw), max_lr=1e-2)


# --- Checkpoints: DCP reshards tensor-parallel and FSDP2 DTensors to whole tensors ------------------------------

SPLIT = {"images": _entry(), "language": _entry(offset=1, shard=2, tp=2)}  # 5 ranks
PLAIN = {"images": _entry(), "language": _entry(offset=1)}  # 2 ranks


@pytest.mark.timeout(180)
def test_dp_shard_tp_checkpoint_resumes_under_dp1_and_colocated(tmp_path):
    full = _run(5, _raw(SPLIT, tmp_path / "full"), _fresh(tmp_path / "store-full"))
    checkpoint = str(tmp_path / "full" / "checkpoints" / "step_00000003")
    for name, layout, world in (("dp1", PLAIN, 2), ("colocated", {}, 2)):
        again = _run(world, _raw(layout, tmp_path / name), _fresh(tmp_path / f"store-{name}"), resume=checkpoint)
        assert len(again) == 3
        for got, want in zip(again, full[3:]):
            assert abs(got - want) <= 1e-6 * abs(want), (name, again, full[3:])


# --- Colocated modules with different layouts ---------------------------------------------------------------------

COLOCATED_CASES = {
    # each rank encodes half of the language replica's images; the rows are gathered over the tp pair
    "colocated_images_dp2_language_tp2": (2, _config(layout={"images": _entry(dp=2), "language": _entry(tp=2)})),
    # two language replicas of two tp ranks each, four image replicas
    "colocated_images_dp4_language_dp2_tp2": (
        4, _config(layout={"images": _entry(dp=4), "language": _entry(dp=2, tp=2)})
    ),
    # a language model pipelined over its encoder's ranks: each rank runs an image replica and a language stage;
    # rows cross to the language replica owning their samples, on the rank or to another one
    "colocated_images_dp4_language_pp2_dp2": (
        4, _config(layout={"images": _entry(dp=4), "language": _entry(dp=2, pp=2)})
    ),
    # a split encoder next to the pipeline: its leader receives the gradients and relays them on the rank pair
    "colocated_images_dp2_tp2_language_pp2_dp2": (
        4, _config(layout={"images": _entry(dp=2, tp=2), "language": _entry(dp=2, pp=2)})
    ),
    # each language stage sharded by FSDP2 over its two ranks, the encoder sharded over all four
    "colocated_images_shard4_language_pp2_shard2": (
        4, _config(layout={"images": _entry(shard=4), "language": _entry(shard=2, pp=2)})
    ),
    # two ranks, more microbatches than the two sends a channel may have in flight elsewhere
    "colocated_images_dp2_language_pp2": (
        2, _config(layout={"images": _entry(dp=2), "language": _entry(pp=2)}, num_microbatches=4)
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(COLOCATED_CASES))
def test_colocated_modules_with_different_layouts_match_reference(case, tmp_path):
    world_size, raw = COLOCATED_CASES[case]
    assert_run_matches_reference(raw, STEPS, world_size=world_size, tmp_path=tmp_path, initial=_initial(raw))


PIPELINED_OVER_ENCODERS = {"images": _entry(dp=4), "language": _entry(dp=2, pp=2)}  # 4 ranks


@pytest.mark.timeout(180)
def test_language_pipelined_over_encoders_resumes_exactly_and_reshards(tmp_path):
    """Saved with images dp 4 + language pp 2, dp 2 on the same 4 ranks: resumed there bit-exactly, and on a
    non-colocated layout (images | language, 2 ranks) within 1e-6."""
    full = _run(4, _raw(PIPELINED_OVER_ENCODERS, tmp_path / "full"), _fresh(tmp_path / "store-full"))
    checkpoint = str(tmp_path / "full" / "checkpoints" / "step_00000003")
    same = _run(4, _raw(PIPELINED_OVER_ENCODERS, tmp_path / "same"), _fresh(tmp_path / "store-same"),
                resume=checkpoint)
    assert same == full[3:]
    again = _run(2, _raw(PLAIN, tmp_path / "plain"), _fresh(tmp_path / "store-plain"), resume=checkpoint)
    assert len(again) == 3
    for got, want in zip(again, full[3:]):
        assert abs(got - want) <= 1e-6 * abs(want), (again, full[3:])
