"""``train.precision`` and ``train.activation_checkpointing`` from the command line: a bf16 run with
checkpointing trains, bad values stop before training with one error line and exit code 2."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_cli import mimo

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_bf16_with_checkpointing_trains_from_the_command_line(tmp_path):
    result = mimo("train", "--config", "configs/tiny_vlm.yaml", "--run-dir", str(tmp_path / "run"),
                  "--set", "train.steps=20", "--set", "train.progress=false", "--set", "train.precision=bf16",
                  "--set", "train.modules.language.activation_checkpointing=full",
                  "--set", "train.modules.images.activation_checkpointing=1", timeout=110)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and rows[-1]["loss"] < 0.85 * rows[0]["loss"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.precision=fp16", "train.precision='fp16' is not one of 'fp32', 'bf16'"),
        ("train.activation_checkpointing=half", "activation_checkpointing='half' is not 'none', 'full' or"),
        ("train.modules.eyes.precision=bf16", "train.modules.eyes: unknown module 'eyes'"),
    ],
)
def test_bad_compute_settings_exit_2_with_one_error_line(tmp_path, setting, message):
    result = mimo("train", "--config", "configs/tiny_vlm.yaml", "--run-dir", str(tmp_path / "run"),
                  "--set", setting, timeout=50)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
