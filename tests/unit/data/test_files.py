"""save_samples and FileDataset: exact round trip, safe loading, atomic writes, and every rejection message."""

from __future__ import annotations

import builtins
import os
import re
from pathlib import Path

import pytest
import torch

from mimo.data import FileDataset, SyntheticDataConfig, SyntheticMimoDataset, save_samples
from mimo.model.configs import LanguageModelConfig, MimoModelConfig
from tests.unit.data.helpers import AUDIO_PLACEHOLDER, assert_same_tree, hand_sample, image_audio_config
from tests.unit.data.helpers import multi_encoder_config


def _synthetic(model_config: MimoModelConfig, num_samples: int = 12) -> SyntheticMimoDataset:
    return SyntheticMimoDataset(SyntheticDataConfig(num_samples=num_samples, seq_length=40, seed=5), model_config)


def _write_payload(path: Path, payload: object) -> Path:
    """A file written with plain torch.save, bypassing save_samples' checks (what a user script might do)."""
    torch.save(payload, path)
    return path


def _samples_file(path: Path, samples: list) -> Path:
    return _write_payload(path, {"format": "mimo-samples", "version": 1, "samples": samples})


@pytest.mark.parametrize("model_config", [image_audio_config(), multi_encoder_config()])
def test_round_trip_gives_identical_samples(tmp_path, model_config):
    synthetic = _synthetic(model_config)
    path = save_samples([synthetic[i] for i in range(len(synthetic))], tmp_path / "train.pt")
    assert path == tmp_path / "train.pt"
    dataset = FileDataset(path, model_config)
    assert len(dataset) == len(synthetic) and dataset.seq_length == 40
    for index in range(len(synthetic)):
        assert_same_tree(dataset[index], synthetic[index])  # same keys, dtypes, shapes and values


def test_load_sample_selects_like_the_synthetic_dataset(tmp_path):
    synthetic = _synthetic(image_audio_config())
    dataset = FileDataset(save_samples([synthetic[i] for i in range(12)], tmp_path / "s.pt"), image_audio_config())
    for modalities, include_text in ((["audio"], False), (["images"], True), ([], False), (None, False)):
        for index in (0, 5, 11):
            expected = synthetic.load_sample(index, modalities=modalities, include_text=include_text)
            actual = dataset.load_sample(index, modalities=modalities, include_text=include_text)
            assert_same_tree(actual, expected)
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]; the model has \['images', 'audio'\]"):
        dataset.load_sample(0, modalities=["video"])
    with pytest.raises(IndexError, match="sample index 12 out of range for a dataset of 12 samples"):
        dataset[12]


def test_modalities_come_back_in_config_order_whatever_the_file_order(tmp_path):
    sample = hand_sample(1, [8])
    sample["modality_inputs"] = dict(reversed(list(sample["modality_inputs"].items())))
    assert list(sample["modality_inputs"]) == ["audio", "images"]
    dataset = FileDataset(save_samples([sample], tmp_path / "s.pt"), image_audio_config())
    assert list(dataset[0]["modality_inputs"]) == ["images", "audio"]
    assert_same_tree(dataset[0], sample)


def test_editing_a_returned_sample_leaves_the_dataset_unchanged(tmp_path):
    original = hand_sample(1, [5])
    dataset = FileDataset(save_samples([original], tmp_path / "s.pt"), image_audio_config())
    first = dataset[0]
    first["input_ids"].fill_(9)
    first["modality_inputs"]["images"]["vit"]["pixel_values"].zero_()
    assert_same_tree(dataset[0], original)


def test_save_stores_views_compactly_and_detached(tmp_path):
    sample = hand_sample(2, [])
    big = torch.randn(50, 3, 8, 8, requires_grad=True)
    sample["modality_inputs"]["images"]["vit"]["pixel_values"] = big[10:12] * 1.0  # non-leaf view-sized result
    sample["input_ids"] = torch.cat([sample["input_ids"], torch.zeros(100, dtype=torch.long)])[:24]  # a view
    path = save_samples([sample], tmp_path / "s.pt")
    loaded = FileDataset(path, image_audio_config())[0]
    assert torch.equal(loaded["modality_inputs"]["images"]["vit"]["pixel_values"], big[10:12].detach())
    assert not loaded["modality_inputs"]["images"]["vit"]["pixel_values"].requires_grad
    assert torch.equal(loaded["input_ids"], sample["input_ids"])
    stored = torch.load(path, weights_only=True)["samples"][0]["input_ids"]
    assert stored.untyped_storage().nbytes() == 24 * 8  # the 124-element base was not written


