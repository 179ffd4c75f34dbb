"""MicrobatchLoader: microbatch and DP splits cover the same samples, resume, epochs, selection, errors."""

from __future__ import annotations

import pytest
from torch.utils.data import Dataset

from mimo.data import MicrobatchLoader, SyntheticDataConfig, SyntheticMimoDataset, collate, select_fields, slice_batch
from tests.unit.data.helpers import assert_same_tree, image_audio_config


def _dataset(num_samples: int = 10) -> SyntheticMimoDataset:
    config = SyntheticDataConfig(num_samples=num_samples, seq_length=32, seed=3)
    return SyntheticMimoDataset(config, image_audio_config())


class _RecordingDataset(Dataset):
    """A plain map-style dataset (no ``load_sample``) that records which indices were read."""

    def __init__(self, inner: Dataset) -> None:
        self.inner, self.reads = inner, []

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        self.reads.append(index)
        return self.inner[index]


def _loader(dataset: Dataset | None = None, **kwargs) -> MicrobatchLoader:
    settings = {"global_batch_size": 8, "num_microbatches": 1, "seed": 7, **kwargs}
    return MicrobatchLoader(dataset if dataset is not None else _dataset(), **settings)


def test_one_and_four_microbatches_cover_the_same_samples():
    dataset = _dataset()
    whole, split = _loader(dataset), _loader(dataset, num_microbatches=4)
    for _ in range(3):  # 24 samples: crosses two epoch boundaries
        (batch,) = list(whole.next_step())
        microbatches = list(split.next_step())
        assert len(microbatches) == 4
        for m, microbatch in enumerate(microbatches):
            assert_same_tree(slice_batch(batch, 2 * m, 2 * m + 2), microbatch, padded_tail_ok=True)
    assert whole.consumed_samples == split.consumed_samples == 24


def test_dp_shards_concatenate_to_the_dp1_microbatch():
    dataset = _dataset()
    single = _loader(dataset, num_microbatches=2)
    ranks = [_loader(dataset, num_microbatches=2, dp_rank=rank, dp_size=2) for rank in range(2)]
    for _ in range(3):
        reference = list(single.next_step())
        shards = [list(loader.next_step()) for loader in ranks]
        for m, microbatch in enumerate(reference):
            for rank in range(2):
                expected = slice_batch(microbatch, 2 * rank, 2 * rank + 2)  # keeps the padded T
                assert_same_tree(expected, shards[rank][m], padded_tail_ok=True)


def test_a_rank_reads_only_its_own_samples():
    recording = _RecordingDataset(_dataset())
    loader = _loader(recording, num_microbatches=2, dp_rank=1, dp_size=4)
    expected = [loader.sample_index(position) for position in (1, 5)]  # mbs 4, shard size 1, rank 1
    for _ in loader.next_step():
        pass
    assert recording.reads == expected


def test_resume_yields_what_an_uninterrupted_loader_yields():
    dataset = _dataset()
    uninterrupted = _loader(dataset, num_microbatches=2)
    for _ in range(3):
        list(uninterrupted.next_step())
    state = uninterrupted.state_dict()
    assert state == {"consumed_samples": 24, "seed": 7, "num_samples": 10}
    assert all(type(value) is int for value in state.values())
    restored = _loader(dataset, num_microbatches=2)
    restored.load_state_dict(state)
    constructed = _loader(dataset, num_microbatches=2, consumed_samples=24)
    for _ in range(3):
        expected = list(uninterrupted.next_step())
        for other in (restored, constructed):
            for got, want in zip(other.next_step(), expected, strict=True):
                assert_same_tree(got, want)


