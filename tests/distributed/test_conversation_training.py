"""Conversation data in training: a pipelined layout equals one process, encoder ranks never tokenize and
language ranks never decode media, and a run with loader workers resumes bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from mimo.config import config_from_dict
from mimo.distributed import DistributedContext
from mimo.training.run_plan import plan_run
from mimo.training.trainer import Trainer
from tests.conversation_fixtures import write_conversations, write_media
from tests.distributed.launcher import run_ranks

pytestmark = pytest.mark.distributed
pytest.importorskip("soundfile")
pytest.importorskip("sklearn")

WORDS = ["zero", "one", "two", "three"]


def _raw(root: Path, **data: Any) -> dict[str, Any]:
    media = write_media(root, images=4)
    records = [
        {"id": f"r{i}", "image": media["image"][i % 4] if i % 3 else [],
         "conversations": [{"from": "human", "value": ("<image>\n" if i % 3 else "") + "Which digit?"},
                           {"from": "gpt", "value": WORDS[i % 4]}]}
        for i in range(24)
    ]
    write_conversations(root / "train.json", records)
    write_conversations(root / "heldout.json", records[:8])
    return {
        "run_dir": str(root / "run"),
        "model": {
            "language": {"vocab_size": 300, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 128},
            "modalities": {"images": {"placeholder_id": 1, "encoders": {"vit": {
                "kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_heads": 2}}}},
        },
        "data": {"source": "conversations", "path": str(root / "train.json"), "max_seq_length": 96,
                 "validation": {"path": str(root / "heldout.json"), "every_steps": 2}, **data},
        "train": {"steps": 4, "global_batch_size": 4, "num_microbatches": 2, "progress": False},
        "optim": {"default": {"name": "adamw", "lr": 0.01}, "clip_grad": 1.0},
        "checkpoint": {"dir": str(root / "checkpoints"), "every_steps": 2},
    }


def _train(rank: int, world_size: int, raw: dict, resume: str | None = None) -> dict[str, Any]:
    cfg = config_from_dict(copy.deepcopy(raw))
    trainer = Trainer(cfg, DistributedContext(rank=rank, world_size=world_size, device=torch.device("cpu")),
                      plan_run(cfg, world_size))
    if resume is not None:
        trainer.resume(resume)
    history = trainer.train()
    dataset = trainer.data.train
    return {"losses": [m.loss for m in history], "val": [m.val_loss for m in history],
            "modules": trainer.engine.modules, "tokenized": dataset.tokenized, "decoded": dataset.media_decoded}


def test_pipelined_conversations_equal_one_process_and_each_rank_reads_only_its_part(tmp_path):
    raw = _raw(tmp_path)
    single = _train(0, 1, raw)
    layout = {"images": {"dp": 1, "pp": 1, "rank_offset": 0}, "language": {"dp": 1, "pp": 2, "rank_offset": 1}}
    ranks = run_ranks(3, _train, {**raw, "layout": layout, "run_dir": str(tmp_path / "run3"),
                                  "checkpoint": {"dir": str(tmp_path / "ck3")}}, tmp_path=tmp_path)
    for got, want in zip(ranks[0]["losses"], single["losses"]):
        assert abs(got - want) <= 1e-5 * abs(want)
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(ranks[0]["val"], single["val"]) if w is not None)
    assert [v is not None for v in single["val"]] == [False, True, False, True]
    images, first, last = ranks
    assert images["modules"] == ["images"] and not images["tokenized"] and images["decoded"] > 0
    # Stage 0 tokenized (it decided which records train, for everyone); neither language stage decoded media.
    assert first["tokenized"] and first["decoded"] == 0 and last["decoded"] == 0


def test_a_language_model_pipelined_over_its_encoder_ranks_trains_and_validates_like_one_process(tmp_path):
    """images dp 2 + language pp 2 on the same two ranks: each rank merges its image shard and its stage's text."""
    raw = _raw(tmp_path)
    single = _train(0, 1, raw)
    layout = {"images": {"dp": 2}, "language": {"pp": 2}}
    ranks = run_ranks(2, _train, {**raw, "layout": layout, "run_dir": str(tmp_path / "run2"),
                                  "checkpoint": {"dir": str(tmp_path / "ck2")}}, tmp_path=tmp_path)
    for got, want in zip(ranks[0]["losses"], single["losses"]):
        assert abs(got - want) <= 1e-5 * abs(want)
    assert [v is not None for v in ranks[0]["val"]] == [False, True, False, True]
    assert all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(ranks[0]["val"], single["val"]) if w is not None)
    assert [rank["modules"] for rank in ranks] == [["images", "language"]] * 2
    assert all(rank["decoded"] > 0 for rank in ranks)  # each rank decodes the images of its own shard


def test_a_run_with_loader_workers_resumes_bit_for_bit(tmp_path):
    raw = _raw(tmp_path, num_workers=2)
    full = _train(0, 1, raw)
    resumed = _train(0, 1, {**raw, "run_dir": str(tmp_path / "resumed")}, resume=str(tmp_path / "checkpoints" /
                                                                                     "step_00000002"))
    assert resumed["losses"] == full["losses"][2:]
    in_process = _train(0, 1, {**raw, "data": {**raw["data"], "num_workers": 0}, "run_dir": str(tmp_path / "r0"),
                               "checkpoint": {"dir": str(tmp_path / "ck0")}})
    assert in_process["losses"] == full["losses"]


def test_packed_and_unpacked_training_agree_in_a_pipelined_layout(tmp_path):
    """One SGD step over the whole data set (so the batches hold the same samples): same loss, same weights."""
    from mimo.data.conversations.dataset import ConversationDataset
    from tests.parity.harness import distributed_run, relative_error

    raw = _raw(tmp_path)
    raw["data"].pop("validation")
    raw["optim"] = {"default": {"name": "sgd", "lr": 0.5}, "lr_schedule": {"decay": "constant"}}
    raw["layout"] = {"images": {"dp": 1, "pp": 1, "rank_offset": 0}, "language": {"dp": 1, "pp": 2, "rank_offset": 1}}
    results = {}
    for packing in (False, True):
        case = copy.deepcopy(raw)
        case["data"]["packing"] = packing
        cfg = config_from_dict(copy.deepcopy(case))
        dataset = ConversationDataset(cfg.data, cfg.model)
        dataset.set_index(dataset.build_index())
        case["train"].update({"steps": 1, "global_batch_size": len(dataset), "num_microbatches": 1})
        folder = tmp_path / f"packing_{packing}"
        folder.mkdir()
        results[packing] = (len(dataset), *distributed_run(case, 1, world_size=3, tmp_path=folder))
    (rows, losses, weights), (packed_rows, packed_losses, packed_weights) = results[False], results[True]
    assert packed_rows < rows
    assert abs(packed_losses[0][0] - losses[0][0]) <= 1e-5 * abs(losses[0][0])
    from mimo.model import MimoModel

    initial = MimoModel(config_from_dict(copy.deepcopy(raw)).model, seed=0).state_dict()
    for name, tensor in weights.items():
        assert relative_error(packed_weights[name], tensor) <= 1e-5, name
        update = tensor - initial[name]
        if update.abs().max() > 0:  # the step's update itself, not only the (mostly unchanged) weights
            assert relative_error(packed_weights[name] - initial[name], update) <= 1e-4, name
