"""Freezing part of a pipelined modality from the command line: the frozen part keeps its initial weights."""

from __future__ import annotations

import pytest
import torch

from mimo.config import load_config
from mimo.export import load_safetensors
from mimo.model.mimo_model import MimoModel
from tests.e2e.test_cli import ROOT, SGD, mimo

pytestmark = pytest.mark.e2e

TWO_LAYER_VIT = ["--set", "model.modalities.images.encoders.vit.num_layers=2"]
IMAGES_PP2 = ["--set", "layout={images: {dp: 1, pp: 2, rank_offset: 0}, language: {dp: 1, pp: 1, rank_offset: 2}}"]


def test_frozen_projection_of_a_pipelined_encoder_keeps_its_weights_while_the_encoder_trains(tmp_path):
    """images pp=2: the projection lives on the encoder's last stage only; stage 0 has nothing of it to freeze."""
    result = mimo("train", "--config", "configs/tiny_vlm.yaml", "--nproc", "3", "--set", "train.steps=2",
                  "--set", "train.progress=false", *SGD, *TWO_LAYER_VIT, *IMAGES_PP2,
                  "--set", "optim.freeze=[images.projection]", "--run-dir", str(tmp_path / "run"),
                  "--export", str(tmp_path / "final.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    final = load_safetensors(tmp_path / "final.safetensors")
    # Initialization depends only on (seed, parameter name), whatever the layout: the plain model is the start.
    cfg = load_config(ROOT / "configs" / "tiny_vlm.yaml", ["model.modalities.images.encoders.vit.num_layers=2"])
    initial = {name: p.detach() for name, p in MimoModel(cfg.model, seed=cfg.train.seed).named_parameters()}
    projection = [name for name in initial if name.startswith("modalities.images.projection.")]
    assert projection and all(torch.equal(final[name], initial[name]) for name in projection)
    for stage_part in ("encoders.vit.patch_embedding.", "encoders.vit.layers.0.",  # stage 0
                       "encoders.vit.layers.1.", "encoders.vit.norm."):  # stage 1, beside the frozen projection
        names = [name for name in initial if name.startswith(f"modalities.images.{stage_part}")]
        assert names and any(not torch.equal(final[name], initial[name]) for name in names), stage_part
