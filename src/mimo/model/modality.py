"""One modality: its encoders, whose rows are merged per sample, then one projection to the LM hidden size."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mimo.model.audio import AudioEncoder
from mimo.model.configs import AudioEncoderConfig, EncoderConfig, ModalityConfig, VisionEncoderConfig
from mimo.model.types import EncoderOutput
from mimo.model.vision import VisionEncoder

__all__ = ["ModalitySubmodule", "build_encoder", "merge_per_sample"]


def build_encoder(config: EncoderConfig) -> nn.Module:
    """The built-in encoder for an encoder config."""
    if isinstance(config, VisionEncoderConfig):
        return VisionEncoder(config)
    if isinstance(config, AudioEncoderConfig):
        return AudioEncoder(config)
    raise ValueError(f"unsupported encoder config type {type(config).__name__}")


def merge_per_sample(outputs: list[EncoderOutput]) -> EncoderOutput:
    """Merge several sample-major outputs so that sample i's rows are encoder 0's, then encoder 1's, ...

    Example with 2 samples: encoder A rows [a0 a0 | a1], encoder B rows [b0 | b1 b1]
    -> [a0 a0 b0 | a1 b1 b1], tokens_per_sample [3, 3].
    """
    assert outputs, "merge_per_sample needs at least one output"
    if len(outputs) == 1:
        return outputs[0]
    batch_sizes = [out.tokens_per_sample.shape[0] for out in outputs]
    if len(set(batch_sizes)) > 1:
        raise ValueError(f"encoders of one modality disagree on the number of samples: {batch_sizes}")
    device = outputs[0].embeddings.device
    samples = torch.arange(batch_sizes[0], device=device)
    # Sort rows by (sample, encoder); the stable sort keeps each encoder's rows of a sample in order.
    keys = torch.cat(
        [
            torch.repeat_interleave(samples, out.tokens_per_sample.to(device)) * len(outputs) + index
            for index, out in enumerate(outputs)
        ]
    )
    order = torch.sort(keys, stable=True).indices
    embeddings = torch.cat([out.embeddings for out in outputs])[order]
    tokens_per_sample = torch.stack([out.tokens_per_sample.to(torch.long) for out in outputs]).sum(0)
    return EncoderOutput(embeddings, tokens_per_sample)


class ModalitySubmodule(nn.Module):
    """Encoders (``self.encoders``) + projection (``self.projection``) into the language model's hidden size."""

    def __init__(self, config: ModalityConfig, language_hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({name: build_encoder(enc) for name, enc in config.encoders.items()})
        self.projection = nn.Sequential(
            nn.Linear(config.encoder_hidden_size, language_hidden_size),
            nn.GELU(),
            nn.Linear(language_hidden_size, language_hidden_size),
        )

    def encode(self, encoder_inputs: dict[str, dict[str, Tensor]]) -> EncoderOutput:
        """Run every encoder on its inputs and merge the rows per sample (not projected)."""
        missing = [name for name in self.encoders if name not in encoder_inputs]
        if missing:
            raise ValueError(f"no inputs for encoder(s) {missing}; got inputs for {sorted(encoder_inputs)}")
        unknown = [name for name in encoder_inputs if name not in self.encoders]
        if unknown:
            raise ValueError(f"inputs for unknown encoder(s) {unknown}; this modality has {list(self.encoders)}")
        outputs = []
        for name, encoder in self.encoders.items():
            if "items_per_sample" not in encoder_inputs[name]:
                raise ValueError(f"inputs of encoder {name!r} lack 'items_per_sample': {sorted(encoder_inputs[name])}")
            outputs.append(encoder(**encoder_inputs[name]))
        return merge_per_sample(outputs)

    def forward(self, encoder_inputs: dict[str, dict[str, Tensor]]) -> EncoderOutput:
        """Encode, merge per sample and project to ``[sum_tokens, language_hidden_size]``."""
        merged = self.encode(encoder_inputs)
        return EncoderOutput(self.projection(merged.embeddings), merged.tokens_per_sample)
