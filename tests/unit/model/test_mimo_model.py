"""MimoModel: per-token loss against the submodules called by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mimo.model import MimoModel, MimoModelConfig, ModalitySubmodule

SEQ = 24


def _batch(config: MimoModelConfig) -> dict[str, object]:
    """3 samples: two images + audio, text only, one image. Images give 4 rows each, the 7-frame clip 2 rows."""
    image, audio = config.placeholder_ids["images"], config.placeholder_ids["audio"]
    input_ids = torch.randint(7, config.language.vocab_size, (3, SEQ))
    input_ids[0, 1:9] = image
    input_ids[0, 12:14] = audio
    input_ids[2, 5:9] = image
    labels = torch.randint(0, config.language.vocab_size, (3, SEQ))
    labels[input_ids == image] = -100
    modality_inputs = {
        "images": {"vit": {"pixel_values": torch.randn(3, 3, 8, 8), "items_per_sample": torch.tensor([2, 0, 1])}},
        "audio": {
            "whisper": {
                "features": torch.randn(1, 9, 6),
                "lengths": torch.tensor([7]),
                "items_per_sample": torch.tensor([1, 0, 0]),
            }
        },
    }
    position_ids = torch.arange(SEQ).expand(3, SEQ)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "modality_inputs": modality_inputs}


def _projected_rows(module: ModalitySubmodule, encoder_name: str, inputs: dict[str, Tensor]) -> Tensor:
    rows = module.encoders[encoder_name](**inputs).embeddings
    first, last = module.projection[0], module.projection[2]
    return F.gelu(rows @ first.weight.T + first.bias) @ last.weight.T + last.bias


def _reference_losses(model: MimoModel, batch: dict[str, object]) -> Tensor:
    input_ids, position_ids, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    inputs = batch["modality_inputs"]
    lm = model.language
    hidden = lm.embedding.token.weight[input_ids] + lm.embedding.position.weight[position_ids]
    rows = {
        "images": iter(_projected_rows(model.modalities["images"], "vit", inputs["images"]["vit"])),
        "audio": iter(_projected_rows(model.modalities["audio"], "whisper", inputs["audio"]["whisper"])),
    }
    placed = []
    for b in range(input_ids.shape[0]):
        for s in range(SEQ):
            name = {v: k for k, v in model.placeholder_ids.items()}.get(int(input_ids[b, s]))
            placed.append(next(rows[name]) if name else hidden[b, s])
    assert all(next(it, None) is None for it in rows.values())
    hidden = torch.stack(placed).view(hidden.shape)
    for index in range(model.config.language.num_layers):
        hidden = lm.layers[str(index)](hidden)
    logits = lm.head(lm.norm(hidden))
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


def test_per_token_loss_matches_hand_computation(mimo_config: MimoModelConfig) -> None:
    model = MimoModel(mimo_config)
    batch = _batch(mimo_config)
    losses = model(**batch, loss_mask=torch.ones(3, SEQ))
    assert losses.shape == (3, SEQ)
    torch.testing.assert_close(losses, _reference_losses(model, batch), rtol=1e-5, atol=1e-5)
    assert bool((losses[batch["labels"] == -100] == 0).all())


def test_gradients_reach_every_module(mimo_config: MimoModelConfig) -> None:
    model = MimoModel(mimo_config)
    model(**_batch(mimo_config)).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing


def test_text_only_batch_needs_no_modality_inputs(mimo_config: MimoModelConfig) -> None:
    model = MimoModel(mimo_config)
    input_ids = torch.randint(7, 64, (2, SEQ))
    position_ids = torch.arange(SEQ).expand(2, SEQ)
    labels = torch.randint(0, 64, (2, SEQ))
    losses = model(input_ids=input_ids, position_ids=position_ids, labels=labels)
    expected = model.language(model.language.embed(input_ids, position_ids), labels=labels)
    torch.testing.assert_close(losses, expected, rtol=0, atol=0)


def test_placeholders_without_inputs_are_a_mismatch(mimo_config: MimoModelConfig) -> None:
    batch = _batch(mimo_config)
    del batch["modality_inputs"]["audio"]
    with pytest.raises(ValueError, match=r"modality 'audio': 2 placeholder tokens in input_ids but 0 embedding rows"):
        MimoModel(mimo_config)(**batch)


def test_unknown_modality_is_named(mimo_config: MimoModelConfig) -> None:
    batch = _batch(mimo_config)
    batch["modality_inputs"]["video"] = {}
    with pytest.raises(ValueError, match=r"unknown modality\(ies\) \['video'\]"):
        MimoModel(mimo_config)(**batch)


def test_rows_of_the_wrong_sample_are_rejected(mimo_config: MimoModelConfig) -> None:
    batch = _batch(mimo_config)
    # Same total (3 images) but sample 0 now owns one image and sample 1 one: rows would land in the wrong sample.
    batch["modality_inputs"]["images"]["vit"]["items_per_sample"] = torch.tensor([1, 1, 1])
    with pytest.raises(ValueError, match=r"'images': sample 0 has 8 placeholder tokens but 4 embedding rows"):
        MimoModel(mimo_config)(**batch)
