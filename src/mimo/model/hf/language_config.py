"""``model.language: {hf: DIR}``: a Hugging Face causal language model from a local folder.

Pure: sizes are read from the folder's ``config.json`` with ``json``, so a recipe is checked (and a pipeline
planned) before torch or transformers are imported. Placeholder tokens that the tokenizer lacks are added by
``MimoModelConfig``; ``vocab_size`` then counts them, and the model's embedding grows to match when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mimo.model.hf.folder import read_hf_config
from mimo.model.tp_sizes import check_divides

__all__ = ["HFLanguageConfig"]

_CAUSAL_LM_SUFFIX = "ForCausalLM"


@dataclass(kw_only=True)
class HFLanguageConfig:
    """A local Hugging Face causal LM with the ``model.embed_tokens / model.layers / model.norm / lm_head``
    structure (Llama, Qwen2, Qwen3, Mistral, SmolLM, ...)."""

    kind: Literal["hf"] = "hf"
    hf: str
    """Folder written by ``save_pretrained`` (config.json, safetensors, usually the tokenizer)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    def __post_init__(self) -> None:
        self.hf = str(Path(self.hf).expanduser())
        data = read_hf_config(self.hf, "model.language")
        architectures = data.get("architectures") or []
        if not any(str(a).endswith(_CAUSAL_LM_SUFFIX) for a in architectures):
            raise ValueError(
                f"model.language.hf={self.hf!r} holds {architectures or data.get('model_type', 'an unknown model')}, "
                f"not a causal language model (expected an architecture ending in {_CAUSAL_LM_SUFFIX!r})"
            )
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"model.language.hf={self.hf!r}: config.json lacks {missing}")
        # Not dataclass fields: asdict() (checkpoint meta) must give back only what the user wrote.
        object.__setattr__(self, "_hf_config", data)
        object.__setattr__(self, "added_tokens", {})

    @property
    def hf_config(self) -> dict[str, Any]:
        return self._hf_config  # type: ignore[attr-defined,no-any-return]

    @property
    def model_type(self) -> str:
        return str(self.hf_config.get("model_type", "unknown"))

    @property
    def base_vocab_size(self) -> int:
        """Rows of the saved embedding."""
        return int(self.hf_config["vocab_size"])

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding once the added placeholder tokens are in."""
        ids = list(self.added_tokens.values())  # type: ignore[attr-defined]
        return max([self.base_vocab_size, *(i + 1 for i in ids)])

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.hf_config["num_hidden_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.hf_config["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads (GQA); transformers' default is one per attention head."""
        return int(self.hf_config.get("num_key_value_heads") or self.num_heads)

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.hf_config.get("tie_word_embeddings", False))

    @property
    def max_seq_len(self) -> int:
        return int(self.hf_config.get("max_position_embeddings", 2**31 - 1))

    def check_tensor_parallel(self, tp: int, *, owner: str = "model.language") -> None:
        """ValueError (one line) unless ``tp`` ranks can split the attention heads, key/value heads and MLP width
        evenly. The vocabulary need not divide: DTensor shards an untied embedding and head unevenly."""
        sizes = {"num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads}
        if "intermediate_size" in self.hf_config:
            # Every Llama-style config.json saved by transformers has it; a hand-written one may not.
            sizes["intermediate_size"] = int(self.hf_config["intermediate_size"])
        check_divides(tp, sizes, owner)
