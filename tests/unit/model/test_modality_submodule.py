"""ModalitySubmodule: encoders merged per sample, then projected."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mimo.model import (
    AudioEncoderConfig,
    EncoderOutput,
    ModalityConfig,
    ModalitySubmodule,
    VisionEncoderConfig,
)
from mimo.model.modality import merge_per_sample

LM_HIDDEN = 24


def _project(module: ModalitySubmodule, rows: Tensor) -> Tensor:
    first, last = module.projection[0], module.projection[2]
    return torch.nn.functional.gelu(rows @ first.weight.T + first.bias) @ last.weight.T + last.bias


def _inputs() -> dict[str, dict[str, Tensor]]:
    return {
        "vit": {"pixel_values": torch.randn(3, 3, 8, 8), "items_per_sample": torch.tensor([2, 0, 1])},
        "whisper": {
            "features": torch.randn(2, 12, 6),
            "lengths": torch.tensor([12, 5]),
            "items_per_sample": torch.tensor([0, 1, 1]),
        },
    }


def test_two_encoders_are_merged_per_sample(
    vision_config: VisionEncoderConfig, audio_config: AudioEncoderConfig
) -> None:
    module = ModalitySubmodule(
        ModalityConfig(placeholder_id=5, encoders={"vit": vision_config, "whisper": audio_config}), LM_HIDDEN
    )
    inputs = _inputs()
    out = module(inputs)
    vit, whisper = module.encoders["vit"](**inputs["vit"]), module.encoders["whisper"](**inputs["whisper"])
    vit_rows = vit.embeddings.split(vit.tokens_per_sample.tolist())
    whisper_rows = whisper.embeddings.split(whisper.tokens_per_sample.tolist())
    expected = torch.cat([torch.cat([v, w]) for v, w in zip(vit_rows, whisper_rows)])
    assert out.tokens_per_sample.tolist() == [2 * 4, 3, 4 + 2]
    assert out.embeddings.shape == (8 + 3 + 6, LM_HIDDEN)
    torch.testing.assert_close(out.embeddings, _project(module, expected), rtol=1e-5, atol=1e-5)


def test_merge_places_each_encoder_rows_inside_its_sample() -> None:
    first = EncoderOutput(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([2, 0, 1]))
    second = EncoderOutput(torch.tensor([[10.0], [20.0], [30.0]]), torch.tensor([1, 2, 0]))
    merged = merge_per_sample([first, second])
    assert merged.embeddings.flatten().tolist() == [1.0, 2.0, 10.0, 20.0, 30.0, 3.0]
    assert merged.tokens_per_sample.tolist() == [3, 2, 1]


def test_merge_rejects_different_sample_counts() -> None:
    first = EncoderOutput(torch.zeros(1, 1), torch.tensor([1, 0]))
    second = EncoderOutput(torch.zeros(1, 1), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"number of samples: \[2, 1\]"):
        merge_per_sample([first, second])


def test_missing_encoder_inputs_are_named(vision_config: VisionEncoderConfig, audio_config: AudioEncoderConfig) -> None:
    module = ModalitySubmodule(
        ModalityConfig(placeholder_id=5, encoders={"vit": vision_config, "whisper": audio_config}), LM_HIDDEN
    )
    with pytest.raises(ValueError, match=r"no inputs for encoder\(s\) \['whisper'\]"):
        module({"vit": _inputs()["vit"]})


def test_inputs_without_item_counts_are_rejected(vision_config: VisionEncoderConfig) -> None:
    module = ModalitySubmodule(ModalityConfig(placeholder_id=5, encoders={"vit": vision_config}), LM_HIDDEN)
    with pytest.raises(ValueError, match=r"'vit' lack 'items_per_sample'"):
        module({"vit": {"pixel_values": torch.randn(1, 3, 8, 8)}})


def test_gradients_reach_every_encoder_and_the_projection(
    vision_config: VisionEncoderConfig, audio_config: AudioEncoderConfig
) -> None:
    module = ModalitySubmodule(
        ModalityConfig(placeholder_id=5, encoders={"vit": vision_config, "whisper": audio_config}), LM_HIDDEN
    )
    module(_inputs()).embeddings.square().sum().backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing
