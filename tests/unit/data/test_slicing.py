"""slice_batch / shard_range: slicing a batch equals collating the sub-list of samples."""

from __future__ import annotations

import pytest

from mimo.data import batch_size, collate, select_fields, shard_batch, shard_range, slice_batch
from tests.unit.data.helpers import assert_same_tree, hand_sample

# zero images, several images, clips of different lengths, and samples without any item
SAMPLES = [
    hand_sample(0, [16], seed=0),
    hand_sample(3, [], seed=1),
    hand_sample(1, [2, 7], seed=2),
    hand_sample(0, [], seed=3),
    hand_sample(2, [9], seed=4),
    hand_sample(1, [1, 1, 4], seed=5),
]


@pytest.mark.parametrize(("start", "stop"), [(0, 6), (0, 1), (1, 2), (3, 4), (2, 5), (4, 6), (1, 6)])
def test_slice_equals_collating_the_sub_list(start, stop):
    sliced = slice_batch(collate(SAMPLES), start, stop)
    assert_same_tree(sliced, collate(SAMPLES[start:stop]), padded_tail_ok=True)
    assert sliced["modality_inputs"]["audio"]["whisper"]["features"].shape[1] == 16  # batch maximum kept


@pytest.mark.parametrize("dp_size", [1, 2, 3, 6])
def test_dp_shards_concatenate_to_the_batch(dp_size):
    batch = collate(SAMPLES)
    shards = [shard_batch(batch, rank, dp_size) for rank in range(dp_size)]
    per_shard = len(SAMPLES) // dp_size
    for rank, shard in enumerate(shards):
        expected = collate(SAMPLES[rank * per_shard : (rank + 1) * per_shard])
        assert_same_tree(shard, expected, padded_tail_ok=True)


def test_shard_range_is_contiguous():
    assert [shard_range(12, rank, 3) for rank in range(3)] == [(0, 4), (4, 8), (8, 12)]
    assert shard_range(5, 0, 1) == (0, 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, 0, 4), r"batch size 10 is not divisible by DP size 4"),
        ((8, 4, 4), r"dp_rank 4 is out of range for dp_size 4"),
        ((8, -1, 4), r"dp_rank -1 is out of range for dp_size 4"),
        ((8, 0, 0), r"dp_size must be >= 1, got 0"),
    ],
)
def test_shard_range_errors_name_the_numbers(args, message):
    with pytest.raises(ValueError, match=message):
        shard_range(*args)


def test_batch_without_text_is_sized_and_sliced_by_items_per_sample():
    batch = select_fields(collate(SAMPLES), include_text=False)
    assert batch_size(batch) == 6
    expected = select_fields(collate(SAMPLES[2:4]), include_text=False)
    assert_same_tree(slice_batch(batch, 2, 4), expected, padded_tail_ok=True)
    with pytest.raises(ValueError, match="no text field and no items_per_sample"):
        batch_size({"modality_inputs": {}})


@pytest.mark.parametrize(("start", "stop"), [(3, 3), (-1, 2), (2, 7), (4, 2)])
def test_bad_ranges_raise(start, stop):
    with pytest.raises(ValueError, match=rf"slice \[{start}, {stop}\) is not a non-empty range inside a batch of 6"):
        slice_batch(collate(SAMPLES), start, stop)


def test_inconsistent_items_per_sample_raises():
    batch = collate(SAMPLES)
    batch["modality_inputs"]["images"]["vit"]["items_per_sample"][0] += 1
    with pytest.raises(ValueError, match=r"images.vit.pixel_values has 7 items, items_per_sample sums to 8"):
        slice_batch(batch, 0, 2)
    del batch["modality_inputs"]["images"]["vit"]["items_per_sample"]
    with pytest.raises(ValueError, match=r"images.vit: inputs lack 'items_per_sample'"):
        slice_batch(batch, 0, 2)
