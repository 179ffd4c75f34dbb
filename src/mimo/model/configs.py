"""Typed configuration of the built-in model: the language model, the encoders and the modalities.

Every config validates itself in ``__post_init__`` and raises ``ValueError`` naming the field and the value,
so a bad YAML value is reported before any module or process group exists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

LANGUAGE_MODULE = "language"
"""Key of the language model; every other module is a modality with a free name."""

PAD_TOKEN_ID = 0
"""Token id used for padding; placeholder ids must differ from it."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,19}")
"""Module and encoder names: they become parts of keys ("images:vit/items_per_sample") sent between ranks."""


def _require_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{what} name {name!r} must be 1-20 letters, digits or '_', not starting with a digit "
            "(names become keys of the tensors sent between ranks)"
        )


def _require_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(kw_only=True)
class LanguageModelConfig:
    """A small decoder-only transformer: token + learned position embedding, pre-norm blocks, LM head."""

    vocab_size: int = 64
    """Number of token ids, placeholders and padding included."""
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    """MLP width = mlp_ratio * hidden_size."""
    max_seq_len: int = 128
    """Size of the learned position table; position_ids must stay below it."""

    def __post_init__(self) -> None:
        _require_positive(
            "language",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            max_seq_len=self.max_seq_len,
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"language.hidden_size ({self.hidden_size}) must be divisible by language.num_heads ({self.num_heads})"
            )


@dataclass(kw_only=True)
class VisionEncoderConfig:
    """A ViT-style patch encoder for images ``[N, C, H, W]`` of one fixed square size."""

    kind: Literal["vision"] = "vision"
    image_size: int = 16
    patch_size: int = 4
    num_channels: int = 3
    hidden_size: int = 32
    num_layers: int = 1
    num_heads: int = 2
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        _require_positive(
            "vision encoder",
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
        )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision encoder image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"vision encoder hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(kw_only=True)
class AudioEncoderConfig:
    """A strided-conv + transformer encoder for log-mel frames ``[N, T, F]`` with per-clip lengths."""

    kind: Literal["audio"] = "audio"
    num_mel_bins: int = 16
    hidden_size: int = 32
    num_layers: int = 1
    num_heads: int = 2
    mlp_ratio: int = 4
    downsample: int = 4
    """Conv kernel and stride over time: a clip of T frames gives ceil(T / downsample) tokens."""
    max_frames: int = 64

    def __post_init__(self) -> None:
        _require_positive(
            "audio encoder",
            num_mel_bins=self.num_mel_bins,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            downsample=self.downsample,
            max_frames=self.max_frames,
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"audio encoder hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )

    def tokens_for_frames(self, num_frames: int) -> int:
        """Number of output tokens for a clip of ``num_frames`` valid frames."""
        if num_frames < 1 or num_frames > self.max_frames:
            raise ValueError(f"audio clip length {num_frames} must be in [1, max_frames={self.max_frames}]")
        return math.ceil(num_frames / self.downsample)

    @property
    def max_tokens(self) -> int:
        return math.ceil(self.max_frames / self.downsample)


EncoderConfig = VisionEncoderConfig | AudioEncoderConfig


@dataclass(kw_only=True)
class ModalityConfig:
    """One modality: one or more encoders whose rows are merged per sample, then one projection."""

    placeholder_id: int
    """Token id that marks, in input_ids, each position this modality's rows fill."""
    encoders: dict[str, EncoderConfig]

    def __post_init__(self) -> None:
        if not self.encoders:
            raise ValueError("a modality needs at least one encoder, got encoders={}")
        for name in self.encoders:
            _require_name("encoder", name)
        hidden_sizes = {name: enc.hidden_size for name, enc in self.encoders.items()}
        if len(set(hidden_sizes.values())) > 1:
            raise ValueError(f"encoders of one modality must share hidden_size, got {hidden_sizes}")

    @property
    def encoder_hidden_size(self) -> int:
        return next(iter(self.encoders.values())).hidden_size


@dataclass(kw_only=True)
class MimoModelConfig:
    """The whole model: one language model and any number of modalities (possibly none)."""

    language: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for name, modality in self.modalities.items():
            _require_name("modality", name)
            if name == LANGUAGE_MODULE:
                raise ValueError(f"modality name {name!r} is reserved for the language model")
            token = modality.placeholder_id
            if token == PAD_TOKEN_ID or not 0 < token < self.language.vocab_size:
                raise ValueError(
                    f"modalities.{name}.placeholder_id={token} must be in [1, vocab_size={self.language.vocab_size})"
                    f" (0 is padding)"
                )
            if token in seen:
                raise ValueError(
                    f"modalities.{name}.placeholder_id={token} is already used by modality {seen[token]!r}"
                )
            seen[token] = name

    @property
    def placeholder_ids(self) -> dict[str, int]:
        return {name: m.placeholder_id for name, m in self.modalities.items()}

    @property
    def module_names(self) -> list[str]:
        """Modalities in config order, then the language model."""
        return [*self.modalities, LANGUAGE_MODULE]
