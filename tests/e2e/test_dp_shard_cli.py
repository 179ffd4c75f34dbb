"""A bad ``dp_shard`` in a layout stops the CLI with one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_cli_bad_dp_shard_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "mimo", "train", "--config", "configs/tiny_vlm.yaml", "--set",
         "layout.language={dp_shard: 0}", "--set", "layout.images={}", "--run-dir", str(tmp_path / "run")],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["mimo: error: layout.language.dp_shard must be a positive integer, got 0"], result.stderr
