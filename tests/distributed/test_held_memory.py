"""A pipeline stage holds what 1F1B promises, however many microbatches a step has.

Images on rank 0, language pp=2 on ranks 1-2 (a bridge and a stage hop), one image per sample so every shape is
fixed. For 4, 8, 16 and 32 microbatches each rank measures (``StageRunner(measure_held=True)``) the peak of what its
runner and communicator hold after any action: microbatch records (inputs, outputs, gradients) and the
communicator's buffers (sends in flight, receives posted ahead). The peaks reach their steady value within a
few microbatches (4 is too short for the pattern of every channel to line up) and then stay flat, within the
stage's 1F1B in-flight count (warmup + 1) of activation-sized tensors plus a few communication buffers.
Before sends were completed as they went, a stage held every sent buffer until the end of the step (~37
activation-sized buffers at 32 microbatches); with unbounded sends this test fails.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.pipeline.actions import ActionKind
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.distributed.launcher import run_ranks

pytestmark = pytest.mark.distributed

MICROBATCHES = (4, 8, 16, 32)
MICRO_BATCH = 2
HIDDEN, SEQ = 32, 32

CONFIG: dict[str, Any] = {
    "model": {
        "language": {"vocab_size": 48, "hidden_size": HIDDEN, "num_layers": 2, "num_heads": 4, "max_seq_len": SEQ},
        "modalities": {"images": {"placeholder_id": 1, "encoders": {"vit": {
            "kind": "vision", "image_size": 8, "patch_size": 4, "num_channels": 3, "hidden_size": 16,
            "num_layers": 1, "num_heads": 2}}}},
    },
    "data": {"num_samples": 256, "seq_length": SEQ, "max_items_per_sample": 1, "item_presence": 1.0},
    "train": {"steps": 2, "progress": False},
    "optim": {"default": {"name": "sgd", "lr": 0.1}, "lr_schedule": {"decay": "constant"}},
    "layout": {"images": {"dp": 1, "pp": 1, "rank_offset": 0}, "language": {"dp": 1, "pp": 2, "rank_offset": 1}},
}


def _measure(rank: int, world_size: int) -> dict[int, dict[str, int]]:
    peaks = {}
    for count in MICROBATCHES:
        raw = copy.deepcopy(CONFIG)
        raw["train"].update(num_microbatches=count, global_batch_size=count * MICRO_BATCH)
        cfg = config_from_dict(raw)
        trainer = Trainer(cfg, DistributedContext(rank=rank, world_size=world_size, device=torch.device("cpu")),
                          plan_run(cfg, world_size))
        runner = trainer.engine.runner
        runner.measure_held = True
        trainer.train_step()  # the first step agrees the channels' layouts; the second is the steady state
        trainer.train_step()
        actions = trainer.engine.actions
        kinds = [a.kind for a in actions if a.kind.is_compute]
        # Forwards before the first backward: 1F1B's warmup + 1, the microbatches a stage holds at once.
        in_flight = kinds.index(ActionKind.B) if ActionKind.B in kinds else 1
        peaks[count] = {"in_flight": in_flight, "microbatches": runner.held.microbatches,
                        "record_bytes": runner.held.record_bytes, "comm_bytes": runner.held.comm_bytes,
                        "total_bytes": runner.held.total_bytes}
    return peaks


@pytest.mark.timeout(300)
def test_held_activations_stay_flat_as_microbatches_grow(tmp_path):
    activation = MICRO_BATCH * SEQ * HIDDEN * 4  # one language hidden state, fp32
    results = run_ranks(3, _measure, tmp_path=tmp_path, timeout_s=240)
    for rank, peaks in enumerate(results):
        steady = peaks[8]
        for count, peak in peaks.items():
            for name, value in peak.items():
                assert value <= steady[name], f"rank {rank}: {count} microbatches hold more than 8: {peaks}"
            if count >= 8:
                assert peak == steady, f"rank {rank}: peaks grow with microbatches: {peaks}"
        assert steady["microbatches"] <= steady["in_flight"], f"rank {rank}: {steady}"
        # Records: input, output and output gradient of each in-flight microbatch; communication: two sends
        # in flight per outgoing channel and one receive posted per incoming one, each one hop.
        assert steady["total_bytes"] <= (3 * steady["in_flight"] + 4) * activation, f"rank {rank}: {steady}"
