"""init_parameters: values depend only on (seed, full parameter name)."""

from __future__ import annotations

import torch

from mimo.model import (
    LANGUAGE_PREFIX,
    LanguageModel,
    MimoModel,
    MimoModelConfig,
    ModalitySubmodule,
    init_parameters,
    modality_prefix,
)
from mimo.model.init import parameter_seed


def test_language_slice_matches_the_full_model(mimo_config: MimoModelConfig) -> None:
    full = dict(MimoModel(mimo_config, seed=3).named_parameters())
    part = LanguageModel(mimo_config.language, layers=range(2, 4), has_embedding=False)
    init_parameters(part, seed=3, prefix=LANGUAGE_PREFIX)
    names = [name for name, _ in part.named_parameters()]
    assert "layers.2.qkv.weight" in names and "head.weight" in names
    for name, param in part.named_parameters():
        torch.testing.assert_close(param, full[LANGUAGE_PREFIX + name], rtol=0, atol=0)


def test_modality_built_alone_matches_the_full_model(mimo_config: MimoModelConfig) -> None:
    full = dict(MimoModel(mimo_config, seed=3).named_parameters())
    part = ModalitySubmodule(mimo_config.modalities["audio"], mimo_config.language.hidden_size)
    init_parameters(part, seed=3, prefix=modality_prefix("audio"))
    for name, param in part.named_parameters():
        torch.testing.assert_close(param, full[modality_prefix("audio") + name], rtol=0, atol=0)


def test_same_seed_same_model_other_seed_other_weights(mimo_config: MimoModelConfig) -> None:
    first, second = MimoModel(mimo_config, seed=0), MimoModel(mimo_config, seed=0)
    torch.manual_seed(999)  # The global RNG must play no part.
    third = MimoModel(mimo_config, seed=1)
    second_params, third_params = dict(second.named_parameters()), dict(third.named_parameters())
    for name, param in first.named_parameters():
        torch.testing.assert_close(param, second_params[name], rtol=0, atol=0)
    weight = "language.layers.0.qkv.weight"
    assert not torch.equal(first.get_parameter(weight), third_params[weight])


def test_value_rules_weights_biases_and_norms(mimo_config: MimoModelConfig) -> None:
    model = MimoModel(mimo_config, seed=5)
    name = "language.layers.1.mlp.0.weight"
    generator = torch.Generator().manual_seed(parameter_seed(5, name))
    expected = torch.normal(0.0, 0.02, size=tuple(model.get_parameter(name).shape), generator=generator)
    torch.testing.assert_close(model.get_parameter(name), expected, rtol=0, atol=0)
    assert abs(float(model.get_parameter("language.embedding.token.weight").detach().std()) - 0.02) < 0.002
    assert bool((model.get_parameter("language.layers.1.mlp.0.bias") == 0).all())
    assert bool((model.get_parameter("modalities.images.encoders.vit.patch_embedding.bias") == 0).all())
    assert bool((model.get_parameter("language.layers.0.attention_norm.weight") == 1).all())
    assert bool((model.get_parameter("language.norm.weight") == 1).all())


def test_parameter_seed_is_stable_across_processes() -> None:
    # A golden value: Python's hash() of a str changes per process (PYTHONHASHSEED), this must not.
    assert parameter_seed(0, "language.head.weight") == 17315209472982178881
    assert parameter_seed(1, "language.head.weight") != parameter_seed(0, "language.head.weight")
