"""A non-finite gradient on one rank skips the update on every rank, and training goes on afterwards."""

from __future__ import annotations

import copy

import pytest
import torch

from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.errors import NonFiniteError
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.distributed.launcher import run_ranks
from tests.parity.test_layout_parity import _config, _layout

pytestmark = pytest.mark.distributed


def _poison_first_step(rank: int, world_size: int, raw: dict) -> tuple[list[bool], bool, bool]:
    cfg = config_from_dict(copy.deepcopy(raw))
    trainer = Trainer(cfg, DistributedContext(rank=rank, world_size=world_size, device=torch.device("cpu")),
                      plan_run(cfg, world_size))
    calls = {"count": 0}
    if rank == 1:  # the language model's first stage; the other ranks see only finite gradients

        def poison(grad: torch.Tensor) -> torch.Tensor:
            calls["count"] += 1
            return grad * float("nan") if calls["count"] == 1 else grad

        trainer.params[0].register_hook(poison)
    before = [p.detach().clone() for p in trainer.params]
    first = trainer.train_step()
    unchanged = all(torch.equal(a, p) for a, p in zip(before, trainer.params))
    second = trainer.train_step()
    moved = any(not torch.equal(a, p) for a, p in zip(before, trainer.params))
    return [first.skipped, second.skipped], unchanged, moved


def test_a_nan_gradient_on_one_rank_skips_the_step_everywhere(tmp_path):
    raw = _config(layout=_layout(images=(1, 1, 0), language=(1, 2, 1)))
    results = run_ranks(3, _poison_first_step, raw, tmp_path=tmp_path)
    for rank, (skipped, unchanged, moved) in enumerate(results):
        assert skipped == [True, False], f"rank {rank}: {skipped}"
        assert unchanged, f"rank {rank} updated its parameters on the skipped step"
        assert moved, f"rank {rank} did not train after the skipped step"


def _single_process_trainer(raw: dict) -> Trainer:
    cfg = config_from_dict(copy.deepcopy(raw))
    return Trainer(cfg, DistributedContext(rank=0, world_size=1, device=torch.device("cpu")), plan_run(cfg, 1))


def test_stop_policy_names_the_step_module_and_microbatch_of_a_nan_loss():
    raw = _config()
    raw["train"]["on_nonfinite"] = "stop"
    trainer = _single_process_trainer(raw)
    calls = {"count": 0}

    def nan_on_second_microbatch(module, inputs, output):
        calls["count"] += 1
        return output * float("nan") if calls["count"] == 2 else output

    trainer.model.language.head.register_forward_hook(nan_on_second_microbatch)
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite loss nan in module 'language' \(first at microbatch 1\)"):
        trainer.train_step()


def test_stop_policy_names_the_module_of_a_nan_gradient():
    raw = _config()
    raw["train"]["on_nonfinite"] = "stop"
    trainer = _single_process_trainer(raw)
    image_parameter = next(trainer.model.modalities["images"].parameters())
    image_parameter.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite gradient in module\(s\) \['images'\]"):
        trainer.train_step()
