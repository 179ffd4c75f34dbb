"""One process: the loss and the weights do not depend on how the global batch is cut into microbatches."""

from __future__ import annotations

import copy

import torch

from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.model import MimoModel
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.parity.harness import assert_same_training
from tests.parity.reference import reference_run
from tests.parity.test_layout_parity import STEPS, _config


def _train(raw: dict, num_microbatches: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    raw = copy.deepcopy(raw)
    raw["train"]["num_microbatches"] = num_microbatches
    cfg = config_from_dict(raw)
    trainer = Trainer(cfg, DistributedContext(rank=0, world_size=1, device=torch.device("cpu")), plan_run(cfg, 1))
    losses = [trainer.train_step().loss for _ in range(STEPS)]
    return losses, {name: t.detach().clone() for name, t in trainer.model.state_dict().items()}


def test_one_and_four_microbatches_give_the_same_losses_and_weights():
    raw = _config(audio=True)
    initial = {n: t.clone() for n, t in MimoModel(config_from_dict(copy.deepcopy(raw)).model).state_dict().items()}
    one = _train(raw, 1)
    four = _train(raw, 4)
    assert_same_training(*four, *one, initial=initial)
    assert_same_training(*one, *reference_run(raw, STEPS), initial=initial)
