"""What the built-in encoders share to be sliceable: held layer ranges, blocks keyed by global index, checks."""

from __future__ import annotations

from torch import Tensor, nn

from mimo.model.layers import TransformerBlock

__all__ = ["build_encoder_blocks", "check_hidden", "check_layer_range", "missing_part_error"]


def check_layer_range(layers: range | None, num_layers: int, owner: str) -> range:
    """``layers`` (all layers when None) after checking it is a contiguous sub-range of ``range(num_layers)``."""
    layers = range(num_layers) if layers is None else layers
    if layers.step != 1 or layers.start < 0 or layers.stop > num_layers or layers.start > layers.stop:
        raise ValueError(f"{owner} layers must be a contiguous sub-range of range({num_layers}), got {layers}")
    return layers


def build_encoder_blocks(layers: range, hidden_size: int, num_heads: int, mlp_ratio: int) -> nn.ModuleDict:
    """Bidirectional blocks keyed by their global index, so a slice names ``layers.3`` as the full encoder does."""
    return nn.ModuleDict(
        {str(index): TransformerBlock(hidden_size, num_heads, mlp_ratio, causal=False) for index in layers}
    )


def check_hidden(hidden: Tensor, hidden_size: int, owner: str) -> None:
    """Raise ``ValueError`` unless ``hidden`` is ``[N, L, hidden_size]`` floating point."""
    if hidden.ndim != 3 or hidden.shape[2] != hidden_size or not hidden.is_floating_point():
        raise ValueError(
            f"{owner} hidden states must be floating point [N, L, {hidden_size}], "
            f"got {hidden.dtype} of shape {list(hidden.shape)}"
        )


def missing_part_error(owner: str, flag: str, action: str) -> ValueError:
    """The error raised when a slice is asked to do what a part it was built without does."""
    return ValueError(f"this {owner} slice was built with {flag}=False and cannot {action}")
