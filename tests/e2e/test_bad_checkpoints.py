"""Resuming from a bad checkpoint ends with a message naming the problem (exit code 2), never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.test_cli import mimo

pytestmark = pytest.mark.e2e

TRAIN = ["train", "--config", "configs/tiny_vlm.yaml", "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A run of 2 steps with its checkpoint root."""
    root = tmp_path_factory.mktemp("saved")
    result = mimo(*TRAIN, "--set", "train.steps=2", "--run-dir", str(root))
    assert result.returncode == 0, result.stderr
    return root / "checkpoints"


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoints"
    shutil.copytree(saved, target)
    return target


def _resume(checkpoints: Path, tmp_path: Path, *extra: str):
    return mimo(*TRAIN, "--set", "train.steps=3", "--run-dir", str(tmp_path / "resumed"),
                "--resume", str(checkpoints), *extra, timeout=90)


def _shard(checkpoints: Path) -> Path:
    return sorted((checkpoints / "step_00000002" / "dcp").glob("*.distcp"))[0]


def _expect_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_good_checkpoint_resumes(saved, tmp_path):
    result = _resume(_copy(saved, tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout


def test_a_model_of_another_shape_lists_the_mismatched_tensors(saved, tmp_path):
    result = _resume(_copy(saved, tmp_path), tmp_path, "--set", "model.language.hidden_size=32")
    _expect_error(result, "does not fit the model", "model.language.embedding.token.weight: expected shape (64, 32)",
                  "found shape (64, 64)")


def test_a_missing_file_is_named(saved, tmp_path):
    checkpoints = _copy(saved, tmp_path)
    shard = _shard(checkpoints)
    shard.unlink()
    _expect_error(_resume(checkpoints, tmp_path), shard.name, "missing")


def test_a_truncated_file_is_named(saved, tmp_path):
    checkpoints = _copy(saved, tmp_path)
    shard = _shard(checkpoints)
    shard.write_bytes(shard.read_bytes()[:100])
    _expect_error(_resume(checkpoints, tmp_path), shard.name, "truncated")


def test_a_corrupted_file_is_named(saved, tmp_path):
    checkpoints = _copy(saved, tmp_path)
    shard = _shard(checkpoints)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _expect_error(_resume(checkpoints, tmp_path), shard.name, "corrupted")


def test_resuming_latest_without_any_checkpoint_says_so(tmp_path):
    result = mimo(*TRAIN, "--run-dir", str(tmp_path), "--resume", "latest", timeout=60)
    _expect_error(result, str(tmp_path / "checkpoints"))
