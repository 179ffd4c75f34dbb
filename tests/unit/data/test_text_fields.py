"""labels / loss_mask / position_ids rules, on a hand-built example and over many synthetic samples."""

from __future__ import annotations

import pytest
import torch

from mimo.data import SyntheticDataConfig, SyntheticMimoDataset, build_text_fields
from tests.unit.data.helpers import image_audio_config, multi_encoder_config


def test_hand_built_example():
    fields = build_text_fields(torch.tensor([5, 5, 7, 8, 9]), seq_length=8, placeholder_ids=[5])
    assert fields["input_ids"].tolist() == [5, 5, 7, 8, 9, 0, 0, 0]
    # label of position 0 is a placeholder, of 4 is padding, 5..7 are padding / the last position
    assert fields["labels"].tolist() == [-100, 7, 8, 9, -100, -100, -100, -100]
    assert fields["loss_mask"].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert fields["loss_mask"].dtype == torch.float32
    assert fields["position_ids"].tolist() == list(range(8))
    assert fields["input_ids"].dtype == fields["labels"].dtype == torch.long


def test_full_sequence_masks_only_placeholder_labels_and_the_last_position():
    fields = build_text_fields(torch.tensor([3, 4, 3, 4]), seq_length=4, placeholder_ids=[4])
    assert fields["labels"].tolist() == [-100, 3, -100, -100]
    assert fields["loss_mask"].tolist() == [0, 1, 0, 0]


def test_real_token_equal_to_padding_id_keeps_its_loss():
    fields = build_text_fields(torch.tensor([6, 0, 6]), seq_length=5, placeholder_ids=[])
    assert fields["labels"].tolist() == [0, 6, -100, -100, -100]


@pytest.mark.parametrize(("tokens", "seq_length", "message"), [
    (torch.tensor([1, 2, 3]), 2, r"number of tokens \(3\) must be in \[1, seq_length=2\]"),
    (torch.tensor([], dtype=torch.long), 4, r"number of tokens \(0\)"),
    (torch.ones(2, 2, dtype=torch.long), 4, r"tokens must be 1-D"),
])
def test_bad_token_sequences_raise(tokens, seq_length, message):
    with pytest.raises(ValueError, match=message):
        build_text_fields(tokens, seq_length, [])


@pytest.mark.parametrize("model_config", [image_audio_config(), multi_encoder_config()])
def test_rules_hold_on_many_synthetic_samples(model_config):
    dataset = SyntheticMimoDataset(SyntheticDataConfig(num_samples=200, seq_length=64, seed=5), model_config)
    placeholders = set(model_config.placeholder_ids.values())
    for index in range(len(dataset)):
        sample = dataset[index]
        ids, labels, mask = sample["input_ids"].tolist(), sample["labels"].tolist(), sample["loss_mask"].tolist()
        num_real = sum(1 for token in ids if token != 0)  # synthetic text never uses the padding id
        assert all(token == 0 for token in ids[num_real:]), "padding only at the end"
        for i in range(len(ids)):
            expected_keep = i < num_real - 1 and ids[i + 1] not in placeholders
            assert mask[i] == float(expected_keep), (index, i)
            assert labels[i] == (ids[i + 1] if expected_keep else -100), (index, i)
        assert sample["position_ids"].tolist() == list(range(len(ids)))