def test_every_epoch_is_a_permutation_and_epochs_differ():
    loader = _loader(global_batch_size=4)
    order = []
    for _ in range(10):  # 40 samples = 4 epochs of 10
        order += [index for microbatch in loader.step_indices() for index in microbatch]
        list(loader.next_step())
    epochs = [order[e * 10 : (e + 1) * 10] for e in range(4)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 4
    other_seed = _loader(global_batch_size=4, seed=8)
    assert [i for mb in other_seed.step_indices() for i in mb] != order[:4]


def test_batch_contents_follow_the_indices():
    dataset = _dataset()
    loader = _loader(dataset, global_batch_size=6, num_microbatches=3, consumed_samples=8)
    indices = loader.step_indices()
    for microbatch, mb_indices in zip(loader.next_step(), indices, strict=True):
        assert_same_tree(microbatch, collate([dataset[i] for i in mb_indices]))
    assert loader.consumed_samples == 14


@pytest.mark.parametrize("selective", [True, False])
def test_modalities_and_include_text_select_fields(selective):
    dataset = _dataset()
    source = dataset if selective else _RecordingDataset(dataset)
    full = _loader(dataset, num_microbatches=2)
    partial = _loader(source, num_microbatches=2, modalities=["audio"], include_text=False)
    text_only = _loader(source, num_microbatches=2, modalities=[])
    for got, text, want in zip(partial.next_step(), text_only.next_step(), full.next_step(), strict=True):
        assert_same_tree(got, select_fields(want, modalities=["audio"], include_text=False))
        assert_same_tree(text, {key: value for key, value in want.items() if key != "modality_inputs"})
        assert sorted(got) == ["modality_inputs"] and sorted(got["modality_inputs"]) == ["audio"]


def test_load_ahead_reads_the_whole_step_at_once_and_yields_the_same_batches():
    on_demand, ahead = _RecordingDataset(_dataset()), _RecordingDataset(_dataset())
    lazy = _loader(on_demand, num_microbatches=4).next_step()
    eager = _loader(ahead, num_microbatches=4, load_ahead=True).next_step()
    assert on_demand.reads == [] and len(ahead.reads) == 8  # every sample of the step before the first batch
    for got, want in zip(eager, lazy, strict=True):
        assert_same_tree(got, want)
    assert ahead.reads == on_demand.reads


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("workers", [0, 1])
def test_a_rank_naming_text_fields_collates_only_those(selective, workers):
    dataset = _dataset()
    source = dataset if selective else _RecordingDataset(dataset)
    full = _loader(dataset, num_microbatches=2)
    labels_only = _loader(source, num_microbatches=2, modalities=[], include_text=("loss_mask", "labels"),
                          num_workers=workers)
    for got, want in zip(labels_only.next_step(), full.next_step(), strict=True):
        assert sorted(got) == ["labels", "loss_mask"]
        assert_same_tree(got, {key: want[key] for key in ("labels", "loss_mask")})
    with pytest.raises(ValueError, match=r"unknown text fields \['mask'\]"):
        _loader(source, include_text=["mask"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"global_batch_size": 8, "num_microbatches": 3},
            r"global_batch_size \(8\) is not divisible by num_microbatches \(3\)",
        ),
        ({"num_microbatches": 2, "dp_size": 3}, r"micro batch size \(4\) is not divisible by dp_size \(3\)"),
        ({"dp_rank": 2, "dp_size": 2}, r"dp_rank 2 is out of range for dp_size 2"),
        ({"dp_rank": -1, "dp_size": 2}, r"dp_rank -1 is out of range for dp_size 2"),
        ({"global_batch_size": 0}, r"global_batch_size must be an integer >= 1, got 0"),
        ({"consumed_samples": -4}, r"consumed_samples must be >= 0, got -4"),
    ],
)
def test_bad_sizes_raise_naming_the_numbers(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _loader(**kwargs)


def test_empty_dataset_raises():
    with pytest.raises(ValueError, match=r"dataset is empty \(len 0\)"):
        _loader(_RecordingDataset([]))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"seed": 7}, r"loader state lacks 'consumed_samples'"),
        ({"consumed_samples": 8, "seed": 9}, r"loader state has seed=9, this loader has seed=7"),
        ({"consumed_samples": 8, "num_samples": 11}, r"num_samples=11, this loader has num_samples=10"),
        ({"consumed_samples": -8}, r"consumed_samples must be an integer >= 0, got -8"),
    ],
)
def test_bad_states_raise(state, message):
    with pytest.raises(ValueError, match=message):
        _loader().load_state_dict(state)
