"""``encoders: {name: {kind: hf, hf: DIR}}``: a Hugging Face vision tower (SigLIP, CLIP) or Whisper encoder.

Pure: sizes are read from the folder's ``config.json`` with ``json``, so a recipe is checked (and a pipeline
planned) before torch or transformers are imported. The properties mirror ``VisionEncoderConfig`` and
``AudioEncoderConfig`` so that data code treats a built-in and an HF encoder alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mimo.model.hf.folder import read_hf_config
from mimo.model.tp_sizes import check_divides

__all__ = ["HFEncoderConfig", "SUPPORTED_MODEL_TYPES"]

# Full two-tower folders (model_type "siglip" / "clip") keep the vision tower's sizes under "vision_config".
_VISION_TOWER_OF = {
    "siglip_vision_model": "siglip_vision_model",
    "siglip": "siglip_vision_model",
    "clip_vision_model": "clip_vision_model",
    "clip": "clip_vision_model",
}
_AUDIO_TYPES = ("whisper",)
SUPPORTED_MODEL_TYPES = (*_VISION_TOWER_OF, *_AUDIO_TYPES)

# transformers writes only non-default values into a nested sub-config (and Hub configs often omit defaults),
# so a missing key means the config class's default. These equal transformers' own defaults (a test checks).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "siglip_vision_model": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "clip_vision_model": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "image_size": 224,
        "patch_size": 32,
        "num_channels": 3,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "whisper": {
        "d_model": 384,
        "encoder_layers": 4,
        "num_mel_bins": 80,
        "max_source_positions": 1500,
        "encoder_attention_heads": 6,
        "encoder_ffn_dim": 1536,
    },
}

_WHISPER_DOWNSAMPLE = 2
"""Whisper's conv2 has stride 2 (conv1 has stride 1): one token per two mel frames."""


