"""Build the slice of a Hugging Face encoder that one pipeline stage holds, whichever kind the folder is."""

from __future__ import annotations

from torch import nn

from mimo.model.hf.audio import HFAudioEncoder
from mimo.model.hf.encoder_config import HFEncoderConfig
from mimo.model.hf.vision import HFVisionEncoder
from mimo.model.hf.weights import WeightFiles

__all__ = ["build_hf_encoder"]


def build_hf_encoder(
    config: HFEncoderConfig,
    *,
    layers: range | None = None,
    has_embedding: bool = True,
    has_head: bool = True,
    files: WeightFiles | None = None,
) -> nn.Module:
    """The ``HFVisionEncoder`` or ``HFAudioEncoder`` slice for ``config``, its own weights read from the folder.

    ``layers`` are global indices among the ``config.num_layers`` layers built (None = all); ``files`` lets
    several slices share one index of the folder (or a test see what was read).
    """
    encoder_class = HFVisionEncoder if config.input_kind == "vision" else HFAudioEncoder
    return encoder_class(config, layers=layers, has_embedding=has_embedding, has_head=has_head, files=files)
