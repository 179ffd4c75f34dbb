"""SyntheticMimoDataset: determinism, format, placeholder counts, the learnable task, and config errors."""

from __future__ import annotations

import math

import pytest
import torch

from mimo.data import SyntheticDataConfig, SyntheticMimoDataset, validate_sample
from mimo.model.configs import (
    AudioEncoderConfig,
    LanguageModelConfig,
    MimoModelConfig,
    ModalityConfig,
    VisionEncoderConfig,
)
from tests.unit.data.helpers import assert_same_tree, image_audio_config, multi_encoder_config


def _dataset(model_config: MimoModelConfig | None = None, **overrides: object) -> SyntheticMimoDataset:
    settings: dict[str, object] = {"num_samples": 300, "seq_length": 64, "seed": 11, **overrides}
    config = SyntheticDataConfig(**settings)  # type: ignore[arg-type]
    return SyntheticMimoDataset(config, model_config or image_audio_config())


def _expected_rows(model_config: MimoModelConfig, name: str, sample: dict) -> int:
    """Rows by the encoder rules, read from the tensors' shapes (independent of the dataset's bookkeeping)."""
    rows = 0
    for encoder_name, encoder in model_config.modalities[name].encoders.items():
        kwargs = sample["modality_inputs"][name][encoder_name]
        if isinstance(encoder, VisionEncoderConfig):
            rows += kwargs["pixel_values"].shape[0] * (encoder.image_size // encoder.patch_size) ** 2
        else:
            rows += sum(math.ceil(n / encoder.downsample) for n in kwargs["lengths"].tolist())
    return rows


def test_samples_depend_only_on_seed_and_index():
    first, second = _dataset(), _dataset()
    forward = [first[i] for i in (0, 7, 299)]
    backward = [second[i] for i in (299, 7, 0)][::-1]
    for a, b in zip(forward, backward):
        assert_same_tree(a, b)
    assert not torch.equal(first[0]["input_ids"], first[1]["input_ids"])
    other_seed = _dataset(seed=12)[0]
    assert not torch.equal(other_seed["input_ids"], first[0]["input_ids"])


@pytest.mark.parametrize("model_config", [image_audio_config(), multi_encoder_config()])
def test_placeholder_counts_equal_encoder_token_counts(model_config):
    dataset = _dataset(model_config)
    for index in range(len(dataset)):
        sample = dataset[index]
        validate_sample(sample, model_config)
        for name, modality in model_config.modalities.items():
            placeholders = int((sample["input_ids"] == modality.placeholder_id).sum())
            assert placeholders == _expected_rows(model_config, name, sample), (index, name)


def test_layout_is_placeholders_in_config_order_then_text_then_padding():
    model_config = multi_encoder_config()  # "audio" (40) is configured before "images" (20)
    dataset = _dataset(model_config)
    for index in range(100):
        ids = dataset[index]["input_ids"].tolist()
        runs = [token for i, token in enumerate(ids) if i == 0 or token != ids[i - 1]]
        kinds = ["pad" if t == 0 else "audio" if t == 40 else "images" if t == 20 else "text" for t in runs]
        kinds = [k for i, k in enumerate(kinds) if k != "text" or i == 0 or kinds[i - 1] != "text"]
        assert kinds in (["audio", "images", "text", "pad"], ["audio", "text", "pad"], ["images", "text", "pad"],
                         ["text", "pad"], ["audio", "images", "text"], ["audio", "text"], ["images", "text"],
                         ["text"]), (index, kinds)


def test_text_is_the_arithmetic_sequence_whose_step_comes_from_item_classes():
    model_config = image_audio_config()  # placeholders 1 and 2: text ids are 3..63
    dataset = _dataset(model_config, num_classes=3, min_text_tokens=5)
    assert (dataset.first_text_id, dataset.num_text_ids) == (3, 61)
    for index in range(len(dataset)):
        spec = dataset.spec(index)
        text = [t for t in dataset[index]["input_ids"].tolist() if t not in (0, 1, 2)]
        assert len(text) == spec.num_text_tokens >= 5
        assert all(3 <= t <= 63 for t in text)
        step = 1 + sum(sum(classes) for classes in spec.item_classes.values()) % 3
        assert all((b - a) % 61 == step for a, b in zip(text, text[1:])), (index, text, step)


def test_item_counts_presence_rate_and_shared_items_across_encoders():
    model_config = multi_encoder_config()
    dataset = _dataset(model_config, num_samples=2000, item_presence=0.7, max_items_per_sample=3)
    present = {name: 0 for name in model_config.modalities}
    for index in range(len(dataset)):
        inputs = dataset.load_sample(index, include_text=False)["modality_inputs"]
        for name, encoders in inputs.items():
            counts = {kwargs[next(iter(kwargs))].shape[0] for kwargs in encoders.values()}
            assert len(counts) == 1 and 0 <= min(counts) <= 3, (index, name, counts)
            present[name] += min(counts) > 0
    for name, hits in present.items():
        assert abs(hits / len(dataset) - 0.7) < 0.04, (name, hits)


def test_audio_clips_are_zero_beyond_their_length_and_padded_to_the_longest():
    dataset = _dataset(min_frames=3, max_frames=14)
    lengths_seen = set()
    for index in range(len(dataset)):
        kwargs = dataset[index]["modality_inputs"]["audio"]["whisper"]
        features, lengths = kwargs["features"], kwargs["lengths"]
        assert lengths.dtype == torch.long
        assert features.shape[1] == (int(lengths.max()) if len(lengths) else 0)
        for clip, length in enumerate(lengths.tolist()):
            assert 3 <= length <= 14
            assert not features[clip, length:].any() and features[clip, :length].abs().min() > 0
            lengths_seen.add(length)
    assert lengths_seen == set(range(3, 15))


def test_partial_load_renders_the_same_parts_as_a_full_sample():
    dataset = _dataset(multi_encoder_config())
    for index in (0, 5, 17):
        full = dataset[index]
        audio_only = dataset.load_sample(index, modalities=["audio"], include_text=False)
        assert_same_tree(audio_only, {"modality_inputs": {"audio": full["modality_inputs"]["audio"]}})
        text_only = dataset.load_sample(index, modalities=[])
        assert_same_tree(text_only, {**full, "modality_inputs": {}})
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]"):
        dataset.load_sample(0, modalities=["video"])