@dataclass(kw_only=True)
class HFEncoderConfig:
    """A local Hugging Face encoder: SigLIP / CLIP vision tower (``*_vision_model`` or full two-tower folder)
    or the encoder of a Whisper model. Only the layers up to ``feature_layer`` are ever built."""

    kind: Literal["hf"] = "hf"
    hf: str
    """Folder written by ``save_pretrained`` (config.json and safetensors)."""
    feature_layer: int = -1
    """Index into HF's ``hidden_states`` tuple: 0 = embeddings output, k = output of layer k-1, -1 = last layer
    (LLaVA's ``vision_feature_layer``). Whisper's last entry includes its final ``layer_norm``, as in HF."""
    post_layernorm: bool = False
    """Apply the SigLIP/CLIP ``post_layernorm`` to the features; only with the last layer (feature_layer -1)."""
    drop_cls_token: bool = True
    """CLIP puts a class token before the patches; drop it (SigLIP has none, Whisper ignores this)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    def __post_init__(self) -> None:
        if self.kind != "hf":
            raise ValueError(f"HFEncoderConfig.kind must be 'hf', got {self.kind!r}")
        if not isinstance(self.hf, (str, Path)):
            raise ValueError(f"hf encoder hf must be a folder path, got {self.hf!r}")
        self.hf = str(Path(self.hf).expanduser())
        data = read_hf_config(self.hf, "encoder")
        model_type = data.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"hf encoder folder {self.hf!r} holds model_type {model_type!r}; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        tower_type = _VISION_TOWER_OF.get(model_type, model_type)
        tower = (data.get("vision_config") or {}) if model_type in ("siglip", "clip") else data
        # Not dataclass fields: asdict() (checkpoint meta) must give back only what the user wrote.
        object.__setattr__(self, "_model_type", model_type)
        object.__setattr__(self, "_tower_type", tower_type)
        object.__setattr__(self, "_tower", {**_DEFAULTS[tower_type], **tower})
        self._check_options()

    def _check_options(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"hf encoder dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"hf encoder attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}"
            )
        total = self.hf_num_layers
        layer = self.feature_layer
        if not isinstance(layer, int) or isinstance(layer, bool) or not -(total + 1) <= layer <= total:
            raise ValueError(
                f"hf encoder feature_layer={layer!r} is out of range for {self.hf!r}: its hidden_states has "
                f"{total + 1} entries (embeddings + {total} layers), so use an index in [{-(total + 1)}, {total}]"
            )
        if self.post_layernorm and self.input_kind != "vision":
            raise ValueError(f"hf encoder post_layernorm=True applies only to SigLIP/CLIP, not {self.model_type!r}")
        if self.post_layernorm and self.num_layers != total:
            raise ValueError(
                f"hf encoder post_layernorm=True needs the last layer (feature_layer -1), got "
                f"feature_layer={layer}: post_layernorm was trained on the last layer's output only"
            )

    # --- what the folder holds -------------------------------------------------------------------------------

    @property
    def model_type(self) -> str:
        """``model_type`` of the folder's config.json (e.g. "clip" for a full CLIP folder)."""
        return self._model_type  # type: ignore[attr-defined,no-any-return]

    @property
    def tower_type(self) -> str:
        """The encoder actually used: "siglip_vision_model", "clip_vision_model" or "whisper"."""
        return self._tower_type  # type: ignore[attr-defined,no-any-return]

    @property
    def input_kind(self) -> Literal["vision", "audio"]:
        return "audio" if self.tower_type in _AUDIO_TYPES else "vision"

    @property
    def hidden_size(self) -> int:
        return int(self._tower_value("d_model" if self.input_kind == "audio" else "hidden_size"))

    @property
    def hf_num_layers(self) -> int:
        """Transformer layers of the saved encoder (only ``num_layers`` of them are built)."""
        return int(self._tower_value("encoder_layers" if self.input_kind == "audio" else "num_hidden_layers"))

    @property
    def num_layers(self) -> int:
        """Layers actually built: those up to ``feature_layer`` (its index into hidden_states, made positive)."""
        return self.feature_layer % (self.hf_num_layers + 1)

    @property
    def num_heads(self) -> int:
        """Attention heads per layer."""
        return int(self._tower_value(self._split_keys[0]))

    @property
    def mlp_size(self) -> int:
        """Width of each layer's MLP (``fc1``'s outputs)."""
        return int(self._tower_value(self._split_keys[1]))

    @property
    def _split_keys(self) -> tuple[str, str]:
        """config.json's names of the sizes tensor parallelism splits: heads, MLP width."""
        if self.input_kind == "audio":
            return "encoder_attention_heads", "encoder_ffn_dim"
        return "num_attention_heads", "intermediate_size"

    @property
    def uses_last_layer(self) -> bool:
        """Whether the features are the last layer's (then Whisper applies its final layer_norm, as HF does)."""
        return self.num_layers == self.hf_num_layers

    def check_tensor_parallel(self, tp: int, *, owner: str | None = None) -> None:
        """ValueError (one line) unless ``tp`` ranks can split the attention heads and the MLP width evenly.

        ``owner`` names the encoder in the message (e.g. ``model.modalities.images.encoders.vit``); by default
        the folder.
        """
        heads, mlp = self._split_keys
        check_divides(tp, {heads: self.num_heads, mlp: self.mlp_size}, owner or f"hf encoder {self.hf!r}")

    # --- vision ----------------------------------------------------------------------------------------------

    @property
    def has_cls_token(self) -> bool:
        """Whether the tower puts a class token before the patches (CLIP does, SigLIP does not)."""
        return self.tower_type == "clip_vision_model"

    @property
    def image_size(self) -> int:
        return int(self._vision_value("image_size"))

    @property
    def patch_size(self) -> int:
        return int(self._vision_value("patch_size"))

    @property
    def num_channels(self) -> int:
        return int(self._vision_value("num_channels"))

    @property
    def tokens_per_image(self) -> int:
        """Rows per image: the patches, plus CLIP's class token when it is kept."""
        patches = (self.image_size // self.patch_size) ** 2
        return patches + int(self.has_cls_token and not self.drop_cls_token)

    # --- audio (Whisper encoder) -----------------------------------------------------------------------------

    @property
    def num_mel_bins(self) -> int:
        return int(self._audio_value("num_mel_bins"))

    @property
    def max_tokens(self) -> int:
        """Whisper's position table size: every clip is encoded as this many tokens."""
        return int(self._audio_value("max_source_positions"))

    @property
    def max_frames(self) -> int:
        """Input frames Whisper's conv stack needs, exactly (clips are padded to it)."""
        return self.max_tokens * self.downsample

    @property
    def downsample(self) -> int:
        self._audio_value("num_mel_bins")  # an AttributeError on a vision config, like the other audio sizes
        return _WHISPER_DOWNSAMPLE

    def tokens_for_frames(self, num_frames: int) -> int:
        """Output tokens kept for a clip of ``num_frames`` valid frames."""
        if num_frames < 1 or num_frames > self.max_frames:
            raise ValueError(f"audio clip length {num_frames} must be in [1, max_frames={self.max_frames}]")
        return math.ceil(num_frames / self.downsample)

    # --- helpers ---------------------------------------------------------------------------------------------

    def _tower_value(self, key: str) -> Any:
        return self._tower[key]  # type: ignore[attr-defined]

    def _vision_value(self, key: str) -> Any:
        # AttributeError (not ValueError) so that hasattr() tells a vision config from an audio one.
        if self.input_kind != "vision":
            raise AttributeError(f"{self.model_type!r} is an audio encoder and has no vision sizes")
        return self._tower_value(key)

    def _audio_value(self, key: str) -> Any:
        if self.input_kind != "audio":
            raise AttributeError(f"{self.model_type!r} is a vision encoder and has no audio sizes")
        return self._tower_value(key)
