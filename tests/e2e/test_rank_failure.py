"""A rank dies (SIGKILL) or hangs (SIGSTOP) in the middle of a step: its peers stop with a message that says what
they were waiting for; after a death the last committed checkpoint still verifies, exports and resumes.

Layout: images on rank 0, language stage 0 on rank 1, language stage 1 on rank 2 (``configs/tiny_vlm_hetero.yaml``).
Rank 1 is the one both others exchange tensors with, so killing it leaves each survivor blocked on a transfer.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from mimo.checkpoint import CheckpointStore
from mimo.export import load_safetensors
from tests.e2e.launch import Ranks, latest_step, read_metrics, run_to_end

pytestmark = pytest.mark.e2e

HETERO = "configs/tiny_vlm_hetero.yaml"
COLLECTIVE_TIMEOUT_S = 10
KILLED_RANK = 1
STEP_OVERRIDES = ["train.num_microbatches=32", "train.global_batch_size=512", "data.seq_length=64"]
"""32 microbatches make a step last about a second on 2 cores, ten times as long as a checkpoint save."""
KILL_DELAY_S = 0.4
"""How long after a checkpoint commits the kill comes: well inside the next step, past the save's last barrier."""
CHECKPOINTS_BEFORE_KILL = 2
SURVIVORS = {
    # rank: (what it holds, the transfers with rank 1 it can be in when rank 1 dies)
    0: ("module 'images' stage 0", ("receive gradients of microbatch", "send activations of microbatch",
                                    "completing sends to ranks [1]")),
    2: ("module 'language' stage 1", ("receive activations of microbatch", "send gradients of microbatch",
                                      "completing sends to ranks [1]")),
}
PEER_NAMED = ("from rank 1 ", "to rank 1 ", "to ranks [1] ")
IN_A_COLLECTIVE = ("saving the checkpoint of step", "all-reduce of the step's loss")
"""On a fast machine the signal can land in the next save, or in the step's closing reduction once the transfers
are done, rather than mid-step: a collective with no one peer to name, so the line names what the rank was doing
and the timeout instead."""


def train_args(run_dir: Path, steps: int) -> list[str]:
    overrides = [*STEP_OVERRIDES, f"train.steps={steps}", "train.progress=false", "checkpoint.every_steps=1",
                 f"train.collective_timeout_s={COLLECTIVE_TIMEOUT_S}"]
    return ["train", "--config", HETERO, "--run-dir", str(run_dir), *[a for o in overrides for a in ("--set", o)]]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mimo: error:")]


def interrupt_rank_mid_step(run_dir: Path, sig: int) -> float:
    """Train until 2 checkpoints are committed, send ``sig`` to rank 1 during the next step, check that the
    survivors fail with a message naming the transfer; return the seconds they took to exit."""
    root = run_dir / "checkpoints"
    with Ranks(train_args(run_dir, 1000), world_size=3, log_dir=run_dir / "logs", name="interrupted") as ranks:
        ranks.wait_for(lambda: (latest_step(root) or 0) >= CHECKPOINTS_BEFORE_KILL, 90,
                       f"checkpoint {CHECKPOINTS_BEFORE_KILL} to be committed")
        time.sleep(KILL_DELAY_S)
        ranks.send_signal(sig, [KILLED_RANK])
        sent = time.monotonic()
        codes = ranks.wait(COLLECTIVE_TIMEOUT_S + 10, ranks=[0, 2])
        elapsed = time.monotonic() - sent
        assert all(code not in (0, None) for code in codes), f"survivors' exit codes {codes}\n{ranks.report()}"
        for rank, (holder, operations) in SURVIVORS.items():
            lines = error_lines(ranks.stderr(rank))
            assert len(lines) == 1, f"rank {rank}: expected one 'mimo: error:' line\n{ranks.report()}"
            assert holder in lines[0], f"rank {rank} does not name its module and stage\n{ranks.report()}"
            if any(phase in lines[0] for phase in IN_A_COLLECTIVE):
                assert f"collective_timeout_s={float(COLLECTIVE_TIMEOUT_S)}" in lines[0], ranks.report()
            else:
                assert any(operation in lines[0] for operation in operations), ranks.report()
                assert any(peer in lines[0] for peer in PEER_NAMED), ranks.report()
            assert "Traceback" not in ranks.stderr(rank), ranks.report()
        if sig == signal.SIGKILL:
            ranks.wait(10, ranks=[KILLED_RANK])
            assert ranks.exit_codes()[KILLED_RANK] == -signal.SIGKILL, ranks.report()
    return elapsed


@pytest.mark.timeout(180)
def test_killed_rank_stops_its_peers_with_a_clear_message_and_the_last_checkpoint_resumes(tmp_path):
    run_dir, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    interrupt_rank_mid_step(run_dir, signal.SIGKILL)
    last = latest_step(root)
    assert last is not None and last >= CHECKPOINTS_BEFORE_KILL
    assert CheckpointStore(root).verify(root / f"step_{last:08d}", checksums=True).step == last

    exported = run_to_end(["export", "--checkpoint", str(root), "--out", str(tmp_path / "x.safetensors")],
                          log_dir=tmp_path / "logs", name="export")
    weights = load_safetensors(tmp_path / "x.safetensors")
    for prefix in ("language.", "modalities.images."):
        assert any(name.startswith(prefix) for name in weights), f"no {prefix}* tensors\n{exported.report()}"

    resumed = run_to_end([*train_args(run_dir, last + 1), "--resume", "latest"], world_size=3,
                         log_dir=run_dir / "logs", name="resumed")
    assert f"at step {last}" in resumed.stdout(2), resumed.report()
    assert read_metrics(run_dir)[-1]["step"] == last + 1, resumed.report()
    assert latest_step(root) == last + 1


@pytest.mark.timeout(180)
def test_hung_rank_stops_its_peers_after_the_collective_timeout(tmp_path):
    # SIGSTOP keeps rank 1's connections open: only train.collective_timeout_s can end the survivors' waits.
    elapsed = interrupt_rank_mid_step(tmp_path / "run", signal.SIGSTOP)
    assert elapsed >= COLLECTIVE_TIMEOUT_S - 0.5, f"survivors exited {elapsed:.1f} s after rank 1 stopped"
