"""ModalityStage: a modality split over pipeline stages equals the full model's ModalitySubmodule.

The chain below mimics the runtime: each stage receives the previous stage's outputs detached, with the
floating-point entries without ``/`` requiring grad, and backward runs stage by stage from the last one.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mimo.model import (
    AudioEncoderConfig,
    LanguageModelConfig,
    MimoModel,
    MimoModelConfig,
    ModalityConfig,
    VisionEncoderConfig,
)
from mimo.activation_keys import counts_key
from mimo.model.modality_stage import ModalityStage

SEED = 7
LM_HIDDEN = 24
VIT = VisionEncoderConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_layers=3, num_heads=2)
WHISPER = AudioEncoderConfig(num_mel_bins=6, hidden_size=16, num_layers=4, num_heads=2, downsample=4, max_frames=40)
CONFIG = MimoModelConfig(
    language=LanguageModelConfig(vocab_size=64, hidden_size=LM_HIDDEN, num_layers=1, num_heads=4, max_seq_len=48),
    modalities={
        "images": ModalityConfig(placeholder_id=5, encoders={"vit": VIT}),
        "audio": ModalityConfig(placeholder_id=6, encoders={"whisper": WHISPER}),
        "mixed": ModalityConfig(placeholder_id=7, encoders={"vit": VIT, "whisper": WHISPER}),
    },
)

SPLITS = [
    ("images", 2, None),
    ("images", 3, None),
    ("images", 3, [2, 0, 1]),
    ("images", 3, [0, 1, 2]),
    ("audio", 2, None),
    ("audio", 3, None),
    ("audio", 3, [1, 0, 3]),
    ("mixed", 2, None),
    ("mixed", 3, None),
]


def _vit_inputs(items: list[int]) -> dict[str, Tensor]:
    return {"pixel_values": torch.randn(sum(items), 3, 8, 8), "items_per_sample": torch.tensor(items)}


def _whisper_inputs(lengths: list[int], items: list[int]) -> dict[str, Tensor]:
    features = torch.randn(len(lengths), 13, 6)
    lengths_tensor = torch.tensor(lengths, dtype=torch.long)
    return {"features": features, "lengths": lengths_tensor, "items_per_sample": torch.tensor(items)}


def _inputs(name: str) -> dict[str, dict[str, Tensor]]:
    """Inputs of one modality where some samples have no item of it."""
    if name == "images":
        return {"vit": _vit_inputs([2, 0, 1])}
    if name == "audio":
        return {"whisper": _whisper_inputs([13, 5, 9], [1, 0, 2])}
    return {"vit": _vit_inputs([1, 0, 1]), "whisper": _whisper_inputs([7, 11], [0, 1, 1])}


def _empty_inputs(name: str) -> dict[str, dict[str, Tensor]]:
    """A batch of two samples without any item of the modality."""
    empty_audio = {
        "features": torch.zeros(0, 8, 6),
        "lengths": torch.zeros(0, dtype=torch.long),
        "items_per_sample": torch.tensor([0, 0]),
    }
    per_encoder = {"vit": _vit_inputs([0, 0]), "whisper": empty_audio}
    return {encoder: per_encoder[encoder] for encoder in CONFIG.modalities[name].encoders}


def _stages(name: str, num_stages: int, layers_per_stage: list[int] | None) -> list[ModalityStage]:
    return [
        ModalityStage(CONFIG, name, stage=s, num_stages=num_stages, layers_per_stage=layers_per_stage, seed=SEED)
        for s in range(num_stages)
    ]


def _receive(key: str, tensor: Tensor) -> Tensor:
    """What the next stage gets over the wire: a fresh tensor; activations (no ``/``) require grad."""
    received = tensor.detach().clone()
    return received.requires_grad_(True) if received.is_floating_point() and "/" not in key else received


def _forward_chain(stages: list[ModalityStage], name: str, inputs: dict) -> tuple[list[dict], list[dict]]:
    stage_inputs, stage_outputs, received = [], [], {}
    for stage in stages:
        outputs = stage(inputs=received, modality_inputs={name: inputs}, input_ids=torch.zeros(1, 1))
        stage_inputs.append(received)
        stage_outputs.append(outputs)
        received = {key: _receive(key, tensor) for key, tensor in outputs.items()}
    return stage_inputs, stage_outputs


def _backward_chain(stage_inputs: list[dict], stage_outputs: list[dict], name: str, weights: Tensor) -> None:
    grads = {name: weights}
    for inputs, outputs in zip(reversed(stage_inputs), reversed(stage_outputs)):
        keys = [key for key in outputs if "/" not in key]
        torch.autograd.backward([outputs[key] for key in keys], [grads[key] for key in keys])
        grads = {key: tensor.grad for key, tensor in inputs.items() if "/" not in key}


def _grad(param: Tensor) -> Tensor:
    return param.grad if param.grad is not None else torch.zeros_like(param)


def _check_chain_against_full(name: str, num_stages: int, layers_per_stage: list[int] | None, inputs: dict) -> None:
    full = MimoModel(CONFIG, seed=SEED)
    expected = full.modalities[name](inputs)
    weights = torch.randn(expected.embeddings.shape)
    (expected.embeddings * weights).sum().backward()
    if expected.embeddings.numel():
        # Every parameter gets a gradient, so the comparison below cannot pass on zeros alone.
        silent = [n for n, p in full.modalities[name].named_parameters() if not bool(_grad(p).abs().sum() > 0)]
        assert not silent

    stages = _stages(name, num_stages, layers_per_stage)
    stage_inputs, stage_outputs = _forward_chain(stages, name, inputs)
    last = stage_outputs[-1]
    assert sorted(last) == sorted([name, counts_key(name)])
    torch.testing.assert_close(last[name], expected.embeddings, rtol=0, atol=1e-6)
    assert last[counts_key(name)].dtype == torch.long
    assert last[counts_key(name)].tolist() == expected.tokens_per_sample.tolist()

    _backward_chain(stage_inputs, stage_outputs, name, weights)
    for stage in stages:
        for param_name, param in stage.named_parameters():
            torch.testing.assert_close(_grad(param), _grad(full.get_parameter(param_name)), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "num_stages", "layers_per_stage"), SPLITS)
def test_chained_stages_equal_the_full_modality_in_rows_counts_and_grads(
    name: str, num_stages: int, layers_per_stage: list[int] | None
) -> None:
    _check_chain_against_full(name, num_stages, layers_per_stage, _inputs(name))


@pytest.mark.parametrize("name", ["images", "audio", "mixed"])
def test_a_batch_without_items_gives_no_rows_and_zero_counts(name: str) -> None:
    _check_chain_against_full(name, 3, None, _empty_inputs(name))


@pytest.mark.parametrize(("name", "num_stages", "layers_per_stage"), SPLITS)
def test_stage_parameters_are_the_full_model_parameters_exactly_once(
    name: str, num_stages: int, layers_per_stage: list[int] | None
) -> None:
    full = dict(MimoModel(CONFIG, seed=SEED).state_dict())
    full_names = {key for key in full if key.startswith(f"modalities.{name}.")}
    stages = _stages(name, num_stages, layers_per_stage)
    per_stage = [dict(stage.state_dict()) for stage in stages]
    all_names = [key for state in per_stage for key in state]
    assert len(all_names) == len(set(all_names))
    assert set(all_names) == full_names
    for state in per_stage:
        for key, value in state.items():
            assert torch.equal(value, full[key]), key
    assert all(".projection." not in key for state in per_stage[:-1] for key in state)
    assert all("_embedding." not in key for state in per_stage[1:] for key in state)
    assert all(".norm." not in key for state in per_stage[:-1] for key in state if ".layers." not in key)


def test_layers_are_keyed_by_global_index_on_each_stage() -> None:
    stages = _stages("mixed", 3, None)
    held = [{enc: list(e.layers) for enc, e in stage.modalities["mixed"].encoders.items()} for stage in stages]
    assert held == [
        {"vit": ["0"], "whisper": ["0", "1"]},
        {"vit": ["1"], "whisper": ["2"]},
        {"vit": ["2"], "whisper": ["3"]},
    ]
    assert [stage.layer_ranges["whisper"] for stage in stages] == [range(0, 2), range(2, 3), range(3, 4)]


def test_only_the_first_stage_needs_data_and_no_stage_has_a_loss() -> None:
    stages = _stages("audio", 3, None)
    assert [stage.needs_data for stage in stages] == [True, False, False]
    assert [stage.is_first_stage for stage in stages] == [True, False, False]
    assert [stage.is_last_stage for stage in stages] == [False, False, True]
    assert not any(stage.is_loss_stage for stage in stages)
    assert all(stage.module_name == "audio" and stage.num_stages == 3 for stage in stages)
    assert [stage.stage for stage in stages] == [0, 1, 2]


@pytest.mark.parametrize(
    ("name", "activations", "metadata"),
    [
        ("images", ["images"], ["images/items_per_sample"]),
        ("audio", ["audio"], ["audio/tokens_per_clip", "audio/items_per_sample"]),
        (
            "mixed",
            ["mixed:vit", "mixed:whisper"],
            ["mixed:vit/items_per_sample", "mixed:whisper/tokens_per_clip", "mixed:whisper/items_per_sample"],
        ),
    ],
)
def test_intermediate_outputs_are_activations_plus_integer_metadata(
    name: str, activations: list[str], metadata: list[str]
) -> None:
    outputs = _stages(name, 2, None)[0](inputs={}, modality_inputs={name: _inputs(name)})
    assert sorted(outputs) == sorted(activations + metadata)
    assert all(outputs[key].requires_grad and outputs[key].ndim == 3 for key in activations)
    assert all(not outputs[key].is_floating_point() and not outputs[key].requires_grad for key in metadata)


@pytest.mark.parametrize("name", ["images", "audio", "mixed"])
def test_single_stage_equals_the_full_models_modality(name: str) -> None:
    stage, full = ModalityStage(CONFIG, name, seed=SEED), MimoModel(CONFIG, seed=SEED)
    full_state = {k: v for k, v in full.state_dict().items() if k.startswith(f"modalities.{name}.")}
    assert list(stage.state_dict()) == list(full_state)
    assert all(torch.equal(value, full_state[key]) for key, value in stage.state_dict().items())
    assert (stage.is_first_stage, stage.is_loss_stage, stage.needs_data) == (True, False, True)
    inputs = {name: _inputs(name), "unrelated": {}}
    output = stage(inputs={}, modality_inputs=inputs)
    expected = full.modalities[name](inputs[name])
    assert sorted(output) == sorted([name, counts_key(name)])
    assert torch.equal(output[name], expected.embeddings)
    assert torch.equal(output[counts_key(name)], expected.tokens_per_sample)


def test_first_stage_without_its_modality_inputs_names_the_modality() -> None:
    stage = _stages("images", 2, None)[0]
    with pytest.raises(ValueError, match="no inputs for modality 'images'"):
        stage(inputs={}, modality_inputs={"audio": _inputs("audio")})
    with pytest.raises(ValueError, match="no inputs for modality 'images'"):
        stage(inputs={})


def test_later_stage_names_the_inputs_it_lacks() -> None:
    stage = _stages("audio", 3, None)[1]
    hidden = torch.zeros(1, 2, 16)
    with pytest.raises(ValueError, match=r"'audio' stage 1 needs inputs \['audio/tokens_per_clip'\] from stage 0"):
        stage(inputs={"audio": hidden, "audio/items_per_sample": torch.tensor([1])})


def test_more_stages_than_layers_is_the_split_error() -> None:
    with pytest.raises(ValueError, match="cannot spread 3 layers over 4 pipeline stages"):
        ModalityStage(CONFIG, "images", stage=0, num_stages=4, seed=SEED)


def test_explicit_split_must_fit_every_encoder_of_the_modality() -> None:
    with pytest.raises(ValueError, match=r"encoder 'whisper': layers_per_stage=\[2, 0, 1\] sums to 3, not 4"):
        ModalityStage(CONFIG, "mixed", stage=0, num_stages=3, layers_per_stage=[2, 0, 1], seed=SEED)


@pytest.mark.parametrize("stage", [-1, 2])
def test_stage_outside_the_pipeline_is_rejected(stage: int) -> None:
    with pytest.raises(ValueError, match=rf"stage must be in \[0, 2\) for 2 stages, got {stage}"):
        ModalityStage(CONFIG, "images", stage=stage, num_stages=2, seed=SEED)


def test_unknown_modality_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown modality 'video'; the model has \['images', 'audio', 'mixed'\]"):
        ModalityStage(CONFIG, "video", seed=SEED)
