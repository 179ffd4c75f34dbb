"""The one seam between the runtime and model families: build a module, or one pipeline stage of it.

A family is a config dataclass plus two builders registered here: one for the language model, one for encoders.
A builder returns a *slice*: the parts of the module that one pipeline stage holds, under the whole module's
parameter names (layers keyed by global index), so checkpoints and exports never depend on the layout.

- Language slice: ``embed(input_ids, position_ids)`` on the first stage; ``forward(hidden, *, position_ids,
  labels)`` returns hidden states, or per-token losses ``[B, S]`` on the stage with the head; attributes
  ``has_embedding``, ``has_head``, ``layer_indices`` and ``passes_position_ids`` (True when every stage needs
  the position ids, e.g. rotary embeddings: the first stage then sends them along with the hidden states).
- Encoder slice: ``embed(**inputs) -> (hidden, aux)`` on the first stage, ``run_layers(hidden, aux)`` on every
  stage, ``finish(hidden, aux) -> EncoderOutput`` on the last; ``aux_keys`` names the integer aux tensors that
  travel between stages.

Built-in slices are initialised from ``(seed, full parameter name)``; Hugging Face slices read their weights
from the folder. Adding a family (say, a user's own ``nn.Module``) = a config dataclass with a ``kind`` field, a
builder, and one entry below; ``configs.py`` lists the config in the ``LanguageConfig``/``EncoderConfig`` union.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from torch import nn

from mimo.model.audio import AudioEncoder
from mimo.model.configs import (
    AudioEncoderConfig,
    EncoderConfig,
    LanguageConfig,
    LanguageModelConfig,
    VisionEncoderConfig,
)
from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.language_config import HFLanguageConfig
from mimo.model.init import init_parameters
from mimo.model.language import LanguageModel
from mimo.model.vision import VisionEncoder

__all__ = ["build_encoder_slice", "build_language_slice"]

SliceBuilder = Callable[..., nn.Module]


def _builtin_language(config: LanguageModelConfig, *, prefix: str, seed: int, **parts: Any) -> nn.Module:
    language = LanguageModel(config, **parts)
    init_parameters(language, seed=seed, prefix=prefix)
    return language


def _hf_language(config: HFLanguageConfig, *, prefix: str, seed: int, **parts: Any) -> nn.Module:
    del prefix, seed  # The weights come from the folder.
    from mimo.model.hf.language import HFLanguageSlice

    return HFLanguageSlice(config, **parts)


def _builtin_encoder(encoder_class: type[nn.Module]) -> SliceBuilder:
    def build(config: Any, *, prefix: str, seed: int, **parts: Any) -> nn.Module:
        encoder = encoder_class(config, **parts)
        init_parameters(encoder, seed=seed, prefix=prefix)
        return encoder

    return build


def _hf_encoder(config: Any, *, prefix: str, seed: int, **parts: Any) -> nn.Module:
    del prefix, seed  # The weights come from the folder.
    from mimo.model.hf.encoders import build_hf_encoder

    return build_hf_encoder(config, **parts)


LANGUAGE_FAMILIES: MappingProxyType[type, SliceBuilder] = MappingProxyType(
    {LanguageModelConfig: _builtin_language, HFLanguageConfig: _hf_language}
)
ENCODER_FAMILIES: MappingProxyType[type, SliceBuilder] = MappingProxyType(
    {
        VisionEncoderConfig: _builtin_encoder(VisionEncoder),
        AudioEncoderConfig: _builtin_encoder(AudioEncoder),
        HFEncoderConfig: _hf_encoder,
    }
)


def build_language_slice(
    config: LanguageConfig, *, layers: range | None = None, has_embedding: bool = True, has_head: bool = True,
    seed: int, prefix: str,
) -> nn.Module:
    """The language model, or the part of it one stage holds; ``prefix`` is its name in the whole model."""
    builder = LANGUAGE_FAMILIES.get(type(config))
    if builder is None:
        raise ValueError(f"no language model family for {type(config).__name__}")
    return builder(config, layers=layers, has_embedding=has_embedding, has_head=has_head, seed=seed, prefix=prefix)


def build_encoder_slice(
    config: EncoderConfig, *, layers: range | None = None, has_embedding: bool = True, has_head: bool = True,
    seed: int, prefix: str,
) -> nn.Module:
    """An encoder, or the part of it one stage holds; ``prefix`` is its name in the whole model."""
    builder = ENCODER_FAMILIES.get(type(config))
    if builder is None:
        raise ValueError(f"no encoder family for {type(config).__name__}")
    return builder(config, layers=layers, has_embedding=has_embedding, has_head=has_head, seed=seed, prefix=prefix)
