"""The whole multimodal model on one process: modalities -> splice -> language model -> per-token loss."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn

from mimo.model.compute import autocast
from mimo.model.configs import LANGUAGE_MODULE, MimoModelConfig
from mimo.model.modality import ModalitySubmodule
from mimo.model.providers import build_language_slice
from mimo.model.splice import check_tokens_per_sample, splice_embeddings
from mimo.model.types import EncoderOutput

__all__ = ["LANGUAGE_PREFIX", "MimoModel", "modality_prefix"]

LANGUAGE_PREFIX = f"{LANGUAGE_MODULE}."
"""Prefix of the language model's parameter names inside ``MimoModel`` (for ``init_parameters``)."""


def modality_prefix(name: str) -> str:
    """Prefix of modality ``name``'s parameter names inside ``MimoModel`` (for ``init_parameters``)."""
    return f"modalities.{name}."


class MimoModel(nn.Module):
    """One language model (``self.language``) and one ``ModalitySubmodule`` per modality (``self.modalities``).

    As a stage model (see ``mimo.training.mimo_step.StageModel``) it is the whole pipeline on one rank: it reads
    every field of the batch and returns the per-token losses.
    """

    is_loss_stage = True
    needs_data = True

    def __init__(self, config: MimoModelConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        # Each part is built under its full name, so a partial model built for one rank matches this one.
        self.language = build_language_slice(config.language, seed=seed, prefix=LANGUAGE_PREFIX)
        self.modalities = nn.ModuleDict(
            {
                name: ModalitySubmodule(
                    modality, config.language.hidden_size, seed=seed, prefix=modality_prefix(name)
                )
                for name, modality in config.modalities.items()
            }
        )
        self.placeholder_ids = config.placeholder_ids
        self.precisions: dict[str, str] = {}
        """Per module, ``fp32`` (the default) or ``bf16`` autocast around its forward (``compute.apply_compute``)."""
        self.row_gathers: dict[str, Any] = {}
        """Modality -> ``comm.colocated_rows.RowGather`` where this rank encodes only a part of its samples (a
        colocated encoder more data-parallel than the language model) and gathers every part's rows."""
        self.rows_always_in_graph: frozenset[str] = frozenset()
        """Modalities whose outputs join the loss's graph even with zero rows (adding an exact 0): an encoder
        sharded by FSDP2 must run its backward, and so its collectives, on every rank alike."""

    def _autocast(self, module: str) -> AbstractContextManager[Any]:
        return autocast(self.precisions.get(module, "fp32"), self)

    def encode(self, modality_inputs: dict[str, dict[str, dict[str, Tensor]]]) -> dict[str, EncoderOutput]:
        """Run each modality present in ``modality_inputs``; rows are projected to the LM hidden size."""
        unknown = [name for name in modality_inputs if name not in self.modalities]
        if unknown:
            raise ValueError(f"modality_inputs has unknown modality(ies) {unknown}; known: {list(self.modalities)}")
        encoded = {}
        for name, inputs in modality_inputs.items():
            gather = self.row_gathers.get(name)
            with self._autocast(name):
                encoded[name] = self.modalities[name](inputs if gather is None else gather.own_inputs(inputs))
            if gather is not None:
                encoded[name] = gather.gather(encoded[name])
        return encoded

    def forward(
        self,
        *,
        input_ids: Tensor,
        position_ids: Tensor,
        labels: Tensor,
        modality_inputs: dict[str, dict[str, dict[str, Tensor]]] | None = None,
        loss_mask: Tensor | None = None,
    ) -> Tensor:
        """Per-token loss ``[B, S]``; ``loss_mask`` is accepted for the caller's convenience and not applied."""
        del loss_mask  # The loss function applies it, so that it sees every token's loss.
        combined = self.embed(input_ids=input_ids, position_ids=position_ids, modality_inputs=modality_inputs)
        with self._autocast(LANGUAGE_MODULE):
            return self.language(combined, position_ids=position_ids, labels=labels)

    def embed(
        self, *, input_ids: Tensor, position_ids: Tensor, modality_inputs: dict[str, dict[str, dict[str, Tensor]]] | None
    ) -> Tensor:
        """Text embeddings ``[B, S, H]`` with every modality's projected rows spliced at its placeholders."""
        encoded = self.encode(modality_inputs or {})
        for name, output in encoded.items():
            check_tokens_per_sample(name, input_ids, self.placeholder_ids[name], output.tokens_per_sample)
        with self._autocast(LANGUAGE_MODULE):
            text = self.language.embed(input_ids, position_ids)
            rows = {name: output.embeddings for name, output in encoded.items()}
            combined = splice_embeddings(text, input_ids, rows, self.placeholder_ids)
            for name in self.rows_always_in_graph:
                if name in rows and rows[name].shape[0] == 0:
                    combined = combined + rows[name].sum().to(combined.dtype)
            return combined

    def logits(
        self, *, input_ids: Tensor, position_ids: Tensor,
        modality_inputs: dict[str, dict[str, dict[str, Tensor]]] | None = None,
    ) -> Tensor:
        """Next-token logits ``[B, S, vocab]`` (for generation and inspection; training uses ``forward``)."""
        combined = self.embed(input_ids=input_ids, position_ids=position_ids, modality_inputs=modality_inputs)
        with self._autocast(LANGUAGE_MODULE):
            return self.language.logits(combined, position_ids=position_ids)
