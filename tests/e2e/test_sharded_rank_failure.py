"""A rank of a sharded module dies mid-run: its peer stops with one line naming what it was doing, no traceback.

FSDP gathers weights and reduces gradients inside the forward and backward, where no transfer of ours runs, so
this is the path the trainer's own collective messages did not cover before. Layout: the tiny recipe on 2 ranks,
images replicated (dp 2), the language model sharded over both (dp_shard 2).
"""

from __future__ import annotations

import signal

import pytest

from tests.e2e.launch import Ranks, read_metrics

pytestmark = pytest.mark.e2e

COLLECTIVE_TIMEOUT_S = 10
OVERRIDES = ["layout={images: {dp: 2}, language: {dp_shard: 2}}", "train.num_microbatches=16",
             "train.global_batch_size=256", "train.steps=1000", "train.progress=false", "checkpoint.at_end=false",
             f"train.collective_timeout_s={COLLECTIVE_TIMEOUT_S}"]
WHERE = ("the step's forward and backward (module 'language': FSDP gathers and reduces over the shard ranks)",
         "all-reduce of the step's loss")
"""Where the survivor can be when its peer dies: in the FSDP collectives (most of a step) or in the step's end."""


@pytest.mark.timeout(120)
def test_a_dead_shard_rank_stops_its_peer_with_one_clear_line(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--config", "configs/tiny_vlm.yaml", "--run-dir", str(run_dir),
            *[arg for override in OVERRIDES for arg in ("--set", override)]]
    with Ranks(args, world_size=2, log_dir=tmp_path / "logs", name="sharded") as ranks:
        ranks.wait_for(lambda: len(read_metrics(run_dir)) >= 2, 90, "two steps")
        ranks.send_signal(signal.SIGKILL, [1])
        (code,) = ranks.wait(COLLECTIVE_TIMEOUT_S + 20, ranks=[0])
        assert code not in (0, None), ranks.report()
        stderr = ranks.stderr(0)
        lines = [line for line in stderr.splitlines() if line.startswith("mimo: error:")]
        assert len(lines) == 1 and "Traceback" not in stderr, ranks.report()
        assert "rank 0 (module 'images' stage 0, module 'language' stage 0)" in lines[0], ranks.report()
        assert any(where in lines[0] for where in WHERE), ranks.report()
