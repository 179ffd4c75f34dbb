"""The part of the model one rank holds: one pipeline stage of one module.

Stage outputs are ``{name: tensor}`` dicts. An encoder's last stage emits ``{modality: rows}`` plus the metadata
entry ``"<modality>/tokens_per_sample"``: keys with a ``/`` describe their module's activation, travel with it and
carry no gradient. The language model's last stage returns per-token losses ``[B, S]``.

Parameter names equal those of the full ``MimoModel`` (``language.layers.3...``, ``modalities.images...``), so
weights, checkpoints and exports do not depend on the layout.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mimo.model.compute import autocast, to_compute_dtype, to_parameter_dtype
from mimo.model.configs import LANGUAGE_MODULE, MimoModelConfig
from mimo.activation_keys import counts_key, metadata_key
from mimo.model.mimo_model import LANGUAGE_PREFIX
from mimo.model.modality_stage import ModalityStage
from mimo.model.providers import build_language_slice
from mimo.model.splice import check_tokens_per_sample, splice_embeddings

POSITION_IDS_KEY = metadata_key(LANGUAGE_MODULE, "position_ids")
"""Position ids travel with the hidden states when every stage needs them (rotary embeddings)."""

__all__ = ["LanguageStage", "ModalityStage"]


class LanguageStage(nn.Module):
    """Stage ``stage`` of ``num_stages`` of the language model, holding the layers in ``layers``."""

    def __init__(self, config: MimoModelConfig, *, stage: int, num_stages: int, layers: range, seed: int) -> None:
        super().__init__()
        self.module_name = LANGUAGE_MODULE
        self.stage, self.num_stages = stage, num_stages
        self.language = build_language_slice(
            config.language, layers=layers, has_embedding=stage == 0, has_head=stage == num_stages - 1, seed=seed,
            prefix=LANGUAGE_PREFIX,
        )
        self.placeholder_ids = config.placeholder_ids
        self.precisions: dict[str, str] = {}
        """``{"language": "bf16"}`` runs this stage under bf16 autocast (``compute.apply_compute``); default fp32."""

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_loss_stage(self) -> bool:
        return self.stage == self.num_stages - 1

    @property
    def needs_data(self) -> bool:
        """The first stage reads tokens, the last reads labels and the loss mask; middle stages read nothing."""
        return self.is_first_stage or self.is_loss_stage

    def forward(
        self,
        *,
        inputs: dict[str, Tensor],
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        **unused: Any,
    ) -> Tensor | dict[str, Tensor]:
        precision = self.precisions.get(LANGUAGE_MODULE, "fp32")
        with autocast(precision, self):
            output = self._forward(inputs, input_ids, position_ids, labels, precision)
        # Activations travel to the next stage in the compute dtype (the loss stays fp32).
        return output if self.is_loss_stage else to_compute_dtype(output, precision)

    def _forward(
        self, inputs: dict[str, Tensor], input_ids: Tensor | None, position_ids: Tensor | None,
        labels: Tensor | None, precision: str,
    ) -> Tensor | dict[str, Tensor]:
        if self.is_first_stage:
            if input_ids is None or position_ids is None:
                raise ValueError("the first language stage needs input_ids and position_ids")
            rows = {}
            for name in self.placeholder_ids:
                if name in inputs:
                    check_tokens_per_sample(name, input_ids, self.placeholder_ids[name], inputs[counts_key(name)])
                    rows[name] = inputs[name]
            hidden = splice_embeddings(self.language.embed(input_ids, position_ids), input_ids, rows, self.placeholder_ids)
        else:
            hidden = to_parameter_dtype(inputs[LANGUAGE_MODULE], precision, self)
            position_ids = inputs.get(POSITION_IDS_KEY)
        output = self.language(hidden, position_ids=position_ids, labels=labels)
        if self.is_loss_stage:
            return output
        if getattr(self.language, "passes_position_ids", False):
            assert position_ids is not None
            return {LANGUAGE_MODULE: output, POSITION_IDS_KEY: position_ids}
        return {LANGUAGE_MODULE: output}
