"""Activation checkpointing recomputes the chosen transformer layers and changes no loss and no gradient.

Each case runs the whole ``MimoModel`` (language model and every encoder) forward and backward on one synthetic
batch with checkpointing off, ``full`` and every 2nd layer, and compares the loss and every parameter's gradient
(fp32: equal to relative 1e-6, in practice bit for bit). That checkpointing really happened is checked twice:
``torch.utils.checkpoint.checkpoint`` is called once per chosen layer, and the tensors autograd keeps for the
backward shrink.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

import mimo.model.compute as compute
from mimo.config import ModuleComputeConfig, config_from_dict
from mimo.data import LOSS_MASK, SyntheticMimoDataset, collate
from mimo.model import MimoModel
from mimo.model.compute import apply_compute
from tests.hf_fixtures import tiny_hf_models  # noqa: F401  (fixture)
from tests.parity.harness import relative_error

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def _builtin_config() -> dict:
    """configs/tiny_avlm.yaml (images + audio) with more layers, so that "every 2nd layer" picks some."""
    raw = yaml.safe_load((CONFIGS / "tiny_avlm.yaml").read_text())
    raw["model"]["language"]["num_layers"] = 4
    for modality in raw["model"]["modalities"].values():
        for encoder in modality["encoders"].values():
            encoder["num_layers"] = 3
    raw["data"]["num_samples"] = 16
    return raw


def _hf_config(models: dict[str, Path]) -> dict:
    return {
        "model": {
            "language": {"hf": str(models["language"])},
            "modalities": {
                "images": {"placeholder_id": 3, "encoders": {"siglip": {"hf": str(models["siglip"])}}},
                "audio": {"placeholder_id": 4, "encoders": {"whisper": {"hf": str(models["whisper"])}}},
            },
        },
        "data": {"num_samples": 16, "seq_length": 56, "max_items_per_sample": 2, "min_frames": 3, "max_frames": 16},
    }


def _layer_counts(cfg) -> dict[str, int]:  # noqa: ANN001
    counts = {"language": cfg.model.language.num_layers}
    for name, modality in cfg.model.modalities.items():
        counts[name] = sum(encoder.num_layers for encoder in modality.encoders.values())
    return counts


def _train_once(raw: dict, setting: str | int, monkeypatch: pytest.MonkeyPatch):
    """(loss, {name: grad}, bytes saved for the backward, number of checkpointed layer calls)."""
    cfg = config_from_dict(copy.deepcopy(raw))
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    batch = collate([dataset[i] for i in range(6)])
    model = MimoModel(cfg.model, seed=0)
    apply_compute(model, {m: ModuleComputeConfig(activation_checkpointing=setting) for m in cfg.model.module_names})
    calls = []
    real_checkpoint = compute.checkpoint

    def counting(function, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(compute, "checkpoint", counting)
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(0)  # dropout, where a model has it, draws the same masks (checkpoint replays the RNG)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        per_token = model(**batch)
    mask = batch[LOSS_MASK]
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    assert all(flag is False for flag in calls), "checkpoint must run non-reentrant"
    return loss.detach(), grads, saved[0], len(calls), _layer_counts(cfg)


def _assert_checkpointing_changes_nothing(raw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    loss, grads, saved, calls, layers = _train_once(raw, "none", monkeypatch)
    assert calls == 0
    assert len(grads) > 10
    for setting, every in (("full", 1), (2, 2)):
        got_loss, got_grads, got_saved, got_calls, _ = _train_once(raw, setting, monkeypatch)
        expected_calls = sum(len(range(0, count, every)) if count else 0 for count in layers.values())
        # Per module the layers are numbered 0..n-1 per encoder; with one encoder per modality this is exact.
        assert got_calls == expected_calls, f"{setting}: {got_calls} checkpointed layer calls, expected {expected_calls}"
        assert got_saved < saved, f"{setting}: {got_saved} bytes kept for the backward, {saved} without checkpointing"
        assert relative_error(got_loss, loss) <= 1e-6, f"{setting}: loss {got_loss} vs {loss}"
        assert sorted(got_grads) == sorted(grads)
        for name, want in grads.items():
            error = relative_error(got_grads[name], want)
            assert error <= 1e-6, f"{setting}: gradient of {name} differs by {error:.2e}"


@pytest.mark.timeout(60)
def test_builtin_model_checkpointing_keeps_loss_and_gradients(monkeypatch):
    _assert_checkpointing_changes_nothing(_builtin_config(), monkeypatch)


@pytest.mark.timeout(120)
def test_hf_model_checkpointing_keeps_loss_and_gradients(tiny_hf_models, monkeypatch):
    _assert_checkpointing_changes_nothing(_hf_config(tiny_hf_models), monkeypatch)


@pytest.mark.timeout(30)
def test_checkpointing_is_per_module(monkeypatch):
    raw = _builtin_config()
    cfg = config_from_dict({**raw, "train": {"modules": {"audio": {"activation_checkpointing": "full"}}}})
    model = MimoModel(cfg.model, seed=0)
    apply_compute(model, {m: cfg.train.compute_for(m) for m in cfg.model.module_names})
    assert model.modalities["audio"].encoders["mel"].checkpoint_every == 1
    assert model.modalities["images"].encoders["vit"].checkpoint_every == 0
    assert model.language.checkpoint_every == 0


@pytest.mark.timeout(30)
def test_a_family_without_checkpointing_support_is_named():
    cfg = config_from_dict(_builtin_config())
    model = MimoModel(cfg.model, seed=0)
    model.language = torch.nn.Linear(2, 2)  # a user's family that does not run its layers through run_layer
    with pytest.raises(ValueError, match="module 'language': Linear does not support activation checkpointing"):
        apply_compute(model, {"language": ModuleComputeConfig(activation_checkpointing="full")})
