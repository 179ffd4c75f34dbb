"""Each pipeline stage reads only the fields its forward uses (no process group: engines built for each rank)."""

from __future__ import annotations

import torch

from mimo.config import config_from_dict
from mimo.data import MicrobatchLoader, build_dataset
from mimo.training.engines import PipelineEngine
from mimo.training.run_plan import plan_run
from tests.unit.data.helpers import assert_same_tree

# images on rank 0; the language model over ranks 1-3 (first, middle, last stage).
RAW = {
    "model": {
        "language": {"vocab_size": 64, "hidden_size": 32, "num_layers": 3, "num_heads": 2, "max_seq_len": 32},
        "modalities": {"images": {"placeholder_id": 1, "encoders": {"vit": {
            "kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_layers": 1, "num_heads": 2}}}},
    },
    "data": {"num_samples": 32, "seq_length": 24, "max_items_per_sample": 2},
    "layout": {"images": {"dp": 1}, "language": {"dp": 1, "pp": 3, "rank_offset": 1}},
    "train": {"global_batch_size": 8, "num_microbatches": 2},
}


def _batches(rank: int) -> list[dict] | None:
    cfg = config_from_dict(RAW)
    engine = PipelineEngine(cfg, plan_run(cfg, world_size=4), rank=rank, device=torch.device("cpu"),
                            forward_step=lambda data, model: (None, None), timers=lambda name: None)
    options = engine.loader_options()
    if not options:
        return None
    (only,) = options
    return list(MicrobatchLoader(build_dataset(cfg.data, cfg.model), global_batch_size=8, num_microbatches=2,
                                 **only).next_step())


def test_each_stage_batch_holds_only_the_fields_it_uses():
    cfg = config_from_dict(RAW)
    loader = MicrobatchLoader(build_dataset(cfg.data, cfg.model), global_batch_size=8, num_microbatches=2)
    full = list(loader.next_step())
    wanted = {
        0: lambda b: {"modality_inputs": b["modality_inputs"]},
        1: lambda b: {"input_ids": b["input_ids"], "position_ids": b["position_ids"]},
        3: lambda b: {"labels": b["labels"], "loss_mask": b["loss_mask"]},
    }
    for rank, select in wanted.items():
        batches = _batches(rank)
        assert batches is not None and len(batches) == 2
        for got, whole in zip(batches, full, strict=True):
            assert sorted(got) == sorted(select(whole)), f"rank {rank}"
            assert_same_tree(got, select(whole))
    assert _batches(2) is None  # the middle language stage reads nothing
