"""AudioEncoder: valid tokens only, sample-major, independent of batch padding."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mimo.model import AudioEncoder, AudioEncoderConfig


def _padded(clips: list[Tensor], t_max: int) -> tuple[Tensor, Tensor]:
    features = torch.zeros(len(clips), t_max, clips[0].shape[1])
    for index, clip in enumerate(clips):
        features[index, : clip.shape[0]] = clip
    return features, torch.tensor([clip.shape[0] for clip in clips])


def _reference_rows(encoder: AudioEncoder, clip: Tensor) -> Tensor:
    """One unpadded clip whose length is a multiple of ``downsample``: windows by hand, no mask needed."""
    ds = encoder.config.downsample
    conv = encoder.frame_embedding
    windows = clip.view(-1, ds, clip.shape[1])  # [L, ds, F]
    tokens = torch.einsum("lkf,dfk->ld", windows, conv.weight) + conv.bias
    hidden = (torch.nn.functional.gelu(tokens) + encoder.position_embedding.weight[: tokens.shape[0]]).unsqueeze(0)
    for layer in encoder.layers.values():
        hidden = layer(hidden)
    return encoder.norm(hidden)[0]


def test_single_clip_matches_hand_written_windows(audio_config: AudioEncoderConfig) -> None:
    encoder = AudioEncoder(audio_config)
    clip = torch.randn(12, audio_config.num_mel_bins)
    out = encoder(clip.unsqueeze(0), torch.tensor([12]), torch.tensor([1]))
    torch.testing.assert_close(out.embeddings, _reference_rows(encoder, clip), rtol=1e-5, atol=1e-5)


def test_clip_rows_do_not_depend_on_batch_padding(audio_config: AudioEncoderConfig) -> None:
    encoder = AudioEncoder(audio_config)
    clip = torch.randn(10, audio_config.num_mel_bins)
    short = encoder(*_padded([clip], 12), torch.tensor([1])).embeddings
    long = encoder(*_padded([clip], 40), torch.tensor([1])).embeddings
    assert short.shape == (3, audio_config.hidden_size)
    torch.testing.assert_close(short, long, rtol=0, atol=1e-6)
    # Garbage past the clip's length and a longer neighbour change nothing either.
    features, lengths = _padded([clip, torch.randn(37, audio_config.num_mel_bins)], 40)
    features[0, 10:] = 1e3
    mixed = encoder(features, lengths, torch.tensor([2])).embeddings
    torch.testing.assert_close(mixed[:3], short, rtol=0, atol=1e-6)


def test_counts_and_sample_major_order(audio_config: AudioEncoderConfig) -> None:
    encoder = AudioEncoder(audio_config)
    clips = [torch.randn(n, audio_config.num_mel_bins) for n in (10, 4, 7)]
    out = encoder(*_padded(clips, 16), torch.tensor([2, 0, 1]))
    assert out.tokens_per_sample.tolist() == [3 + 1, 0, 2]
    alone = [encoder(c.unsqueeze(0), torch.tensor([c.shape[0]]), torch.tensor([1])).embeddings for c in clips]
    expected = torch.cat(alone)
    torch.testing.assert_close(out.embeddings, expected, rtol=0, atol=1e-6)


def test_zero_clips_give_zero_rows(audio_config: AudioEncoderConfig) -> None:
    out = AudioEncoder(audio_config)(torch.zeros(0, 8, 6), torch.zeros(0, dtype=torch.long), torch.tensor([0, 0, 0]))
    assert out.embeddings.shape == (0, audio_config.hidden_size)
    assert out.tokens_per_sample.tolist() == [0, 0, 0]


def test_wrong_mel_bins_are_named(audio_config: AudioEncoderConfig) -> None:
    with pytest.raises(ValueError, match=r"\[N, T, 6\], got \[1, 8, 5\]"):
        AudioEncoder(audio_config)(torch.zeros(1, 8, 5), torch.tensor([8]), torch.tensor([1]))


def test_length_beyond_t_max_is_named(audio_config: AudioEncoderConfig) -> None:
    with pytest.raises(ValueError, match=r"lengths \[9\] must be in \[1, 8\]"):
        AudioEncoder(audio_config)(torch.zeros(2, 8, 6), torch.tensor([3, 9]), torch.tensor([2]))


def test_length_count_must_match_clips(audio_config: AudioEncoderConfig) -> None:
    with pytest.raises(ValueError, match=r"shape \[2\] \(one per clip\)"):
        AudioEncoder(audio_config)(torch.zeros(2, 8, 6), torch.tensor([3]), torch.tensor([2]))


def test_item_counts_must_sum_to_the_number_of_clips(audio_config: AudioEncoderConfig) -> None:
    with pytest.raises(ValueError, match=r"sums to 1 but 2 audio clips"):
        AudioEncoder(audio_config)(torch.zeros(2, 8, 6), torch.tensor([3, 8]), torch.tensor([1]))
