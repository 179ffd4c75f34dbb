"""Typed configuration of the built-in model: the language model, the encoders and the modalities.

Every config validates itself in ``__post_init__`` and raises ``ValueError`` naming the field and the value,
so a bad YAML value is reported before any module or process group exists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.language_config import HFLanguageConfig
from mimo.model.tp_sizes import check_divides

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

    def check_tensor_parallel(self, tp: int, *, owner: str = "model.language") -> None:
        """ValueError unless ``tp`` divides the heads and the MLP width (the vocabulary may split unevenly)."""
        check_divides(tp, {"num_heads": self.num_heads, "mlp width": self.mlp_ratio * self.hidden_size}, owner)


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

    def check_tensor_parallel(self, tp: int, *, owner: str = "vision encoder") -> None:
        """ValueError unless ``tp`` divides the heads and the MLP width (what it splits)."""
        check_divides(tp, {"num_heads": self.num_heads, "mlp width": self.mlp_ratio * self.hidden_size}, owner)

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def input_kind(self) -> Literal["vision"]:
        """What this encoder reads (data code dispatches on it, whatever the family)."""
        return "vision"


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

    def check_tensor_parallel(self, tp: int, *, owner: str = "audio encoder") -> None:
        """ValueError unless ``tp`` divides the heads and the MLP width (what it splits)."""
        check_divides(tp, {"num_heads": self.num_heads, "mlp width": self.mlp_ratio * self.hidden_size}, owner)

    def tokens_for_frames(self, num_frames: int) -> int:
        """Number of output tokens for a clip of ``num_frames`` valid frames."""
        if num_frames < 1 or num_frames > self.max_frames:
            raise ValueError(f"audio clip length {num_frames} must be in [1, max_frames={self.max_frames}]")
        return math.ceil(num_frames / self.downsample)

    @property
    def max_tokens(self) -> int:
        return math.ceil(self.max_frames / self.downsample)

    @property
    def input_kind(self) -> Literal["audio"]:
        """What this encoder reads (data code dispatches on it, whatever the family)."""
        return "audio"


EncoderConfig = VisionEncoderConfig | AudioEncoderConfig | HFEncoderConfig
"""An encoder: built-in (``kind: vision | audio``) or a Hugging Face folder (``hf: DIR``)."""

LanguageConfig = LanguageModelConfig | HFLanguageConfig
"""The language model: built-in (sizes given) or a Hugging Face folder (``hf: DIR``)."""


@dataclass(kw_only=True)
class ProjectionConfig:
    """How a modality's merged encoder rows reach the language model's hidden size."""

    kind: Literal["mlp", "linear"] = "mlp"
    """``mlp``: Linear -> GELU -> Linear (LLaVA's two-layer projector); ``linear``: one Linear."""
    hidden_size: int | None = None
    """Width of the MLP's middle layer; None: the language model's hidden size (as LLaVA)."""
    input_size: int | None = None
    """Optional statement of the rows' width (LLaVA's ``mm_hidden_size``): checked against the encoders."""
    output_size: int | None = None
    """Optional statement of the output width: checked against the language model's hidden size."""

    def __post_init__(self) -> None:
        for name in ("input_size", "output_size"):
            if getattr(self, name) is not None:
                _require_positive("projection", **{name: getattr(self, name)})
        if self.hidden_size is not None:
            _require_positive("projection", hidden_size=self.hidden_size)
            if self.kind == "linear":
                raise ValueError("projection.hidden_size applies to kind 'mlp' only; a linear projection has none")


@dataclass(kw_only=True)
class ModalityConfig:
    """One modality: one or more encoders whose rows are merged per sample, then one projection."""

    placeholder_id: int | None = None
    """Token id that marks, in input_ids, each position this modality's rows fill."""
    placeholder: str | None = None
    """The same, named by a token string of the language model's tokenizer (``"<image>"``); added if missing."""
    encoders: dict[str, EncoderConfig]
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)

    def __post_init__(self) -> None:
        if (self.placeholder_id is None) == (self.placeholder is None):
            raise ValueError(
                f"give exactly one of placeholder_id and placeholder, got placeholder_id={self.placeholder_id!r}, "
                f"placeholder={self.placeholder!r}"
            )
        if not self.encoders:
            raise ValueError("a modality needs at least one encoder, got encoders={}")
        for name in self.encoders:
            _require_name("encoder", name)
        hidden_sizes = {name: enc.hidden_size for name, enc in self.encoders.items()}
        if len(set(hidden_sizes.values())) > 1:
            raise ValueError(f"encoders of one modality must share hidden_size, got {hidden_sizes}")

    @property
    def token_id(self) -> int:
        """The placeholder's id: ``placeholder_id``, or the id the tokenizer gave ``placeholder``."""
        if self.placeholder_id is not None:
            return self.placeholder_id
        return int(getattr(self, "resolved_placeholder_id"))

    @property
    def encoder_hidden_size(self) -> int:
        return next(iter(self.encoders.values())).hidden_size


@dataclass(kw_only=True)
class MimoModelConfig:
    """The whole model: one language model and any number of modalities (possibly none)."""

    language: LanguageConfig = field(default_factory=LanguageModelConfig)
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.modalities:
            _require_name("modality", name)
            if name == LANGUAGE_MODULE:
                raise ValueError(f"modality name {name!r} is reserved for the language model")
        self._resolve_placeholder_strings()
        seen: dict[int, str] = {}
        for name, modality in self.modalities.items():
            token = modality.token_id
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
            self._check_projection_fits(name, modality)

    def _check_projection_fits(self, name: str, modality: ModalityConfig) -> None:
        projection = modality.projection
        if projection.input_size is not None and projection.input_size != modality.encoder_hidden_size:
            raise ValueError(
                f"modalities.{name}.projection.input_size={projection.input_size} does not fit: its encoders "
                f"({', '.join(modality.encoders)}) emit rows of width {modality.encoder_hidden_size}"
            )
        if projection.output_size is not None and projection.output_size != self.language.hidden_size:
            raise ValueError(
                f"modalities.{name}.projection.output_size={projection.output_size} does not fit: the language "
                f"model's hidden size is {self.language.hidden_size}"
            )

    def _resolve_placeholder_strings(self) -> None:
        """Turn ``placeholder: "<image>"`` into ids with the language model's tokenizer (adding missing tokens)."""
        texts = {name: m.placeholder for name, m in self.modalities.items() if m.placeholder is not None}
        if not texts:
            return
        if not isinstance(self.language, HFLanguageConfig):
            name = next(iter(texts))
            raise ValueError(
                f"modalities.{name}.placeholder={texts[name]!r} needs a tokenizer, which only a Hugging Face "
                "language model (model.language.hf) has; give placeholder_id instead"
            )
        from mimo.model.hf.tokenizer import resolve_placeholders

        ids, added = resolve_placeholders(self.language.hf, texts)
        for name, token in ids.items():
            # Not a field change visible to asdict(): the recipe keeps its string, the id is derived again.
            object.__setattr__(self.modalities[name], "resolved_placeholder_id", token)
        self.language.added_tokens.update(added)  # type: ignore[attr-defined]

    @property
    def placeholder_ids(self) -> dict[str, int]:
        return {name: m.token_id for name, m in self.modalities.items()}

    @property
    def module_names(self) -> list[str]:
        """Modalities in config order, then the language model."""
        return [*self.modalities, LANGUAGE_MODULE]
