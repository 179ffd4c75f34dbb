"""Consolidated weights in and out: ``--export``, ``mimo export --checkpoint``, ``--init-from``."""

from __future__ import annotations

import pytest
import torch

from mimo.export import load_safetensors, save_safetensors
from tests.e2e.test_cli import SGD, mimo, torchrun

pytestmark = pytest.mark.e2e

TRAIN = ["train", "--config", "configs/tiny_vlm.yaml", "--set", "train.progress=false"]


def test_exporting_a_checkpoint_equals_the_run_export_from_another_layout(tmp_path):
    """A checkpoint saved by 3 ranks (images | language pp=2) consolidates to the weights the run exported."""
    run = torchrun(3, "train", "--config", "configs/tiny_vlm_hetero.yaml", "--set", "train.steps=2",
                   "--set", "train.progress=false", "--run-dir", str(tmp_path / "run"),
                   "--export", str(tmp_path / "run.safetensors"))
    assert run.returncode == 0, run.stderr
    exported = mimo("export", "--checkpoint", str(tmp_path / "run" / "checkpoints"),
                    "--out", str(tmp_path / "checkpoint.safetensors"))
    assert exported.returncode == 0, exported.stderr
    a, b = load_safetensors(tmp_path / "run.safetensors"), load_safetensors(tmp_path / "checkpoint.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_init_from_starts_from_the_given_weights(tmp_path):
    first = mimo(*TRAIN, "--set", "train.steps=2", "--run-dir", str(tmp_path / "a"),
                 "--export", str(tmp_path / "a.safetensors"))
    assert first.returncode == 0, first.stderr
    # One SGD step with lr 0 changes nothing, so the second run's export is its starting point.
    second = mimo(*TRAIN, *SGD, "--set", "optim.default.lr=0.0", "--set", "train.steps=1",
                  "--set", "train.seed=7", "--run-dir", str(tmp_path / "b"),
                  "--init-from", str(tmp_path / "a.safetensors"), "--export", str(tmp_path / "b.safetensors"))
    assert second.returncode == 0, second.stderr
    a, b = load_safetensors(tmp_path / "a.safetensors"), load_safetensors(tmp_path / "b.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_init_from_a_file_of_another_model_lists_the_problems(tmp_path):
    weights = {"language.embedding.token.weight": torch.zeros(64, 32)}
    save_safetensors(weights, tmp_path / "other.safetensors")
    result = mimo(*TRAIN, "--set", "train.steps=1", "--run-dir", str(tmp_path / "run"),
                  "--init-from", str(tmp_path / "other.safetensors"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "language.embedding.token.weight: file has [64, 32], model has [64, 64]" in result.stderr
    assert "missing from the file" in result.stderr and "and 22 more" in result.stderr
    assert "Traceback" not in result.stderr


def test_frozen_weights_are_referenced_to_the_init_file_by_content_not_path(tmp_path):
    base = mimo(*TRAIN, "--set", "train.steps=1", "--run-dir", str(tmp_path / "base"),
                "--export", str(tmp_path / "init.safetensors"))
    assert base.returncode == 0, base.stderr
    copy = tmp_path / "elsewhere" / "same.safetensors"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "init.safetensors").read_bytes())
    frozen = ["--set", "optim.freeze=[images]", "--run-dir", str(tmp_path / "run")]
    first = mimo(*TRAIN, *frozen, "--set", "train.steps=2", "--init-from", str(tmp_path / "init.safetensors"))
    assert first.returncode == 0, first.stderr
    resumed = mimo(*TRAIN, *frozen, "--set", "train.steps=3", "--init-from", str(copy), "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    # Another seed would rebuild other frozen weights than the ones the checkpoint references.
    other = mimo(*TRAIN, *frozen, "--set", "train.steps=3", "--set", "train.seed=5", "--resume", "latest", timeout=60)
    assert other.returncode == 2 and "frozen and are referenced to their initialization" in other.stderr
