"""One pipeline stage of one modality (encoders + projection); with pp > 1 every stage runs its own layers.

What travels between the stages of a modality, per encoder: its hidden states ``[N, L, D]`` under the
*activation key* (the modality's name, or ``"<modality>:<encoder>"`` when the modality has several encoders,
split in lockstep), and the encoder's ``aux`` entries under ``"<activation key>/<aux key>"``. Keys with a ``/``
are metadata: integer tensors that travel with the activation and get no gradient. The last stage emits
``{modality: rows [sum_tokens, H_lm], "<modality>/tokens_per_sample": [B] long}``.

Parameter names equal the full ``MimoModel``'s (``modalities.images.encoders.vit.layers.3...``) and are
initialised from the same ``(seed, name)``, so stage weights equal the full model's.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mimo.model.compute import autocast, to_compute_dtype, to_parameter_dtype
from mimo.model.configs import MimoModelConfig
from mimo.activation_keys import counts_key, metadata_key
from mimo.model.mimo_model import modality_prefix
from mimo.model.modality import EncoderStates, ModalitySubmodule
from mimo.parallel.stage_split import split_layers

__all__ = ["ModalityStage", "activation_key", "split_encoder_layers"]


def activation_key(modality: str, encoder: str, encoders: list[str]) -> str:
    """Key of ``encoder``'s hidden states between two stages of ``modality`` (which has ``encoders``)."""
    return modality if len(encoders) == 1 else f"{modality}:{encoder}"


def split_encoder_layers(
    config: MimoModelConfig, name: str, num_stages: int, layers_per_stage: list[int] | None = None
) -> list[dict[str, range]]:
    """Per stage, the layer range of every encoder of modality ``name``; each encoder is split on its own."""
    ranges = {}
    for encoder, encoder_config in config.modalities[name].encoders.items():
        try:
            ranges[encoder] = split_layers(encoder_config.num_layers, num_stages, layers_per_stage)
        except ValueError as error:
            raise ValueError(f"modality {name!r}, encoder {encoder!r}: {error}") from error
    return [{encoder: split[stage] for encoder, split in ranges.items()} for stage in range(num_stages)]


class ModalityStage(nn.Module):
    """Stage ``stage`` of ``num_stages`` of modality ``name``: stage 0 embeds, the last one projects.

    ``layers_per_stage`` applies to every encoder of the modality (each must have that many layers in all);
    without it each encoder's layers are spread as evenly as possible.
    """

    is_loss_stage = False

    def __init__(
        self,
        config: MimoModelConfig,
        name: str,
        *,
        stage: int = 0,
        num_stages: int = 1,
        layers_per_stage: list[int] | None = None,
        seed: int,
    ) -> None:
        super().__init__()
        if name not in config.modalities:
            raise ValueError(f"unknown modality {name!r}; the model has {list(config.modalities)}")
        split = split_encoder_layers(config, name, num_stages, layers_per_stage)
        if not 0 <= stage < num_stages:
            raise ValueError(f"stage must be in [0, {num_stages}) for {num_stages} stages, got {stage}")
        self.module_name = name
        self.stage, self.num_stages = stage, num_stages
        self.layer_ranges: dict[str, range] = split[stage]
        submodule = ModalitySubmodule(
            config.modalities[name],
            config.language.hidden_size,
            layers=self.layer_ranges,
            has_embedding=self.is_first_stage,
            has_head=self.is_last_stage,
            seed=seed,
            prefix=modality_prefix(name),
        )
        self.modalities = nn.ModuleDict({name: submodule})
        self.precisions: dict[str, str] = {}
        """``{name: "bf16"}`` runs this stage under bf16 autocast (``compute.apply_compute``); default fp32."""

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.num_stages - 1

    @property
    def needs_data(self) -> bool:
        """Only the first stage reads the batch (the modality inputs); later stages read the previous stage."""
        return self.is_first_stage

    def forward(
        self, *, inputs: dict[str, Tensor], modality_inputs: dict[str, Any] | None = None, **unused: Any
    ) -> dict[str, Tensor]:
        """Stage 0 embeds ``modality_inputs[name]``, later stages take ``inputs``; then the held layers run.

        Under bf16 the outputs travel in bf16 and a later stage casts its input back to its weights' dtype."""
        precision = self.precisions.get(self.module_name, "fp32")
        with autocast(precision, self):
            outputs = self._forward(inputs, modality_inputs, precision)
        return to_compute_dtype(outputs, precision)

    def _forward(
        self, inputs: dict[str, Tensor], modality_inputs: dict[str, Any] | None, precision: str
    ) -> dict[str, Tensor]:
        name = self.module_name
        submodule = self.modalities[name]
        if self.is_first_stage:
            if modality_inputs is None or name not in modality_inputs:
                raise ValueError(f"the {name!r} encoder stage got no inputs for modality {name!r}")
            states = submodule.embed(modality_inputs[name])
        else:
            states = {
                encoder: (to_parameter_dtype(hidden, precision, submodule.encoders[encoder]), aux)
                for encoder, (hidden, aux) in self._unpack(inputs).items()
            }
        states = submodule.run_layers(states)
        if not self.is_last_stage:
            return self._pack(states)
        output = submodule.finish(states)
        return {name: output.embeddings, counts_key(name): output.tokens_per_sample}

    def _activation_keys(self) -> dict[str, str]:
        encoders = list(self.modalities[self.module_name].encoders)
        return {encoder: activation_key(self.module_name, encoder, encoders) for encoder in encoders}

    def _pack(self, states: EncoderStates) -> dict[str, Tensor]:
        """``{activation key: hidden, "<activation key>/<aux key>": aux tensor, ...}`` for the next stage."""
        outputs = {}
        for encoder, key in self._activation_keys().items():
            hidden, aux = states[encoder]
            outputs[key] = hidden
            for aux_key, value in aux.items():
                assert not value.is_floating_point(), f"aux {aux_key!r} of encoder {encoder!r} must not carry grad"
                outputs[metadata_key(key, aux_key)] = value
        return outputs

    def _unpack(self, inputs: dict[str, Tensor]) -> EncoderStates:
        """The per-encoder ``(hidden, aux)`` that the previous stage packed; ValueError naming missing keys."""
        encoders = self.modalities[self.module_name].encoders
        states, missing = {}, []
        for encoder, key in self._activation_keys().items():
            aux_keys = encoders[encoder].aux_keys
            missing += [k for k in (key, *(metadata_key(key, a) for a in aux_keys)) if k not in inputs]
            if key in inputs:
                states[encoder] = (inputs[key], {a: inputs[metadata_key(key, a)] for a in aux_keys if metadata_key(key, a) in inputs})
        if missing:
            raise ValueError(
                f"{self.module_name!r} stage {self.stage} needs inputs {missing} from stage {self.stage - 1}; "
                f"got {sorted(inputs)}"
            )
        return states
