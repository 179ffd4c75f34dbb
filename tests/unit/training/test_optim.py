"""LR schedule values, per-module optimizers, freezing, and gradient helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mimo.config import LRScheduleConfig, OptimConfig, OptimizerConfig, load_config
from mimo.model.mimo_model import MimoModel
from mimo.model.stages import LanguageStage, ModalityStage
from mimo.training import grads
from mimo.training.optim import ModuleOptimizers, apply_freezing, lr_factor, module_of, trainable_parameters

ROOT = Path(__file__).resolve().parents[3]


def test_warmup_is_linear_then_cosine_reaches_the_floor_at_the_last_step():
    schedule = LRScheduleConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(step, total_steps=14, schedule=schedule) for step in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[-1] == pytest.approx(0.1)
    midpoint = 4 + (14 - 4 - 1) / 2
    assert lr_factor(int(midpoint * 2) // 2, total_steps=14, schedule=schedule) <= 1.0
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))


def test_linear_and_constant_decay():
    linear = LRScheduleConfig(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert [lr_factor(s, total_steps=5, schedule=linear) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    constant = LRScheduleConfig(decay="constant")
    assert lr_factor(100, total_steps=5, schedule=constant) == 1.0


def test_each_module_gets_its_own_optimizer_kind_and_lr():
    language, images = nn.Linear(2, 2), nn.Linear(2, 2)
    config = OptimConfig(
        default=OptimizerConfig(name="adamw", lr=0.01),
        modules={"images": OptimizerConfig(name="sgd", lr=0.5)},
        lr_schedule=LRScheduleConfig(decay="constant"),
    )
    optimizers = ModuleOptimizers(
        {"language": list(language.parameters()), "images": list(images.parameters())}, config, total_steps=3
    )
    assert isinstance(optimizers.optimizers["language"], torch.optim.AdamW)
    assert isinstance(optimizers.optimizers["images"], torch.optim.SGD)
    assert optimizers.lrs() == {"language": 0.01, "images": 0.5}


def test_sgd_step_applies_lr_times_gradient():
    layer = nn.Linear(2, 1, bias=False)
    before = layer.weight.detach().clone()
    config = OptimConfig(default=OptimizerConfig(name="sgd", lr=0.5), lr_schedule=LRScheduleConfig(decay="constant"))
    optimizers = ModuleOptimizers({"language": list(layer.parameters())}, config, total_steps=1)
    layer.weight.grad = torch.tensor([[1.0, -2.0]])
    optimizers.step()
    assert torch.equal(layer.weight.detach(), before - 0.5 * torch.tensor([[1.0, -2.0]]))


def test_global_norm_and_clipping_match_torch():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(5))]
    reference = [nn.Parameter(p.detach().clone()) for p in params]
    for p, r in zip(params, reference):
        p.grad = torch.randn_like(p)
        r.grad = p.grad.clone()
    norm = math.sqrt(grads.squared_norm(params).item())
    expected = torch.nn.utils.clip_grad_norm_(reference, max_norm=0.5)
    assert norm == pytest.approx(expected.item(), rel=1e-6)
    grads.clip_grads(params, 0.5, norm)
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-6, atol=0)


def test_materialize_grads_fills_zeros_only_where_missing():
    present, missing = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    present.grad = torch.full((2,), 7.0)
    grads.materialize_grads([present, missing])
    assert torch.equal(present.grad, torch.full((2,), 7.0))
    assert torch.equal(missing.grad, torch.zeros(3))


def _two_stage_images() -> tuple[ModalityStage, ModalityStage]:
    """The tiny recipe's vision encoder (2 layers) pipelined over 2 stages: only the last one has the projection."""
    cfg = load_config(ROOT / "configs" / "tiny_vlm.yaml", ["model.modalities.images.encoders.vit.num_layers=2"])
    first, last = (ModalityStage(cfg.model, "images", stage=s, num_stages=2, seed=0) for s in range(2))
    assert first.modalities["images"].projection is None and last.modalities["images"].projection is not None
    return first, last


_FROZEN_PREFIXES = {"images": ("encoders.", "projection."), "images.encoders": ("encoders.",),
                    "images.projection": ("projection.",)}


@pytest.mark.parametrize(
    "freeze", [["images.projection"], ["images.encoders", "images.projection"], ["images.encoders"], ["images"]]
)
def test_freezing_a_part_works_on_every_stage_of_a_pipelined_modality(freeze):
    """A stage that lacks a frozen part (the projection lives on the last stage only) has nothing to freeze."""
    for stage in _two_stage_images():
        submodule = stage.modalities["images"]
        apply_freezing(stage, freeze)
        trainable = trainable_parameters(stage, ["images"])
        frozen = tuple(prefix for name in freeze for prefix in _FROZEN_PREFIXES[name])
        expected = [p for name, p in submodule.named_parameters() if not name.startswith(frozen)]
        assert trainable.get("images", []) == expected
        for name, parameter in submodule.named_parameters():
            assert parameter.requires_grad == any(parameter is p for p in expected), name


def test_frozen_projection_leaves_the_first_stage_fully_trainable_and_the_last_its_encoder_head():
    first, last = _two_stage_images()
    assert module_of(first, "images.projection") is None
    apply_freezing(first, ["images.projection"])
    apply_freezing(last, ["images.projection"])
    assert trainable_parameters(first, ["images"])["images"] == list(first.parameters())
    assert not any(p.requires_grad for p in last.modalities["images"].projection.parameters())
    assert trainable_parameters(last, ["images"])["images"] == list(last.modalities["images"].encoders.parameters())
    apply_freezing(first, ["images.encoders"])
    assert trainable_parameters(first, ["images"]) == {}


def test_module_of_names_a_module_the_model_does_not_hold():
    cfg = load_config(ROOT / "configs" / "tiny_vlm.yaml")
    model = MimoModel(cfg.model, seed=0)
    assert module_of(model, "images.projection") is model.modalities["images"].projection
    assert module_of(model, "language") is model.language
    images = ModalityStage(cfg.model, "images", seed=0)
    language = LanguageStage(cfg.model, stage=0, num_stages=1, layers=range(2), seed=0)
    for holder, name in [(model, "audio"), (model, "images.head"), (model, "language.encoders"),
                         (images, "language"), (language, "images.projection")]:
        with pytest.raises(ValueError, match="is not a module of this model slice"):
            module_of(holder, name)
