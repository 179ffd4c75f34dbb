"""What a mimo weights file says about itself: the metadata every export writes, and the check that refuses files
whose built-in attention weights predate the head-major fused ``qkv`` (``mimo.model.layers.TransformerBlock``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["EXPORT_METADATA", "check_qkv_layout"]

EXPORT_METADATA = {"format": "mimo", "qkv": "head-major"}
"""Written into every exported file: ``qkv`` says how the built-in blocks' fused projection is laid out (files
from before it was head-major lack it, and their built-in attention weights must not be read as head-major)."""


def check_qkv_layout(path: str | Path, names: Iterable[str]) -> None:
    """ValueError (one line) for a mimo file whose built-in ``qkv`` weights predate the head-major layout."""
    from safetensors import safe_open

    if not any(name.endswith(".qkv.weight") for name in names):
        return
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("qkv") != EXPORT_METADATA["qkv"]:
        raise ValueError(f"{path}: its built-in attention weights (qkv) are laid out as [q | k | v], from a mimo "
                         "before the head-major layout; export it again with this version or retrain")
