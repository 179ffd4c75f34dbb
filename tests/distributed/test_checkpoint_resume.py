"""Checkpoints: an exact resume on the same layout, a resume on a different layout, an interrupted save.

AdamW with warmup and cosine decay, so optimizer state and LR schedule both have to come back right.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from mimo.checkpoint import CheckpointStore
from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.distributed.launcher import run_ranks
from tests.parity.test_layout_parity import _config, _layout

pytestmark = pytest.mark.distributed

COLOCATED = _layout()
IMAGES_LANGUAGE_PP2 = _layout(images=(1, 1, 0), language=(1, 2, 1))
IMAGES_DP2_LANGUAGE_PP2 = _layout(images=(2, 1, 0), language=(1, 2, 2))
IMAGES_DP1_LANGUAGE_DP2 = _layout(images=(1, 1, 0), language=(2, 1, 1))


def _raw(layout: dict, root: Path, *, steps: int = 6, every: int = 3) -> dict[str, Any]:
    raw = _config(layout=layout)
    raw["optim"] = {"default": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
                    "lr_schedule": {"warmup_steps": 2, "decay": "cosine"}, "clip_grad": 1.0}
    raw["train"]["steps"] = steps
    raw["run_dir"] = str(root / "run")
    raw["checkpoint"] = {"dir": str(root / "checkpoints"), "every_steps": every}
    return raw


def _train(rank: int, world_size: int, raw: dict, resume: str | None) -> list[float]:
    cfg = config_from_dict(copy.deepcopy(raw))
    trainer = Trainer(cfg, DistributedContext(rank=rank, world_size=world_size, device=torch.device("cpu")),
                      plan_run(cfg, world_size))
    if resume is not None:
        trainer.resume(resume)
    return [metrics.loss for metrics in trainer.train()]


def _run(world_size: int, raw: dict, tmp_path: Path, resume: str | None = None) -> list[float]:
    if world_size == 1:
        return _train(0, 1, raw, resume)
    return run_ranks(world_size, _train, raw, resume, tmp_path=tmp_path)[0]


def _world(layout: dict) -> int:
    return sum(entry["dp"] * entry["pp"] for entry in layout.values()) or 1


@pytest.mark.parametrize(
    ("layout", "world"), [(COLOCATED, 2), (IMAGES_LANGUAGE_PP2, 3)], ids=["colocated_dp2", "images_language_pp2"]
)
def test_resume_at_step_3_gives_bit_identical_losses(layout, world, tmp_path):
    full = _run(world, _raw(layout, tmp_path / "full"), tmp_path)
    checkpoint = str(tmp_path / "full" / "checkpoints" / "step_00000003")
    resumed = _run(world, _raw(layout, tmp_path / "resumed"), tmp_path, resume=checkpoint)
    assert len(full) == 6 and len(resumed) == 3
    assert resumed == full[3:]


@pytest.mark.parametrize("layout", [COLOCATED, IMAGES_DP1_LANGUAGE_DP2], ids=["colocated_dp1", "images1_language_dp2"])
def test_checkpoint_reshards_to_another_layout(layout, tmp_path):
    full = _run(4, _raw(IMAGES_DP2_LANGUAGE_PP2, tmp_path / "full"), tmp_path)
    checkpoint = str(tmp_path / "full" / "checkpoints" / "step_00000003")
    resumed = _run(_world(layout), _raw(layout, tmp_path / "resumed"), tmp_path, resume=checkpoint)
    assert len(resumed) == 3
    for got, want in zip(resumed, full[3:]):
        assert abs(got - want) <= 1e-6 * abs(want), (resumed, full[3:])


def test_an_interrupted_save_leaves_latest_on_the_previous_checkpoint(tmp_path, monkeypatch):
    raw = _raw(COLOCATED, tmp_path)
    _run(1, {**raw, "train": {**raw["train"], "steps": 3}}, tmp_path)
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.resolve("latest").name == "step_00000003"

    def crash_during_commit(self, staging, step):
        # The ranks have written their shards; truncate one and die before the manifest and the rename.
        shard = next(p for p in Path(staging).rglob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:10])
        raise KeyboardInterrupt("simulated crash while saving")

    monkeypatch.setattr(CheckpointStore, "commit", crash_during_commit)
    with pytest.raises(KeyboardInterrupt):  # resumes at step 3, trains to 6, dies while saving step 6
        _run(1, raw, tmp_path, resume=str(tmp_path / "checkpoints"))
    monkeypatch.undo()
    assert store.resolve("latest").name == "step_00000003"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")], "no staging left?"
    store.verify(store.resolve("latest"))
    resumed = _run(1, {**raw, "checkpoint": {**raw["checkpoint"], "every_steps": 0, "at_end": False}}, tmp_path,
                   resume=str(tmp_path / "checkpoints"))
    full = _run(1, _raw(COLOCATED, tmp_path / "uninterrupted"), tmp_path)
    assert resumed == full[3:]


def test_freezing_a_trained_module_on_resume_keeps_its_trained_weights(tmp_path):
    raw = _raw(COLOCATED, tmp_path, steps=2, every=0)
    _run(1, raw, tmp_path)
    frozen = copy.deepcopy(raw)
    frozen["optim"]["freeze"] = ["images"]
    frozen["train"]["steps"] = 3
    cfg = config_from_dict(copy.deepcopy(frozen))
    trainer = Trainer(cfg, DistributedContext(rank=0, world_size=1, device=torch.device("cpu")), plan_run(cfg, 1))
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.resume(str(tmp_path / "checkpoints"))
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, initial[n])]
    assert any(n.startswith("modalities.images.") for n in moved), "the trained image weights were not restored"
    assert all(any(n.startswith(prefix) for n in moved) for prefix in ("language.", "modalities.images."))


def _resume_with_other_image_width(rank: int, world_size: int, raw: dict, checkpoint: str) -> str:
    cfg = config_from_dict(copy.deepcopy(raw))
    trainer = Trainer(cfg, DistributedContext(rank=rank, world_size=world_size, device=torch.device("cpu")),
                      plan_run(cfg, world_size))
    try:
        trainer.resume(checkpoint)
    except ValueError as error:
        return str(error)
    return "resumed"


def test_a_checkpoint_that_fits_only_some_ranks_stops_every_rank_with_the_reason(tmp_path):
    raw = _raw(IMAGES_LANGUAGE_PP2, tmp_path, steps=1, every=0)
    run_ranks(3, _train, raw, None, tmp_path=tmp_path)
    wider = copy.deepcopy(raw)
    wider["model"]["modalities"]["images"]["encoders"]["vit"]["hidden_size"] = 32
    messages = run_ranks(3, _resume_with_other_image_width, wider, str(tmp_path / "checkpoints"), tmp_path=tmp_path)
    assert "does not fit" in messages[0] and "modalities.images.encoders.vit" in messages[0]
    assert messages[1].startswith("rank 0 failed:") and messages[2].startswith("rank 0 failed:")
