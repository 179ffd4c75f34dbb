"""One modality: its encoders, whose rows are merged per sample, then one projection to the LM hidden size.

A pipeline stage may hold a slice of a modality: every encoder's blocks of one layer range, the encoders'
embeddings only on the first stage, their final norms and the projection only on the last. The per-encoder
state between the parts is ``(hidden, aux)`` as the encoders' ``embed`` returns it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mimo.model.configs import ModalityConfig, ProjectionConfig
from mimo.model.encoder_layers import missing_part_error
from mimo.model.init import init_parameters
from mimo.model.providers import build_encoder_slice
from mimo.model.types import EncoderOutput

__all__ = ["EncoderStates", "ModalitySubmodule", "build_projection", "merge_per_sample"]

EncoderStates = dict[str, tuple[Tensor, dict[str, Tensor]]]
"""``{encoder name: (hidden [N, L, D], aux)}`` between the embedding, the blocks and the final norm."""


def build_projection(config: ProjectionConfig, encoder_hidden_size: int, language_hidden_size: int) -> nn.Module:
    """``linear``: one Linear; ``mlp``: Linear -> GELU -> Linear (LLaVA's projector), middle width as configured."""
    if config.kind == "linear":
        return nn.Sequential(nn.Linear(encoder_hidden_size, language_hidden_size))
    middle = config.hidden_size or language_hidden_size
    return nn.Sequential(
        nn.Linear(encoder_hidden_size, middle), nn.GELU(), nn.Linear(middle, language_hidden_size)
    )


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
    """Encoders (``self.encoders``) + projection (``self.projection``) into the language model's hidden size.

    ``layers`` maps an encoder name to the range of its blocks this slice holds (all blocks when absent);
    ``has_head`` brings the encoders' final norms and the projection. ``forward`` = ``embed`` -> ``run_layers``
    -> ``finish``. ``prefix`` is the modality's name in the whole model (``modalities.images.``): built-in parts
    are initialised from ``(seed, full name)``, encoders of other families bring their own weights.
    """

    def __init__(
        self,
        config: ModalityConfig,
        language_hidden_size: int,
        *,
        layers: dict[str, range] | None = None,
        has_embedding: bool = True,
        has_head: bool = True,
        seed: int = 0,
        prefix: str = "",
    ) -> None:
        super().__init__()
        layers = layers or {}
        unknown = [name for name in layers if name not in config.encoders]
        if unknown:
            raise ValueError(
                f"layer ranges for unknown encoder(s) {unknown}; this modality has {list(config.encoders)}"
            )
        self.config = config
        self.encoders = nn.ModuleDict(
            {
                name: build_encoder_slice(
                    enc, layers=layers.get(name), has_embedding=has_embedding, has_head=has_head, seed=seed,
                    prefix=f"{prefix}encoders.{name}.",
                )
                for name, enc in config.encoders.items()
            }
        )
        self.projection = (
            build_projection(config.projection, config.encoder_hidden_size, language_hidden_size) if has_head else None
        )
        if self.projection is not None:
            init_parameters(self.projection, seed=seed, prefix=f"{prefix}projection.")

    def embed(self, encoder_inputs: dict[str, dict[str, Tensor]]) -> EncoderStates:
        """Check that every encoder (and only those) has inputs with ``items_per_sample``, and embed them."""
        missing = [name for name in self.encoders if name not in encoder_inputs]
        if missing:
            raise ValueError(f"no inputs for encoder(s) {missing}; got inputs for {sorted(encoder_inputs)}")
        unknown = [name for name in encoder_inputs if name not in self.encoders]
        if unknown:
            raise ValueError(f"inputs for unknown encoder(s) {unknown}; this modality has {list(self.encoders)}")
        states = {}
        for name, encoder in self.encoders.items():
            if "items_per_sample" not in encoder_inputs[name]:
                raise ValueError(f"inputs of encoder {name!r} lack 'items_per_sample': {sorted(encoder_inputs[name])}")
            states[name] = encoder.embed(**encoder_inputs[name])
        return states

    def run_layers(self, states: EncoderStates) -> EncoderStates:
        """Run every encoder's held blocks on its hidden states."""
        return {name: (encoder.run_layers(*states[name]), states[name][1]) for name, encoder in self.encoders.items()}

    def merge(self, states: EncoderStates) -> EncoderOutput:
        """Each encoder's final norm and valid rows, merged per sample (not projected)."""
        return merge_per_sample([encoder.finish(*states[name]) for name, encoder in self.encoders.items()])

    def project(self, merged: EncoderOutput) -> EncoderOutput:
        """Project merged rows to ``[sum_tokens, language_hidden_size]``."""
        if self.projection is None:
            raise missing_part_error("ModalitySubmodule", "has_head", "project")
        return EncoderOutput(self.projection(merged.embeddings), merged.tokens_per_sample)

    def finish(self, states: EncoderStates) -> EncoderOutput:
        """Final norms, merge per sample and projection: what the modality's last stage emits."""
        return self.project(self.merge(states))

    def encode(self, encoder_inputs: dict[str, dict[str, Tensor]]) -> EncoderOutput:
        """Run every encoder on its inputs and merge the rows per sample (not projected)."""
        return self.merge(self.run_layers(self.embed(encoder_inputs)))

    def forward(self, encoder_inputs: dict[str, dict[str, Tensor]]) -> EncoderOutput:
        """Encode, merge per sample and project to ``[sum_tokens, language_hidden_size]``."""
        return self.project(self.encode(encoder_inputs))
