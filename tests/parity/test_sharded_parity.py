"""Sharded data parallelism (``dp_shard``, FSDP2) trains exactly like one process (loss and weights, fp32, 1e-5).

Same cases and oracle as ``test_layout_parity``: 3 SGD steps (one AdamW case) on gloo processes, compared with
``reference_run``; then a checkpoint saved under ``dp_shard: 2`` resumed under ``dp: 1`` and the other way round.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from mimo.config import config_from_dict
from mimo.model import MimoModel
from tests.distributed.test_checkpoint_resume import _raw, _run
from tests.parity.harness import assert_adamw_run_matches, assert_run_matches_reference
from tests.parity.test_layout_parity import STEPS, _config

pytestmark = pytest.mark.distributed


def _entry(dp: int = 1, pp: int = 1, offset: int = 0, shard: int = 1) -> dict[str, int]:
    return {"dp": dp, "pp": pp, "rank_offset": offset, "dp_shard": shard}


CASES = {
    # colocated: images replicated on both ranks, the language model sharded over them
    "colocated_language_dp_shard2": (2, _config(layout={"images": _entry(dp=2), "language": _entry(shard=2)})),
    # colocated, both modules sharded
    "colocated_both_dp_shard2": (2, _config(layout={"images": _entry(shard=2), "language": _entry(shard=2)})),
    # HSDP: two replicas of two shards, next to images replicated four times
    "colocated_language_hsdp_2x2": (4, _config(layout={"images": _entry(dp=4), "language": _entry(dp=2, shard=2)})),
    # a single language stage sharded, fan-out from one image rank
    "images1_language_dp_shard2": (3, _config(layout={"images": _entry(), "language": _entry(offset=1, shard=2)})),
    # pipeline stages sharded
    "images1_language_pp2_dp_shard2": (
        5, _config(layout={"images": _entry(), "language": _entry(pp=2, offset=1, shard=2)})
    ),
    "images_dp_shard2_language_pp2_dp_shard2": (
        6, _config(layout={"images": _entry(shard=2), "language": _entry(pp=2, offset=2, shard=2)})
    ),
}


def _initial(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = config_from_dict(copy.deepcopy(raw))
    return {name: t.detach().clone() for name, t in MimoModel(cfg.model, seed=cfg.train.seed).state_dict().items()}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_layout_matches_single_process_reference(case, tmp_path):
    world_size, raw = CASES[case]
    assert_run_matches_reference(raw, STEPS, world_size=world_size, tmp_path=tmp_path, initial=_initial(raw))


ADAMW = (
    5,
    {
        **_config(layout={"images": _entry(), "language": _entry(pp=2, offset=1, shard=2)}),
        "optim": {"default": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                  "modules": {"images": {"name": "adamw", "lr": 1e-2, "beta2": 0.99}},
                  "lr_schedule": {"warmup_steps": 2, "decay": "constant"}, "clip_grad": 1.0},
    },
)


@pytest.mark.timeout(120)
def test_sharded_adamw_matches_reference(tmp_path):
    """AdamW state sharded by FSDP2 inside pipeline stages: loss within 1e-5, weights within 1e-4."""
    world_size, raw = ADAMW
    assert_adamw_run_matches(raw, STEPS, world_size=world_size, tmp_path=tmp_path, initial=_initial(raw),
                             max_lr=1e-2)


# --- Checkpoints: DCP reshards FSDP2's DTensor shards to whole tensors and back -------------------------------

SHARDED = {"images": _entry(), "language": _entry(pp=2, offset=1, shard=2)}  # 5 ranks
PLAIN = {"images": _entry(), "language": _entry(pp=2, offset=1)}  # 3 ranks
HSDP = {"images": _entry(dp=4), "language": _entry(dp=2, shard=2)}  # 4 ranks, colocated


def _fresh(folder: Path) -> Path:
    """A folder of its own for each world's file store: a store file left by the previous world must not be
    read by the next one."""
    folder.mkdir(parents=True)
    return folder


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("saved", "saved_world", "resumed", "resumed_world"),
                         [(SHARDED, 5, PLAIN, 3), (PLAIN, 3, SHARDED, 5), (HSDP, 4, {}, 1)],
                         ids=["dp_shard2_to_dp1", "dp1_to_dp_shard2", "hsdp_to_one_process"])
def test_sharded_checkpoint_reshards(saved, saved_world, resumed, resumed_world, tmp_path):
    full = _run(saved_world, _raw(saved, tmp_path / "full"), _fresh(tmp_path / "store-full"))
    checkpoint = str(tmp_path / "full" / "checkpoints" / "step_00000003")
    again = _run(resumed_world, _raw(resumed, tmp_path / "resumed"), _fresh(tmp_path / "store-resumed"),
                 resume=checkpoint)
    assert len(again) == 3
    for got, want in zip(again, full[3:]):
        assert abs(got - want) <= 1e-6 * abs(want), (again, full[3:])


@pytest.mark.timeout(180)
def test_sharded_resume_is_bit_exact(tmp_path):
    full = _run(5, _raw(SHARDED, tmp_path / "full"), _fresh(tmp_path / "store-full"))
    checkpoint = str(tmp_path / "full" / "checkpoints" / "step_00000003")
    resumed = _run(5, _raw(SHARDED, tmp_path / "resumed"), _fresh(tmp_path / "store-resumed"), resume=checkpoint)
    assert resumed == full[3:]
