"""collate: stacked text, concatenated items, zero-padded frames, items_per_sample."""

from __future__ import annotations

import pytest
import torch

from mimo.data import collate
from tests.unit.data.helpers import hand_sample


def test_shapes_items_per_sample_and_order():
    samples = [hand_sample(2, [5], seed=1), hand_sample(0, [], seed=2), hand_sample(1, [3, 11], seed=3)]
    batch = collate(samples)
    for key in ("input_ids", "labels", "loss_mask", "position_ids"):
        assert torch.equal(batch[key], torch.stack([s[key] for s in samples]))
    vit = batch["modality_inputs"]["images"]["vit"]
    assert vit["items_per_sample"].tolist() == [2, 0, 1] and vit["items_per_sample"].dtype == torch.long
    expected_pixels = torch.cat([s["modality_inputs"]["images"]["vit"]["pixel_values"] for s in samples])
    assert torch.equal(vit["pixel_values"], expected_pixels)
    audio = batch["modality_inputs"]["audio"]["whisper"]
    assert audio["items_per_sample"].tolist() == [1, 0, 2]
    assert audio["lengths"].tolist() == [5, 3, 11]
    assert audio["features"].shape == (3, 11, 6)
    clips = [samples[0]["modality_inputs"]["audio"]["whisper"]["features"][0],
             samples[2]["modality_inputs"]["audio"]["whisper"]["features"][0],
             samples[2]["modality_inputs"]["audio"]["whisper"]["features"][1]]
    for row, clip in enumerate(clips):
        assert torch.equal(audio["features"][row, : clip.shape[0]], clip)
        assert not audio["features"][row, clip.shape[0]:].any()


def test_batch_without_any_item_keeps_empty_item_tensors():
    batch = collate([hand_sample(0, []), hand_sample(0, [])])
    audio = batch["modality_inputs"]["audio"]["whisper"]
    assert audio["features"].shape == (0, 0, 6)
    assert batch["modality_inputs"]["images"]["vit"]["pixel_values"].shape == (0, 3, 8, 8)
    assert audio["items_per_sample"].tolist() == [0, 0]


def test_samples_without_text_collate_modalities_only():
    samples = [{"modality_inputs": hand_sample(1, [2])["modality_inputs"]} for _ in range(3)]
    batch = collate(samples)
    assert sorted(batch) == ["modality_inputs"]
    assert batch["modality_inputs"]["images"]["vit"]["items_per_sample"].tolist() == [1, 1, 1]


def test_input_samples_are_not_modified():
    sample = hand_sample(1, [4])
    collate([sample, sample])
    assert "items_per_sample" not in sample["modality_inputs"]["images"]["vit"]


def _without_audio(sample: dict) -> dict:
    sample["modality_inputs"].pop("audio")
    return sample


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([], "cannot collate an empty list of samples"),
        ([hand_sample(1, []), {"input_ids": torch.zeros(24)}], r"sample 1 has keys \['input_ids'\], sample 0 has"),
        ([hand_sample(1, []), hand_sample(1, [], seq_length=30)], r"input_ids has different shapes across samples"),
        ([hand_sample(1, []), _without_audio(hand_sample(1, []))], r"sample 1 has modality inputs \{'images'"),
        (
            [collate([hand_sample(1, [])])],
            r"images.vit: sample inputs already hold 'items_per_sample'",
        ),
    ],
)
def test_bad_inputs_raise(samples, message):
    with pytest.raises(ValueError, match=message):
        collate(samples)


def test_encoder_kwargs_disagreeing_on_item_count_raise():
    sample = hand_sample(0, [4])
    sample["modality_inputs"]["audio"]["whisper"]["lengths"] = torch.tensor([4, 4])
    with pytest.raises(ValueError, match=r"audio.whisper: kwargs disagree on the number of items .*'features': 1"):
        collate([sample])
