"""Frozen Hugging Face weights are referenced, not saved: a resume or an export must find the same folders."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimo.checkpoint import CheckpointError
from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.training.checkpoint_export import export_checkpoint
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.hf_fixtures import tiny_hf_models  # noqa: F401


def _trainer(raw: dict) -> Trainer:
    cfg = config_from_dict(raw)
    return Trainer(cfg, DistributedContext(rank=0, world_size=1, device=torch.device("cpu")), plan_run(cfg, 1))


def test_a_changed_hf_folder_of_a_frozen_module_stops_resume_and_export(tiny_hf_models, tmp_path):
    language = tmp_path / "language"
    shutil.copytree(tiny_hf_models["language"], language)
    raw = {
        "run_dir": str(tmp_path / "run"),
        "model": {"language": {"hf": str(language)}, "modalities": {"images": {"placeholder_id": 5, "encoders": {
            "vit": {"kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_heads": 2}}}}},
        "data": {"num_samples": 32, "seq_length": 24, "max_items_per_sample": 1},
        "train": {"steps": 1, "global_batch_size": 4, "progress": False},
        "optim": {"freeze": ["language"]},
    }
    trainer = _trainer(raw)
    trainer.train_step()
    saved = trainer.checkpointer.save()
    assert export_checkpoint(saved, tmp_path / "ok.safetensors")  # same folder: the frozen weights are found

    weights = language / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="frozen"):
        _trainer(raw).resume(str(saved))
    with pytest.raises(CheckpointError, match="Hugging Face folders"):
        export_checkpoint(saved, tmp_path / "bad.safetensors")
