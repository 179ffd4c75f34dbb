"""The figures users look at: TensorBoard scalars of a run, FLOPs per module, and the step's one reduction."""

from __future__ import annotations

import copy

import pytest
import torch

from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.training.flops import module_flops
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.parity.test_layout_parity import _config


def _trainer(raw):
    cfg = config_from_dict(copy.deepcopy(raw))
    return Trainer(cfg, DistributedContext(rank=0, world_size=1, device=torch.device("cpu")), plan_run(cfg, 1))


def test_tensorboard_has_every_figure(tmp_path, capsys):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    raw = _config(audio=True)
    raw["run_dir"] = str(tmp_path / "run")
    raw["train"].update({"steps": 3, "tensorboard": True, "peak_flops": 1e11})
    history = _trainer(raw).train()
    events = accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"loss/train", "grad_norm/total", "grad_norm/images", "grad_norm/audio", "grad_norm/language",
                "lr/images", "lr/audio", "lr/language", "throughput/loss_tokens_per_s", "time/step_s",
                "idle/rank0", "memory/peak_mib"}
    assert expected <= tags, expected - tags
    losses = [event.value for event in events.Scalars("loss/train")]
    assert losses == pytest.approx([m.loss for m in history])
    summary = capsys.readouterr().out
    assert "model FLOPs per step: images" in summary and "MFU" in summary and "train.peak_flops" in summary


def test_flops_count_every_parameter_and_token_of_a_module():
    raw = _config()
    trainer = _trainer(raw)
    trainer.train_step()
    cfg = trainer.cfg
    language_params = sum(p.numel() for p in trainer.model.language.parameters())
    tokens = cfg.train.global_batch_size * cfg.data.seq_length
    assert trainer.last_step.module_flops["language"] == module_flops(language_params, tokens, runs_backward=True)
    assert trainer.last_step.module_flops["images"] > 0


def test_a_frozen_module_on_the_gradient_path_counts_no_weight_gradients():
    assert module_flops(10, 3, runs_backward=False) == 2 * 10 * 3
    assert module_flops(10, 3, runs_backward=True, trains=False) == 4 * 10 * 3
    assert module_flops(10, 3, runs_backward=True) == 6 * 10 * 3
    raw = _config()
    raw["optim"]["freeze"] = ["language"]
    trainer = _trainer(raw)
    trainer.train_step()
    cfg = trainer.cfg
    language_params = sum(p.numel() for p in trainer.model.language.parameters())
    tokens = cfg.train.global_batch_size * cfg.data.seq_length
    assert trainer.last_step.module_flops["language"] == 4 * language_params * tokens
