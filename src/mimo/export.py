"""Consolidated weights as one safetensors file whose tensor names do not depend on the layout."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn


def export_safetensors(model: nn.Module, path: str | Path) -> Path:
    """Write every parameter and buffer of ``model`` (names like ``language.layers.0.attn.qkv.weight``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "mimo"})
    return path


def load_safetensors(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    return load_file(str(path))