def test_saved_file_has_the_documented_layout(tmp_path):
    sample = hand_sample(0, [3])
    payload = torch.load(save_samples([sample], tmp_path / "s.pt"), weights_only=True)
    assert sorted(payload) == ["format", "samples", "version"]
    assert payload["format"] == "mimo-samples" and payload["version"] == 1 and len(payload["samples"]) == 1
    assert_same_tree(payload["samples"][0], sample)


def test_failed_save_leaves_no_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "s.pt"

    def half_write(obj: object, handle) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_samples([hand_sample(1, [])], target)
    assert list(tmp_path.iterdir()) == []  # neither the final file nor the temporary one
    monkeypatch.undo()
    save_samples([hand_sample(1, [])], target)
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_samples([hand_sample(2, [])], target)
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]


def test_save_creates_parent_directories(tmp_path):
    path = save_samples([hand_sample(1, [])], tmp_path / "a" / "b" / "s.pt")
    assert len(FileDataset(path, image_audio_config())) == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(extra=torch.zeros(1)), r"sample 1: has keys .*unknown \['extra'\], missing \[\]"),
        (lambda s: s.pop("labels"), r"sample 1: has keys .*missing \['labels'\]"),
        (lambda s: s.update(labels=[1, 2]), r"sample 1: labels is a list, expected a tensor"),
        (lambda s: s["modality_inputs"]["audio"].update(whisper=torch.zeros(1)),
         r"sample 1: modality_inputs.audio.whisper is a Tensor, expected a dict with string keys"),
        (lambda s: s.update(labels=s["labels"].int()), r"sample 1: labels has dtype torch.int32, expected torch.int64"),
        (lambda s: s.update(loss_mask=s["loss_mask"].long()), r"sample 1: loss_mask has dtype torch.int64, expected a"),
        (lambda s: s.update(input_ids=s["input_ids"][None]),
         r"sample 1: input_ids must be 1-D \[S\], got shape \[1, 24\]"),
    ],
)
def test_save_rejects_malformed_samples_before_writing(tmp_path, mutate, message):
    bad = hand_sample(1, [4])
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        save_samples([hand_sample(0, []), bad], tmp_path / "s.pt")
    assert list(tmp_path.iterdir()) == []


def test_save_with_model_config_validates_and_rejects_empty_lists(tmp_path):
    bad = hand_sample(1, [])
    bad["input_ids"][0] = 9  # one image placeholder fewer than the image's 4 rows
    save_samples([bad], tmp_path / "unchecked.pt")  # structure only without a model config
    with pytest.raises(ValueError, match=r"sample 0: modality 'images': input_ids hold 3 placeholder tokens"):
        save_samples([bad], tmp_path / "checked.pt", model_config=image_audio_config())
    with pytest.raises(ValueError, match="save_samples got no samples"):
        save_samples([], tmp_path / "empty.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unchecked.pt"]


def test_wrong_image_size_names_path_sample_and_both_shapes(tmp_path):
    bad = hand_sample(1, [])
    bad["modality_inputs"]["images"]["vit"]["pixel_values"] = torch.zeros(1, 3, 16, 16)
    path = save_samples([hand_sample(0, [4]), bad], tmp_path / "s.pt")
    message = (rf"^{re.escape(str(path))}: sample 1: modality 'images' encoder 'vit': expected pixel_values of shape "
               r"\[n_images, 3, 8, 8\], received \[1, 3, 16, 16\]$")
    with pytest.raises(ValueError, match=message):
        FileDataset(path, image_audio_config())


