"""MergedLoader: an encoder's shard and a language stage's shard of the same step, merged per microbatch."""

from __future__ import annotations

import pytest

from mimo.data import MicrobatchLoader, SyntheticDataConfig, SyntheticMimoDataset
from mimo.data.merged_loader import MergedLoader
from tests.unit.data.helpers import assert_same_tree, image_audio_config


def _dataset() -> SyntheticMimoDataset:
    return SyntheticMimoDataset(SyntheticDataConfig(num_samples=10, seq_length=32, seed=3), image_audio_config())


def _loader(dataset: SyntheticMimoDataset, **kwargs) -> MicrobatchLoader:
    return MicrobatchLoader(dataset, global_batch_size=8, num_microbatches=2, seed=7, **kwargs)


def test_each_field_comes_from_its_own_loader_and_shard():
    dataset = _dataset()
    images = dict(dp_rank=2, dp_size=4, modalities=("images",), include_text=False)
    text = dict(dp_rank=1, dp_size=2, modalities=(), include_text=("input_ids", "position_ids"))
    merged = MergedLoader([_loader(dataset, **images), _loader(dataset, **text)])
    for _ in range(2):
        batches = list(merged.next_step())
        parts = [list(_loader(dataset, **options).next_step()) for options in (images, text)]
        assert len(batches) == 2
        for batch, image_part, text_part in zip(batches, *parts):
            assert sorted(batch) == ["input_ids", "modality_inputs", "position_ids"]
            assert_same_tree(batch["modality_inputs"], image_part["modality_inputs"])
            assert_same_tree(batch["input_ids"], text_part["input_ids"])
        for options in (images, text):  # the reference loaders start over each step: move them on by hand
            options.setdefault("consumed_samples", 0)
            options["consumed_samples"] += 8


def test_position_is_shared_and_restored_on_every_loader():
    dataset = _dataset()
    merged = MergedLoader([_loader(dataset, modalities=("images",), include_text=False),
                           _loader(dataset, modalities=(), include_text=True)])
    merged.next_step()
    assert merged.consumed_samples == 8 and merged.state_dict()["consumed_samples"] == 8
    merged.load_state_dict({"consumed_samples": 24})
    assert [loader.consumed_samples for loader in merged.loaders] == [24, 24]


def test_two_loaders_reading_one_field_is_an_error():
    dataset = _dataset()
    merged = MergedLoader([_loader(dataset, modalities=("images",), include_text=False),
                           _loader(dataset, modalities=("images",), include_text=False)])
    with pytest.raises(ValueError, match=r"two loaders of one rank both read \['images'\]"):
        list(merged.next_step())
