"""LanguageModel: slices keyed by global layer index, embedding checks, per-token loss."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mimo.model import LanguageModel, LanguageModelConfig


def _inputs(config: LanguageModelConfig, batch: int = 2, seq: int = 9) -> tuple[Tensor, Tensor, Tensor]:
    input_ids = torch.randint(0, config.vocab_size, (batch, seq))
    position_ids = torch.arange(seq).expand(batch, seq)
    labels = torch.randint(0, config.vocab_size, (batch, seq))
    return input_ids, position_ids, labels


def _slices(config: LanguageModelConfig, full: LanguageModel) -> tuple[LanguageModel, LanguageModel]:
    first = LanguageModel(config, layers=range(0, 2), has_head=False)
    last = LanguageModel(config, layers=range(2, 4), has_embedding=False)
    for part in (first, last):
        part.load_state_dict({name: full.state_dict()[name] for name in part.state_dict()}, strict=True)
    return first, last


def test_slices_chained_equal_the_full_model(language_config: LanguageModelConfig) -> None:
    full = LanguageModel(language_config)
    first, last = _slices(language_config, full)
    input_ids, position_ids, labels = _inputs(language_config)
    hidden = first(first.embed(input_ids, position_ids), labels=labels)
    assert hidden.shape == (2, 9, language_config.hidden_size)
    expected = full(full.embed(input_ids, position_ids), labels=labels)
    torch.testing.assert_close(last(hidden, labels=labels), expected, rtol=0, atol=0)


def test_slice_parameter_names_are_those_of_the_full_model(language_config: LanguageModelConfig) -> None:
    full_names = {name for name, _ in LanguageModel(language_config).named_parameters()}
    first, last = (
        LanguageModel(language_config, layers=range(0, 2), has_head=False),
        LanguageModel(language_config, layers=range(2, 4), has_embedding=False),
    )
    first_names = {name for name, _ in first.named_parameters()}
    last_names = {name for name, _ in last.named_parameters()}
    assert first_names | last_names == full_names
    assert not first_names & last_names
    assert list(last.layers) == ["2", "3"]
    assert "layers.2.qkv.weight" in last_names and "head.weight" in last_names
    assert not any(name.startswith(("head", "norm")) for name in first_names)
    assert not any(name.startswith("embedding") for name in last_names)


def test_per_token_loss_matches_log_softmax_and_ignores_minus_100(language_config: LanguageModelConfig) -> None:
    model = LanguageModel(language_config)
    input_ids, position_ids, labels = _inputs(language_config)
    labels[0, :3] = -100
    hidden = model.embed(input_ids, position_ids)
    losses = model(hidden, labels=labels)
    for layer in model.layers.values():
        hidden = layer(hidden)
    log_probs = torch.log_softmax(model.head(model.norm(hidden)), dim=-1)
    expected = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = torch.where(labels == -100, torch.zeros_like(expected), expected)
    assert losses.dtype == torch.float32 and losses.shape == labels.shape
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    assert bool((losses[0, :3] == 0).all())


def test_embedding_is_token_plus_position(language_config: LanguageModelConfig) -> None:
    model = LanguageModel(language_config)
    input_ids, position_ids, _ = _inputs(language_config)
    expected = model.embedding.token.weight[input_ids] + model.embedding.position.weight[position_ids]
    torch.testing.assert_close(model.embed(input_ids, position_ids), expected, rtol=0, atol=0)


def test_out_of_range_ids_are_named(language_config: LanguageModelConfig) -> None:
    model = LanguageModel(language_config)
    input_ids, position_ids, _ = _inputs(language_config)
    bad_tokens = input_ids.clone()
    bad_tokens[1, 2] = 70
    with pytest.raises(ValueError, match=r"token id 70 .*vocab_size=64"):
        model.embed(bad_tokens, position_ids)
    bad_positions = position_ids.clone()
    bad_positions[0, -1] = 48
    with pytest.raises(ValueError, match=r"position id 48 .*max_seq_len=48"):
        model.embed(input_ids, bad_positions)


def test_head_requires_labels(language_config: LanguageModelConfig) -> None:
    model = LanguageModel(language_config)
    with pytest.raises(ValueError, match="needs labels"):
        model(torch.randn(1, 3, language_config.hidden_size))


def test_out_of_range_label_is_named(language_config: LanguageModelConfig) -> None:
    model = LanguageModel(language_config)
    labels = torch.tensor([[1, 64, -100]])
    with pytest.raises(ValueError, match=r"label 64 "):
        model(torch.randn(1, 3, language_config.hidden_size), labels=labels)


def test_slice_without_embedding_cannot_embed(language_config: LanguageModelConfig) -> None:
    model = LanguageModel(language_config, layers=range(2, 4), has_embedding=False)
    with pytest.raises(ValueError, match="has_embedding=False"):
        model.embed(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("layers", [range(3, 5), range(0, 4, 2), range(-1, 2)])
def test_layer_range_outside_the_model_is_rejected(language_config: LanguageModelConfig, layers: range) -> None:
    with pytest.raises(ValueError, match=r"sub-range of range\(4\)"):
        LanguageModel(language_config, layers=layers)


def test_zero_rows_run_through_every_part(language_config: LanguageModelConfig) -> None:
    model = LanguageModel(language_config)
    empty = torch.zeros(0, 4, dtype=torch.long)
    losses = model(model.embed(empty, empty), labels=empty)
    assert losses.shape == (0, 4)
