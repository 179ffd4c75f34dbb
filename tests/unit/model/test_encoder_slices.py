"""Encoder slices: embed -> run_layers -> finish over several slices equals the full encoder."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mimo.model import AudioEncoder, AudioEncoderConfig, VisionEncoder, VisionEncoderConfig
from mimo.model.types import EncoderOutput

VIT = VisionEncoderConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_layers=3, num_heads=2)
WHISPER = AudioEncoderConfig(num_mel_bins=6, hidden_size=16, num_layers=3, num_heads=2, downsample=4, max_frames=40)
RANGES = [range(0, 1), range(1, 1), range(1, 3)]


def _build(kind: str, layers: range | None = None, **parts: bool) -> VisionEncoder | AudioEncoder:
    if kind == "vision":
        return VisionEncoder(VIT, layers=layers, **parts)
    return AudioEncoder(WHISPER, layers=layers, **parts)


def _inputs(kind: str) -> dict[str, Tensor]:
    if kind == "vision":
        return {"pixel_values": torch.randn(3, 3, 8, 8), "items_per_sample": torch.tensor([2, 0, 1])}
    return {
        "features": torch.randn(3, 14, 6),
        "lengths": torch.tensor([14, 3, 9]),
        "items_per_sample": torch.tensor([1, 2, 0]),
    }


def _slices(kind: str, full: VisionEncoder | AudioEncoder) -> list[VisionEncoder | AudioEncoder]:
    slices = [
        _build(kind, layers, has_embedding=index == 0, has_head=index == len(RANGES) - 1)
        for index, layers in enumerate(RANGES)
    ]
    for part in slices:
        part.load_state_dict({name: full.state_dict()[name] for name in part.state_dict()}, strict=True)
    return slices


@pytest.mark.parametrize("kind", ["vision", "audio"])
def test_chained_slices_equal_the_full_encoder(kind: str) -> None:
    full = _build(kind)
    inputs = _inputs(kind)
    expected: EncoderOutput = full(**inputs)
    first, middle, last = _slices(kind, full)
    hidden, aux = first.embed(**inputs)
    assert not any(value.is_floating_point() for value in aux.values())
    assert sorted(aux) == sorted(type(full).aux_keys)
    for part in (first, middle, last):
        hidden = part.run_layers(hidden, aux)
    out = last.finish(hidden, aux)
    torch.testing.assert_close(out.embeddings, expected.embeddings, rtol=0, atol=0)
    assert out.tokens_per_sample.tolist() == expected.tokens_per_sample.tolist()


@pytest.mark.parametrize("kind", ["vision", "audio"])
def test_slice_parameter_names_partition_the_full_encoder(kind: str) -> None:
    full_names = {name for name, _ in _build(kind).named_parameters()}
    per_slice = [{name for name, _ in part.named_parameters()} for part in _slices(kind, _build(kind))]
    assert set().union(*per_slice) == full_names
    assert sum(map(len, per_slice)) == len(full_names)
    assert {name.split(".")[1] for name in per_slice[2] if name.startswith("layers.")} == {"1", "2"}
    assert not per_slice[1]


@pytest.mark.parametrize("kind", ["vision", "audio"])
def test_slice_without_embedding_or_head_refuses_that_part(kind: str) -> None:
    part = _build(kind, range(1, 2), has_embedding=False, has_head=False)
    with pytest.raises(ValueError, match="has_embedding=False and cannot embed"):
        part.embed(**_inputs(kind))
    hidden, aux = _build(kind).embed(**_inputs(kind))
    with pytest.raises(ValueError, match="has_head=False and cannot finish"):
        part.finish(hidden, aux)


@pytest.mark.parametrize("kind", ["vision", "audio"])
@pytest.mark.parametrize("layers", [range(2, 4), range(0, 3, 2), range(-1, 1)])
def test_layer_range_outside_the_encoder_is_rejected(kind: str, layers: range) -> None:
    with pytest.raises(ValueError, match=rf"{kind} encoder layers must be a contiguous sub-range of range\(3\)"):
        _build(kind, layers)


@pytest.mark.parametrize("kind", ["vision", "audio"])
def test_hidden_states_of_the_wrong_width_are_named(kind: str) -> None:
    hidden, aux = _build(kind).embed(**_inputs(kind))
    with pytest.raises(ValueError, match=rf"\[N, L, 16\], got torch.float32 of shape \[3, {hidden.shape[1]}, 8\]"):
        _build(kind).run_layers(hidden[..., :8], aux)


def test_audio_token_counts_must_match_the_clips() -> None:
    encoder = _build("audio")
    hidden, aux = encoder.embed(**_inputs("audio"))
    with pytest.raises(ValueError, match=r"tokens_per_clip must have shape \[3\] \(one per clip\), got \[2\]"):
        encoder.run_layers(hidden, {**aux, "tokens_per_clip": aux["tokens_per_clip"][:2]})
