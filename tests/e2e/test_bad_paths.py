"""Paths a run cannot use (``--init-from`` that is not a safetensors file, ``--run-dir`` that is a file) end with one
``mimo: error:`` line naming the path and exit code 2, before any process group exists (with ``--nproc`` too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_cli import ROOT, mimo

pytestmark = pytest.mark.e2e

TRAIN = ["train", "--config", "configs/tiny_vlm.yaml", "--set", "train.steps=1", "--set", "train.progress=false"]
NPROC = [[], ["--nproc", "2"]]


def assert_one_clear_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("mimo: error:") == 1, result.stderr
    error = next(line for line in result.stderr.splitlines() if line.startswith("mimo: error:"))
    assert all(fragment in error for fragment in fragments), result.stderr


@pytest.mark.parametrize(
    ("content", "nproc"), [("just some text\n", []), ("", []), ("just some text\n", ["--nproc", "2"])]
)
def test_init_from_a_file_that_is_not_safetensors(tmp_path, content, nproc):
    weights = tmp_path / "weights.safetensors"
    weights.write_text(content)
    result = mimo(*TRAIN, *nproc, "--run-dir", str(tmp_path / "run"), "--init-from", str(weights), timeout=60)
    assert_one_clear_error(result, str(weights), "is not a safetensors file")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("nproc", NPROC)
def test_init_from_a_directory_that_is_not_a_model(tmp_path, nproc):
    folder = tmp_path / "some_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not weights\n")
    result = mimo(*TRAIN, *nproc, "--run-dir", str(tmp_path / "run"), "--init-from", str(folder), timeout=60)
    assert_one_clear_error(result, str(folder), "is a directory, neither a safetensors file nor a folder written by --export-hf")


def test_init_from_a_yaml_recipe_by_mistake(tmp_path):
    result = mimo(*TRAIN, "--run-dir", str(tmp_path / "run"), "--init-from", "configs/tiny_vlm.yaml", timeout=60)
    assert_one_clear_error(result, "configs/tiny_vlm.yaml", "is not a safetensors file")


@pytest.mark.parametrize(
    ("how", "nproc"),
    [("--run-dir", []), ("--run-dir", ["--nproc", "2"]), ("run_dir", []), ("checkpoint.dir", []),
     ("inside a file", ["--nproc", "2"])],
)
def test_run_dir_that_is_an_existing_file(tmp_path, how, nproc):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    named = existing / "run" if how == "inside a file" else existing
    args = {
        "--run-dir": ["--run-dir", str(existing)],
        "inside a file": ["--run-dir", str(named)],
        "run_dir": ["--set", f"run_dir={existing}"],
        "checkpoint.dir": ["--set", f"checkpoint.dir={existing}", "--run-dir", str(tmp_path / "run")],
    }[how]
    result = mimo(*TRAIN, *nproc, *args, timeout=60)
    assert_one_clear_error(result, f"{str(named)!r}", "is not a directory")
    assert existing.read_text() == "keep me\n"
    assert "OMP_NUM_THREADS" not in result.stderr  # with --nproc: torchrun never started
