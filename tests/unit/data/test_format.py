"""validate_sample, select_fields and the token counting helpers."""

from __future__ import annotations

import pytest
import torch

from mimo.data import (
    collate,
    item_token_counts,
    modality_token_count,
    select_fields,
    tokens_per_sample,
    validate_sample,
)
from mimo.data.format import text_keys_for_stage
from tests.unit.data.helpers import AUDIO_PLACEHOLDER, hand_sample, image_audio_config


def test_hand_built_sample_with_images_and_clips_is_valid():
    validate_sample(hand_sample(2, [5, 16, 1]), image_audio_config())
    validate_sample(hand_sample(0, []), image_audio_config())


def test_placeholder_count_mismatch_names_modality_and_both_counts():
    sample = hand_sample(1, [8])
    sample["input_ids"][sample["input_ids"] == AUDIO_PLACEHOLDER] = 9  # 2 audio placeholders become text
    with pytest.raises(ValueError, match=r"modality 'audio': input_ids hold 0 placeholder tokens \(id 2\) but its "
                                         r"encoders produce 2 rows"):
        validate_sample(sample, image_audio_config())


def test_extra_image_without_placeholders_is_a_mismatch():
    sample = hand_sample(1, [])
    sample["modality_inputs"]["images"]["vit"]["pixel_values"] = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"'images': input_ids hold 4 placeholder tokens \(id 1\).* produce 8 rows"):
        validate_sample(sample, image_audio_config())


def test_wrong_image_size_names_expected_and_received_shape():
    sample = hand_sample(1, [])
    sample["modality_inputs"]["images"]["vit"]["pixel_values"] = torch.zeros(1, 3, 16, 16)
    message = r"expected pixel_values of shape \[n_images, 3, 8, 8\], received \[1, 3, 16, 16\]"
    with pytest.raises(ValueError, match=message):
        validate_sample(sample, image_audio_config())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["modality_inputs"].pop("audio"), r"sample has modalities \['images'\], the model expects"),
        (lambda s: s["modality_inputs"]["audio"].pop("whisper"), r"'audio' has inputs for encoders \[\]"),
        (lambda s: s["modality_inputs"]["audio"]["whisper"].pop("lengths"), r"inputs lack \['lengths'\]"),
        (lambda s: s.pop("labels"), r"sample lacks \['labels'\]"),
        (lambda s: s.update(loss_mask=torch.zeros(5)), r"loss_mask has shape \[5\], input_ids \[24\]"),
        (
            lambda s: s["modality_inputs"]["audio"]["whisper"].update(features=torch.zeros(1, 8, 7)),
            r"expected features of shape \[n_clips, T, 6\], received \[1, 8, 7\]",
        ),
        (
            lambda s: s["modality_inputs"]["audio"]["whisper"].update(lengths=torch.tensor([9])),
            r"clip lengths \[9\] must be in \[1, 8\]",
        ),
        (
            lambda s: s["modality_inputs"]["audio"]["whisper"].update(lengths=torch.tensor([8.0])),
            r"expected integer lengths of shape \[1\]",
        ),
    ],
)
def test_malformed_samples_raise_naming_the_problem(mutate, message):
    sample = hand_sample(1, [8])
    mutate(sample)
    with pytest.raises(ValueError, match=message):
        validate_sample(sample, image_audio_config())


def test_select_fields_keeps_requested_modalities_and_drops_text():
    sample = hand_sample(1, [4])
    selected = select_fields(sample, modalities=["audio"], include_text=False)
    assert sorted(selected) == ["modality_inputs"]
    assert sorted(selected["modality_inputs"]) == ["audio"]
    assert selected["modality_inputs"]["audio"] is sample["modality_inputs"]["audio"]
    assert sorted(select_fields(sample)) == sorted(sample)
    with pytest.raises(ValueError, match=r"requested modalities \['video'\] are not in the data"):
        select_fields(sample, modalities=["video"])


def test_select_fields_keeps_only_the_named_text_fields():
    sample = hand_sample(1, [4])
    selected = select_fields(sample, modalities=[], include_text=("loss_mask", "labels"))
    assert sorted(selected) == ["labels", "loss_mask", "modality_inputs"]
    assert selected["labels"] is sample["labels"] and selected["modality_inputs"] == {}
    assert sorted(select_fields(sample, include_text="input_ids")) == ["input_ids", "modality_inputs"]
    with pytest.raises(ValueError, match=r"unknown text fields \['label'\]"):
        select_fields(sample, include_text=["label", "loss_mask"])


@pytest.mark.parametrize(
    ("first", "last", "keys"),
    [
        (True, False, ("input_ids", "position_ids")),
        (False, True, ("labels", "loss_mask")),
        (True, True, ("input_ids", "labels", "loss_mask", "position_ids")),
        (False, False, ()),
    ],
)
def test_a_language_stage_reads_only_the_text_fields_its_forward_uses(first, last, keys):
    assert text_keys_for_stage(first=first, last=last) == keys


def test_item_token_counts_follow_the_encoder_rules():
    config = image_audio_config()
    sample = hand_sample(3, [1, 4, 5, 16])
    vit, whisper = config.modalities["images"].encoders["vit"], config.modalities["audio"].encoders["whisper"]
    images = item_token_counts("images", vit, sample["modality_inputs"]["images"]["vit"])
    clips = item_token_counts("audio", whisper, sample["modality_inputs"]["audio"]["whisper"])
    assert images.tolist() == [4, 4, 4]
    assert clips.tolist() == [1, 1, 2, 4]
    assert modality_token_count("audio", config.modalities["audio"], sample["modality_inputs"]["audio"]) == 8


def test_tokens_per_sample_of_a_batch_equals_per_sample_placeholder_counts():
    config = image_audio_config()
    samples = [hand_sample(2, []), hand_sample(0, [3, 9]), hand_sample(1, [16])]
    batch = collate(samples)
    for name, modality in config.modalities.items():
        expected = [int((s["input_ids"] == modality.placeholder_id).sum()) for s in samples]
        assert tokens_per_sample(name, modality, batch["modality_inputs"][name]).tolist() == expected
    with pytest.raises(ValueError, match="not a collated batch"):
        tokens_per_sample("images", config.modalities["images"], samples[0]["modality_inputs"]["images"])
    audio = batch["modality_inputs"]["audio"]["whisper"]
    audio["items_per_sample"] = torch.tensor([0, 2, 2])
    with pytest.raises(ValueError, match="items_per_sample sums to 4, inputs hold 3 items"):
        tokens_per_sample("audio", config.modalities["audio"], batch["modality_inputs"]["audio"])
