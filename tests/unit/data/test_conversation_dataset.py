"""ConversationDataset: records -> padded samples with assistant-only labels, placeholder counts from the
encoders, truncation at turn boundaries, bad records named, and each part built only when a rank asks for it."""

from __future__ import annotations

import pytest
import torch

from mimo.config import config_from_dict
from mimo.data.conversations.dataset import ConversationDataset
from tests.conversation_fixtures import write_conversations, write_media

pytest.importorskip("soundfile")
pytest.importorskip("sklearn")

VISION = {"kind": "vision", "image_size": 8, "patch_size": 4, "hidden_size": 16, "num_heads": 2, "num_channels": 3}
AUDIO = {"kind": "audio", "num_mel_bins": 16, "hidden_size": 16, "num_heads": 2, "downsample": 4, "max_frames": 128}


def _config(tmp_path, records, *, image_size=8, max_seq_length=200, **data):
    write_conversations(tmp_path / "train.jsonl", records)
    return config_from_dict({
        "model": {
            "language": {"vocab_size": 300, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_seq_len": 256},
            "modalities": {
                "images": {"placeholder_id": 1, "encoders": {"vit": {**VISION, "image_size": image_size}}},
                "audio": {"placeholder_id": 2, "encoders": {"mel": AUDIO}},
            },
        },
        "data": {"source": "conversations", "path": str(tmp_path / "train.jsonl"),
                 "max_seq_length": max_seq_length, **data},
    })


def _dataset(cfg) -> ConversationDataset:
    dataset = ConversationDataset(cfg.data, cfg.model)
    dataset.set_index(dataset.build_index())
    return dataset


@pytest.fixture
def media(tmp_path):
    return write_media(tmp_path)


def _record(media, **extra):
    return {"id": "r0", "image": media["image"][:2], "audio": media["audio"],
            "conversations": [{"from": "system", "value": "Be brief."},
                              {"from": "human", "value": "<image><image> and <audio><audio><audio>: what?"},
                              {"from": "gpt", "value": "two digits"},
                              {"from": "human", "value": "again?"},
                              {"from": "gpt", "value": "yes"}], **extra}


@pytest.mark.parametrize("image_size", [8, 16])
def test_markers_expand_to_the_rows_each_encoder_emits(tmp_path, media, image_size):
    cfg = _config(tmp_path, [_record(media)], image_size=image_size)
    dataset = _dataset(cfg)
    sample = dataset[0]
    per_image = (image_size // 4) ** 2
    assert int((sample["input_ids"] == 1).sum()) == 2 * per_image
    # Three clips of 0.3, 0.5 and 0.8 s: 100 frames per second, ceil(frames / 4) rows each.
    lengths = sample["modality_inputs"]["audio"]["mel"]["lengths"].tolist()
    assert lengths == [30, 50, 80]
    assert int((sample["input_ids"] == 2).sum()) == sum((n + 3) // 4 for n in lengths)
    assert sample["modality_inputs"]["images"]["vit"]["pixel_values"].shape == (2, 3, image_size, image_size)


def test_labels_cover_exactly_the_assistant_answers(tmp_path, media):
    cfg = _config(tmp_path, [_record(media)])
    dataset = _dataset(cfg)
    sample = dataset[0]
    tokenizer = dataset.tokenizer
    targets = sample["labels"][sample["labels"] != -100].tolist()
    # The built-in format: each answer's bytes then the end id.
    expected = tokenizer.encode_text("two digits") + [tokenizer.end_id] + tokenizer.encode_text("yes") + [tokenizer.end_id]
    assert targets == expected
    assert torch.equal(sample["loss_mask"].bool(), sample["labels"] != -100)
    shifted = sample["input_ids"][1:]
    assert torch.equal(sample["labels"][:-1][sample["labels"][:-1] != -100], shifted[sample["labels"][:-1] != -100])


def test_a_long_record_is_cut_at_a_turn_boundary_or_dropped(tmp_path, media):
    full = _dataset(_config(tmp_path, [_record(media)]))
    length = int((full[0]["input_ids"] != 0).sum())
    cut = _dataset(_config(tmp_path, [_record(media)], max_seq_length=length - 2))
    assert cut.index.truncated == 1 and cut.index.turns == [3]
    assert cut.tokenizer.encode_text("yes")[0] not in cut[0]["labels"].tolist()
    with pytest.raises(ValueError, match="too long"):
        _dataset(_config(tmp_path, [_record(media)], max_seq_length=length - 2, overlong="drop"))
    skipped = ConversationDataset(*_parts(_config(tmp_path, [_record(media), _record(media, id="r1")],
                                                  max_seq_length=length - 2, overlong="drop",
                                                  on_bad_sample="skip")))
    index = skipped.build_index()
    assert index.dropped_too_long == 2 and index.kept == []


def _parts(cfg):
    return cfg.data, cfg.model


def test_bad_records_are_named_and_skipped_or_stop(tmp_path, media):
    records = [
        _record(media),
        {"id": "missing", "image": "images/nope.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "escape", "image": "../outside.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
        {"id": "no_answer", "conversations": [{"from": "human", "value": "hi"}]},
    ]
    cfg = _config(tmp_path, records, on_bad_sample="skip")
    dataset = _dataset(cfg)
    assert len(dataset) == 1
    problems = "\n".join(dataset.index.problems)
    for record_id in ("missing", "escape", "no_answer"):
        assert f"record {record_id}" in problems
    with pytest.raises(ValueError, match=r"record missing.*on_bad_sample=error"):
        _dataset(_config(tmp_path, records))


def test_each_rank_builds_only_its_part(tmp_path, media):
    cfg = _config(tmp_path, [_record(media)])
    source = ConversationDataset(cfg.data, cfg.model)
    index = source.build_index()  # on a language rank: tokenizes, reads media headers only
    assert source.tokenized and source.media_decoded == 0

    encoder_rank = ConversationDataset(cfg.data, cfg.model)
    encoder_rank.set_index(index)
    sample = encoder_rank.load_sample(0, modalities=("images",), include_text=False)
    assert set(sample) == {"modality_inputs"} and set(sample["modality_inputs"]) == {"images"}
    assert not encoder_rank.tokenized and encoder_rank.media_decoded == 2

    language_rank = ConversationDataset(cfg.data, cfg.model)
    language_rank.set_index(index)
    sample = language_rank.load_sample(0, modalities=(), include_text=True)
    assert "input_ids" in sample and sample["modality_inputs"] == {}
    assert language_rank.media_decoded == 0
