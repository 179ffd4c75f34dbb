"""The command line end to end: training, torchrun launches, exports, and clean failures on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mimo.export import load_safetensors
from tests.parity.harness import relative_error

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SGD = ["--set", "optim.default={name: sgd, lr: 0.3}", "--set", "optim.lr_schedule={decay: constant}",
       "--set", "train.progress=false"]


def mimo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mimo", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def torchrun(nproc: int, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "mimo", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert relative_error(a[name], b[name]) <= 1e-5, name


def assert_same_run(result_a, run_a: Path, result_b, run_b: Path, *, weights: tuple[Path, Path] | None = None) -> None:
    """Both runs succeeded, logged the same losses (relative 1e-5) and exported the same weights."""
    assert result_a.returncode == 0, result_a.stderr
    assert result_b.returncode == 0, result_b.stderr
    for a, b in zip(metrics(run_a), metrics(run_b)):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"]
    file_a, file_b = weights or (run_a.with_suffix(".safetensors"), run_b.with_suffix(".safetensors"))
    assert_same_weights(load_safetensors(file_a), load_safetensors(file_b))


def test_default_recipe_trains_and_logs_every_step(tmp_path):
    result = mimo("train", "--config", "configs/tiny_vlm.yaml", "--run-dir", str(tmp_path),
                  "--set", "train.steps=40", "--set", "train.progress=false")
    assert result.returncode == 0, result.stderr
    rows = metrics(tmp_path)
    assert [row["step"] for row in rows] == list(range(1, 41))
    assert set(rows[0]) >= {"step", "loss", "grad_norm", "lr", "tokens", "step_time_s"}
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert "loss" in result.stdout and "time per phase" in result.stdout


def test_two_data_parallel_processes_match_one(tmp_path):
    common = ["train", "--config", "configs/tiny_vlm.yaml", "--set", "train.steps=3", *SGD]
    one = mimo(*common, "--run-dir", str(tmp_path / "one"), "--export", str(tmp_path / "one.safetensors"))
    two = mimo(*common, "--nproc", "2", "--run-dir", str(tmp_path / "two"),
               "--export", str(tmp_path / "two.safetensors"))
    assert_same_run(one, tmp_path / "one", two, tmp_path / "two")


def test_heterogeneous_recipe_under_torchrun_matches_one_process(tmp_path):
    common = ["train", "--config", "configs/tiny_vlm_hetero.yaml", "--set", "train.steps=3", *SGD]
    hetero = torchrun(3, *common, "--run-dir", str(tmp_path / "hetero"), "--export", str(tmp_path / "h.safetensors"))
    plain = mimo(*common, "--set", "layout={}", "--run-dir", str(tmp_path / "plain"),
                 "--export", str(tmp_path / "p.safetensors"))
    assert_same_run(hetero, tmp_path / "hetero", plain, tmp_path / "plain",
                    weights=(tmp_path / "h.safetensors", tmp_path / "p.safetensors"))


RECIPE = "configs/tiny_vlm.yaml"


@pytest.mark.parametrize(
    ("recipe_text", "args", "message"),
    [
        (None, ["--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
        ("train: [1, 2\n", [], "is not valid YAML"),
        ("trian: {steps: 3}\n", [], "unknown key 'trian'"),
        ("train: {steps: three}\n", [], "train.steps='three' is not a valid int"),
        ("data: {num_samples: 0}\n", [], "dataset is empty"),
        (None, ["--set", "train.global_batch_size=0"], "global_batch_size must be >= 1"),
        (None, ["--set", "layout.language={pp: 2}", "--set", "layout.images={rank_offset: 2}"], "world_size is 1"),
        (None, ["--set", "model.modalities.images.placeholder_id=99"], "placeholder_id=99 must be in"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, recipe_text, args, message):
    """``recipe_text`` None: the tiny recipe (later ``--config`` arguments win); else a file with that text."""
    recipe = RECIPE
    if recipe_text is not None:
        recipe = str(tmp_path / "bad.yaml")
        Path(recipe).write_text(recipe_text)
    result = mimo("train", "--config", recipe, *args, "--run-dir", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _write_samples_file(path: Path, mutate) -> None:
    """A samples file from the tiny recipe's synthetic data, with one sample broken by ``mutate``."""
    from mimo.config import load_config
    from mimo.data import FILE_FORMAT, FILE_VERSION, SyntheticMimoDataset

    cfg = load_config(ROOT / RECIPE)
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    samples = [dataset[i] for i in range(8)]
    mutate(samples[3])
    torch.save({"format": FILE_FORMAT, "version": FILE_VERSION, "samples": samples}, path)


def _one_image_too_many_placeholders(sample: dict) -> None:
    ids = sample["input_ids"]
    ids[(ids != 1).nonzero()[0, 0]] = 1


def _wrong_image_size(sample: dict) -> None:
    pixels = sample["modality_inputs"]["images"]["vit"]["pixel_values"]
    sample["modality_inputs"]["images"]["vit"]["pixel_values"] = torch.zeros(max(1, pixels.shape[0]), 3, 8, 8)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_one_image_too_many_placeholders, "sample 3: modality 'images': input_ids hold 17 placeholder tokens"),
        (_wrong_image_size, "expected pixel_values of shape [n_images, 3, 16, 16], received [1, 3, 8, 8]"),
    ],
)
def test_bad_samples_in_a_data_file_are_named(tmp_path, mutate, message):
    path = tmp_path / "samples.pt"
    _write_samples_file(path, mutate)
    result = mimo("train", "--config", RECIPE, "--set", "data.source=file", "--set", f"data.path={path}",
                  "--run-dir", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_nproc_validates_the_config_for_that_many_processes_before_launching(tmp_path):
    result = mimo("train", "--config", "configs/tiny_vlm_hetero.yaml", "--nproc", "2", "--run-dir", str(tmp_path),
                  timeout=60)
    assert result.returncode == 2, result.stderr
    assert "world_size is 2" in result.stderr and result.stderr.count("mimo: error") == 1