def test_step_is_recoverable_from_the_items_alone():
    """Classes predicted from pixels/frames by nearest class mean (fit on other samples) give the text step."""
    config = image_audio_config()
    dataset = _dataset(config, num_samples=400, noise_std=0.5)
    means = {}
    for name, encoder, key in (("images", "vit", "pixel_values"), ("audio", "whisper", "features")):
        items, classes = [], []
        for index in range(200):
            values = dataset[index]["modality_inputs"][name][encoder][key]
            if len(values):  # audio: the first 8 frames (= min_frames) of every clip
                items.append(values[:, :8].flatten(1))
            classes += dataset.spec(index).item_classes[name]
        items_flat, labels = torch.cat(items), torch.tensor(classes)
        means[name] = torch.stack([items_flat[labels == c].mean(0) for c in range(4)])
    for index in range(200, 400):
        sample = dataset[index]
        total = 0
        for name, encoder, key in (("images", "vit", "pixel_values"), ("audio", "whisper", "features")):
            items = sample["modality_inputs"][name][encoder][key][:, :8].flatten(1)
            total += int(torch.cdist(items, means[name]).argmin(1).sum()) if len(items) else 0
        text = [t for t in sample["input_ids"].tolist() if t > 2]
        assert (text[1] - text[0]) % dataset.num_text_ids == 1 + total % 4, index


