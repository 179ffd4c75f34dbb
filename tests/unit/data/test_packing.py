"""Packing: several conversations per row give the same loss and gradients as one per row (built-in and
Hugging Face language models), with less padding."""

from __future__ import annotations

import pytest
import torch

from mimo.config import config_from_dict
from mimo.data import collate
from mimo.data.conversations.dataset import ConversationDataset
from mimo.model import MimoModel
from tests.conversation_fixtures import write_conversations, write_media
from tests.hf_fixtures import tiny_hf_models  # noqa: F401

pytest.importorskip("sklearn")
pytest.importorskip("soundfile")

WORDS = ["zero", "one", "two", "three", "four"]


def _records(media):
    records = []
    for i in range(10):
        question = ("<image>\n" if i % 3 else "") + "Which digit is it?" + " Please." * (i % 4)
        records.append({"id": f"r{i}", "image": media["image"][i % 4] if i % 3 else [],
                        "conversations": [{"from": "human", "value": question},
                                          {"from": "gpt", "value": WORDS[i % 5] + "!" * (i % 2)}]})
    return records


def _config(tmp_path, language, *, packing):
    return config_from_dict({
        "model": {"language": language, "modalities": {"images": {"placeholder": "<image>", "encoders": {"vit": {
            "kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_heads": 2}}}}
            if "hf" in language else
            {"images": {"placeholder_id": 1, "encoders": {"vit": {
                "kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_heads": 2}}}}},
        "data": {"source": "conversations", "path": str(tmp_path / "train.json"), "max_seq_length": 160,
                 "packing": packing},
    })


def _loss_and_grads(cfg, dataset):
    batch = collate([dataset[i] for i in range(len(dataset))])
    model = MimoModel(cfg.model, seed=0)
    per_token = model(**batch)
    mask = batch["loss_mask"]
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(dataset)


@pytest.mark.parametrize("family", ["builtin", "hf"])
def test_packed_rows_train_exactly_like_one_sample_per_row(family, tmp_path, tiny_hf_models):
    write_conversations(tmp_path / "train.json", _records(write_media(tmp_path)))
    language = ({"hf": str(tiny_hf_models["language"])} if family == "hf" else
                {"vocab_size": 300, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 160})
    results = {}
    for packing in (False, True):
        cfg = _config(tmp_path, language, packing=packing)
        dataset = ConversationDataset(cfg.data, cfg.model)
        dataset.set_index(dataset.build_index())
        results[packing] = _loss_and_grads(cfg, dataset)
        if packing:
            assert "saved" in dataset.padding_summary()
    (loss, grads, rows), (packed_loss, packed_grads, packed_rows) = results[False], results[True]
    assert packed_rows < rows // 2, (packed_rows, rows)
    assert abs(packed_loss - loss) <= 1e-5 * abs(loss)
    assert grads.keys() == packed_grads.keys()
    for name, grad in grads.items():
        error = (packed_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert error <= 1e-5, f"{name}: gradients differ by {error:.2e}"
