"""SIGTERM end to end: a clean stop with a checkpoint at the stopped step, an exact resume, and a hard second signal.

Runs use a constant learning rate, so ``train.steps`` (which a run stopped early and its reference differ in) changes
nothing but where the run ends: the resumed run must then log the very numbers an uninterrupted run logs, bit for
bit, and end with the same weights.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from mimo.checkpoint import CheckpointStore, read_json, read_tensor_shapes
from mimo.export import load_safetensors
from tests.e2e.launch import Ranks, latest_step, read_metrics, run_to_end

pytestmark = pytest.mark.e2e

SINGLE = "configs/tiny_vlm.yaml"
HETERO = "configs/tiny_vlm_hetero.yaml"
HETERO_LOSS_RANK = 2
"""The last language stage logs metrics in the hetero recipe (images on rank 0, language stages on ranks 1-2)."""
CONSTANT_LR = ["--set", "optim.lr_schedule={warmup_steps: 0, decay: constant}", "--set", "train.progress=false"]
LONG_RUN_STEPS = 1000
"""Far more steps than a test waits for: the run only ends by the signal."""
EXTRA_STEPS = 3
COMPARED_FIELDS = ("step", "loss", "grad_norm", "lr", "tokens", "skipped")


def train_args(recipe: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--config", recipe, "--run-dir", str(run_dir), "--set", f"train.steps={steps}",
            *CONSTANT_LR, *extra]


def stop_with_sigterm(recipe: str, run_dir: Path, *, world_size: int, loss_rank: int) -> int:
    """Start a long run, SIGTERM every rank once 3 steps are logged; check the clean stop, return its step."""
    with Ranks(train_args(recipe, run_dir, LONG_RUN_STEPS), world_size=world_size, log_dir=run_dir / "logs",
               name="stopped") as ranks:
        ranks.wait_for(lambda: len(read_metrics(run_dir)) >= 3, 60, "3 lines in metrics.jsonl")
        ranks.send_signal(signal.SIGTERM)
        codes = ranks.wait(60)
        assert codes == [0] * world_size, f"exit codes {codes}\n{ranks.report()}"
        stopped = len(read_metrics(run_dir))
        assert 3 <= stopped < LONG_RUN_STEPS, ranks.report()
        assert f"stopped after step {stopped} on SIGTERM" in ranks.stdout(loss_rank), ranks.report()
    assert latest_step(run_dir / "checkpoints") == stopped
    assert [row["step"] for row in read_metrics(run_dir)] == list(range(1, stopped + 1))
    return stopped


def assert_one_consistent_checkpoint(root: Path, step: int, modules: list[str]) -> None:
    """Exactly one committed checkpoint, at ``step``, whose files verify and which holds every module's weights."""
    store = CheckpointStore(root)
    assert [s for s, _ in store.list_checkpoints()] == [step]
    assert not [path.name for path in root.iterdir() if path.name.startswith(".")], "leftover staging folders"
    folder = store.latest()
    manifest = store.verify(folder, checksums=True)
    assert manifest.step == step
    assert read_json(folder / "meta.json")["train_state"]["step"] == step
    saved = read_tensor_shapes(folder / "dcp")
    for module in modules:
        prefix = "model.language." if module == "language" else f"model.modalities.{module}."
        assert any(name.startswith(prefix) for name in saved), f"no weights of {module!r} in {sorted(saved)[:5]}"


def assert_bitwise_equal_runs(resumed_dir: Path, reference_dir: Path, resumed_weights: Path,
                              reference_weights: Path) -> None:
    resumed, reference = read_metrics(resumed_dir), read_metrics(reference_dir)
    assert [row["step"] for row in resumed] == [row["step"] for row in reference]
    for got, want in zip(resumed, reference):
        assert {k: got[k] for k in COMPARED_FIELDS} == {k: want[k] for k in COMPARED_FIELDS}
    got_weights, want_weights = load_safetensors(resumed_weights), load_safetensors(reference_weights)
    assert sorted(got_weights) == sorted(want_weights)
    for name, tensor in want_weights.items():
        assert torch.equal(got_weights[name], tensor), name


def check_stop_and_exact_resume(tmp_path: Path, recipe: str, *, world_size: int, loss_rank: int) -> None:
    run_dir, reference_dir = tmp_path / "run", tmp_path / "reference"
    stopped = stop_with_sigterm(recipe, run_dir, world_size=world_size, loss_rank=loss_rank)
    assert_one_consistent_checkpoint(run_dir / "checkpoints", stopped, ["images", "language"])
    total = stopped + EXTRA_STEPS
    resumed = run_to_end([*train_args(recipe, run_dir, total), "--resume", "latest",
                          "--export", str(tmp_path / "resumed.safetensors")],
                         world_size=world_size, log_dir=run_dir / "logs", name="resumed")
    assert f"at step {stopped}" in resumed.stdout(loss_rank), resumed.report()
    run_to_end([*train_args(recipe, reference_dir, total), "--export", str(tmp_path / "reference.safetensors")],
               world_size=world_size, log_dir=reference_dir / "logs", name="reference")
    assert len(read_metrics(run_dir)) == total
    assert_bitwise_equal_runs(run_dir, reference_dir, tmp_path / "resumed.safetensors",
                              tmp_path / "reference.safetensors")


@pytest.mark.timeout(180)
def test_sigterm_stops_one_process_cleanly_and_the_resume_is_exact(tmp_path):
    check_stop_and_exact_resume(tmp_path, SINGLE, world_size=1, loss_rank=0)


@pytest.mark.timeout(180)
def test_sigterm_to_every_rank_of_a_hetero_layout_stops_cleanly_and_the_resume_is_exact(tmp_path):
    check_stop_and_exact_resume(tmp_path, HETERO, world_size=3, loss_rank=HETERO_LOSS_RANK)


@pytest.mark.timeout(180)
def test_second_sigterm_exits_at_once(tmp_path):
    # Steps of about half a second: the first signal's clean stop (finish the step, save) cannot beat the second.
    args = train_args(SINGLE, tmp_path, LONG_RUN_STEPS, "--set", "train.global_batch_size=512")
    with Ranks(args, log_dir=tmp_path / "logs", name="twice") as ranks:
        ranks.wait_for(lambda: len(read_metrics(tmp_path)) >= 1, 60, "the first line in metrics.jsonl")
        ranks.send_signal(signal.SIGTERM)
        # Wait until the first signal was handled: two signals that arrive before Python runs its handler count once.
        ranks.wait_for(lambda: "SIGTERM received" in ranks.stderr(), 10, "the first SIGTERM to be handled")
        ranks.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        codes = ranks.wait(30)
        elapsed = time.monotonic() - sent
        assert codes == [-signal.SIGTERM], ranks.report()  # killed by the signal itself (a shell shows 143)
        assert elapsed < 5.0, f"exited {elapsed:.1f} s after the second SIGTERM\n{ranks.report()}"
        assert "stopped after step" not in ranks.stdout(), ranks.report()
    assert latest_step(tmp_path / "checkpoints") is None, "the second SIGTERM should not wait for a checkpoint"
