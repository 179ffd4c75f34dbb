"""Placeholder tokens named by string (``placeholder: "<image>"``), resolved with the language model's tokenizer.

A string the tokenizer already knows as one token keeps its id; one it lacks is added after the tokenizer's
last id, as transformers' ``add_tokens`` would number it, so the data pipeline and an exported tokenizer agree
with the grown embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_tokenizer", "resolve_placeholders"]


def load_tokenizer(folder: str) -> Any:
    """The folder's tokenizer (transformers ``AutoTokenizer``), or ValueError when it has none."""
    from transformers import AutoTokenizer  # Heavy: imported only for Hugging Face models.

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{folder} has no usable tokenizer ({first_line})") from None


def resolve_placeholders(folder: str, texts: dict[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """Ids of each modality's placeholder string, and the strings that had to be added with their new ids."""
    for modality, text in texts.items():
        if not text or any(ch.isspace() for ch in text):
            raise ValueError(
                f"modalities.{modality}.placeholder={text!r} cannot be a single token: it must be non-empty and "
                "contain no whitespace (e.g. '<image>')"
            )
    if not (Path(folder) / "tokenizer_config.json").is_file() and not (Path(folder) / "tokenizer.json").is_file():
        raise ValueError(
            f"placeholders by string ({', '.join(repr(t) for t in texts.values())}) need the language model's "
            f"tokenizer, and {folder} has none; give placeholder_id instead"
        )
    tokenizer = load_tokenizer(folder)
    vocab = tokenizer.get_vocab()
    ids: dict[str, int] = {}
    added: dict[str, int] = {}
    for modality, text in texts.items():
        if text in vocab:
            ids[modality] = int(vocab[text])
            continue
        if text not in added:
            added[text] = len(tokenizer) + len(added)
        ids[modality] = added[text]
    return ids, added