def test_model_without_modalities_gives_plain_text():
    dataset = SyntheticMimoDataset(SyntheticDataConfig(num_samples=4, seq_length=16), MimoModelConfig())
    sample = dataset[3]
    assert sample["modality_inputs"] == {}
    text = [t for t in sample["input_ids"].tolist() if t != 0]
    assert all((b - a) % 63 == 1 for a, b in zip(text, text[1:]))


def test_index_out_of_range_raises_index_error():
    with pytest.raises(IndexError, match="sample index 300 out of range for a dataset of 300"):
        _dataset()[300]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_samples", 0, r"data.num_samples must be >= 1, got 0: the dataset is empty"),
        ("seq_length", 1, r"data.seq_length must be an integer >= 2, got 1"),
        ("min_text_tokens", 0, r"data.min_text_tokens must be an integer >= 1, got 0"),
        ("max_items_per_sample", -1, r"data.max_items_per_sample must be an integer >= 0, got -1"),
        ("item_presence", 1.5, r"data.item_presence must be a number in \[0.0, 1.0\], got 1.5"),
        ("num_classes", 0, r"data.num_classes must be an integer >= 1, got 0"),
        ("noise_std", -0.1, r"data.noise_std must be a number >= 0.0, got -0.1"),
        ("seed", True, r"data.seed must be an integer >= 0, got True"),
        ("max_frames", 4, r"data.max_frames \(4\) must be >= data.min_frames \(8\)"),
    ],
)
def test_config_errors_name_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataConfig(**{field: value})


def test_seq_length_too_short_for_items_and_text_names_the_numbers():
    # worst case: 2 images * 4 tokens + 2 clips * 4 tokens = 16 placeholders, plus 8 text tokens = 24
    SyntheticMimoDataset(SyntheticDataConfig(seq_length=24), image_audio_config())
    with pytest.raises(ValueError, match=r"seq_length \(23\) cannot fit max_items_per_sample=2 items .*"
                                         r"\{'images': 8, 'audio': 8\}, 16 in all\) plus min_text_tokens=8"):
        SyntheticMimoDataset(SyntheticDataConfig(seq_length=23), image_audio_config())


def test_dataset_level_errors():
    short_audio = MimoModelConfig(modalities={"audio": image_audio_config().modalities["audio"]})
    message = r"modality 'audio': data.min_frames \(17\) exceeds the longest allowed clip \(16"
    with pytest.raises(ValueError, match=message):
        SyntheticMimoDataset(SyntheticDataConfig(min_frames=17), short_audio)
    with pytest.raises(ValueError, match=r"data.seq_length \(48\) exceeds language.max_seq_len \(32\)"):
        SyntheticMimoDataset(SyntheticDataConfig(), MimoModelConfig(language=LanguageModelConfig(max_seq_len=32)))
    with pytest.raises(ValueError, match=r"leaves 3 contiguous text ids \(from 1\), fewer than data.num_classes=4"):
        SyntheticMimoDataset(SyntheticDataConfig(), MimoModelConfig(language=LanguageModelConfig(vocab_size=4)))


def test_a_modality_mixing_vision_and_audio_encoders_gets_both_inputs():
    vision = VisionEncoderConfig(image_size=12, patch_size=6, num_channels=2)
    audio = AudioEncoderConfig(num_mel_bins=3, max_frames=10)
    mixed = MimoModelConfig(modalities={"mixed": ModalityConfig(placeholder_id=9, encoders={"v": vision, "a": audio})})
    dataset = _dataset(mixed, min_frames=2)
    for index in range(50):
        sample = dataset[index]
        validate_sample(sample, mixed)
        pixels = sample["modality_inputs"]["mixed"]["v"]["pixel_values"]
        assert pixels.shape[1:] == (2, 12, 12) and pixels.dtype == torch.float32
        assert sample["modality_inputs"]["mixed"]["a"]["features"].shape[2] == 3