def test_placeholder_mismatch_names_path_sample_modality_and_both_counts(tmp_path):
    bad = hand_sample(1, [8])
    bad["input_ids"][bad["input_ids"] == AUDIO_PLACEHOLDER] = 9
    path = save_samples([hand_sample(0, []), hand_sample(0, []), bad], tmp_path / "s.pt")
    message = (rf"^{re.escape(str(path))}: sample 2: modality 'audio': input_ids hold 0 placeholder tokens "
               r"\(id 2\) but its encoders produce 2 rows$")
    with pytest.raises(ValueError, match=message):
        FileDataset(path, image_audio_config())


def test_inconsistent_seq_length_is_rejected_at_save_and_at_load(tmp_path):
    samples = [hand_sample(1, [], seq_length=24), hand_sample(1, [], seq_length=24), hand_sample(1, [], seq_length=30)]
    expected = r"sample 2: seq_length 30 differs from sample 0's 24; pad every sample to one length"
    with pytest.raises(ValueError, match=expected):
        save_samples(samples, tmp_path / "s.pt")
    path = _samples_file(tmp_path / "raw.pt", samples)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {expected}$"):
        FileDataset(path, image_audio_config())


def test_seq_length_above_the_position_table_is_rejected(tmp_path):
    small = MimoModelConfig(language=LanguageModelConfig(max_seq_len=20), modalities=image_audio_config().modalities)
    path = save_samples([hand_sample(1, [], seq_length=24)], tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"samples have seq_length 24, more than language.max_seq_len \(20\)"):
        FileDataset(path, small)


def test_missing_file_and_directory_are_named(tmp_path):
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'none.pt'))}: no such samples file$"):
        FileDataset(tmp_path / "none.pt", image_audio_config())
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path))}: not a regular file"):
        FileDataset(tmp_path, image_audio_config())


@pytest.mark.parametrize("content", [b"garbage bytes, not an archive" * 4, b""])
def test_garbage_bytes_are_not_a_samples_file(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not a mimo samples file \(not a torch.save"):
        FileDataset(path, image_audio_config())


def test_truncated_archive_is_not_a_samples_file(tmp_path):
    whole = save_samples([hand_sample(1, [])], tmp_path / "whole.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(whole[: len(whole) // 2] + whole[-200:])  # keeps the zip directory, loses data
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not a mimo samples file"):
        FileDataset(path, image_audio_config())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (torch.randn(3, 4), r"not a mimo samples file: it holds a Tensor, expected a dict with format 'mimo-samples'"),
        ({"samples": [hand_sample(1, [])]}, r"not a mimo samples file: it has no 'format' key \(keys \['samples'\]\)"),
        ({"format": "other", "version": 1, "samples": []}, r"not a mimo samples file: it has format 'other', expected"),
        ({"format": "mimo-samples", "version": 2, "samples": []}, r"samples file version 2 is not supported; this"),
        ({"format": "mimo-samples", "samples": []}, r"samples file version None is not supported"),
        ({"format": "mimo-samples", "version": 1, "samples": {"a": 1}}, r"'samples' must be a list of sample dicts"),
        ({"format": "mimo-samples", "version": 1, "samples": [7]}, r"sample 0: is a int, expected a dict with keys"),
    ],
)
def test_files_that_are_not_valid_samples_files(tmp_path, payload, message):
    path = _write_payload(tmp_path / "s.pt", payload)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {message}"):
        FileDataset(path, image_audio_config())


def test_empty_sample_list_is_an_empty_dataset(tmp_path):
    path = _samples_file(tmp_path / "s.pt", [])
    with pytest.raises(ValueError, match=rf"^dataset {re.escape(str(path))} is empty: the file holds no samples$"):
        FileDataset(path, image_audio_config())


class _Exploit:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for arbitrary code in a hostile file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (os.fspath(self.marker), "w")


def test_arbitrary_objects_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "was_unpickled"
    sample = hand_sample(1, [])
    sample["labels"] = _Exploit(marker)
    path = _samples_file(tmp_path / "s.pt", [sample])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not a mimo samples file: it holds Python objects"):
        FileDataset(path, image_audio_config())
    assert not marker.exists()
