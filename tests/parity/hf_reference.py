"""The parity oracle for Hugging Face models: one process, transformers' own forward, the whole global batch.

Nothing of mimo's model code runs here: the language model is ``AutoModelForCausalLM``, the encoders are
``SiglipVisionModel`` / ``CLIPVisionModel`` / ``WhisperModel(...).encoder``, each called on the whole batch with
``output_hidden_states=True``; the projections are plain torch modules; the rows are spliced into
``lm.get_input_embeddings()(input_ids)`` with ``index_put`` and the model is called with ``inputs_embeds``, an
all-ones attention mask and the batch's position ids; the loss is ``cross_entropy`` in fp32 on the logits, masked
and averaged over the global batch. mimo supplies only the sample order (``MicrobatchLoader`` with one
microbatch over ``SyntheticMimoDataset``), ``collate``, and the projections' *initial* weights (mimo initialises
them from the seed; the values are copied, the modules are not used).

Weights come back under mimo's names: ``language.`` + the causal LM's state-dict name (both tied names),
``modalities.<m>.encoders.<e>.`` + the ``*VisionModel`` name or ``encoder.`` + the Whisper encoder's name, and
``modalities.<m>.projection.<i>.*``. Only the parts the features depend on belong to the model: the layers up to
``feature_layer``, ``post_layernorm`` only when it is applied, Whisper's final ``layer_norm`` only with the last
layer, never SigLIP's pooling ``head``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimo.config import MimoConfig, config_from_dict
from mimo.data import LOSS_MASK, MicrobatchLoader, SyntheticMimoDataset, collate
from mimo.model import MimoModel
from tests.parity.reference import ReferenceOptimizer, ReferenceResult

__all__ = ["hf_reference_run", "initial_weights"]

IGNORE_INDEX = -100


def initial_weights(raw_config: dict[str, Any]) -> dict[str, Tensor]:
    """mimo's whole model before training (HF weights from the folders, projections from the seed)."""
    cfg = config_from_dict(copy.deepcopy(raw_config))
    model = MimoModel(cfg.model, seed=cfg.train.seed)
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


class _Encoder:
    """One HF encoder of a modality: the loaded module, and the names (under mimo's prefix) of its used tensors."""

    def __init__(self, config: Any, prefix: str, dtype: torch.dtype) -> None:
        from transformers import CLIPVisionModel, SiglipVisionModel, WhisperModel

        assert config.dtype == "float32", "the reference needs mimo's model in fp32"
        self.config, self.dtype = config, dtype
        kwargs = {"dtype": dtype, "attn_implementation": config.attn_implementation}
        if config.tower_type == "whisper":
            self.kind = "audio"
            self.module: nn.Module = WhisperModel.from_pretrained(config.hf, **kwargs).encoder
            # HF's WhisperEncoder freezes its sinusoidal positions in __init__; from_pretrained (transformers 5.24)
            # hands the parameter back with requires_grad=True, so restore the model's own intent.
            self.module.embed_positions.requires_grad_(False)
            self.total_layers = self.module.config.encoder_layers
            self.prefix = f"{prefix}encoder."
        else:
            self.kind = "vision"
            model_class = SiglipVisionModel if config.tower_type == "siglip_vision_model" else CLIPVisionModel
            self.module = model_class.from_pretrained(config.hf, **kwargs)
            self.total_layers = self.module.config.num_hidden_layers
            self.prefix = prefix
        self.module.train()
        self.used_layers = config.feature_layer % (self.total_layers + 1)

    def is_used(self, name: str) -> bool:
        """Whether the features depend on HF tensor ``name`` (only those are mimo parameters)."""
        layer = re.match(r"(?:encoder\.)?layers\.(\d+)\.", name)
        if layer:
            return int(layer.group(1)) < self.used_layers
        if name.startswith("head."):  # SigLIP's attention-pooling head: never used for patch features
            return False
        if name.startswith("post_layernorm."):
            return self.config.post_layernorm
        if name.startswith("layer_norm."):  # Whisper's final norm: part of the last hidden state only
            return self.used_layers == self.total_layers
        return True

    def named_tensors(self) -> list[tuple[str, Tensor]]:
        return [(self.prefix + n, t) for n, t in self.module.state_dict(keep_vars=True).items() if self.is_used(n)]

    def rows_per_sample(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        """This encoder's output rows, one ``[rows, D]`` tensor per sample."""
        items = inputs["items_per_sample"].tolist()
        if self.kind == "vision":
            pixels = inputs["pixel_values"].to(self.dtype)
            if pixels.shape[0] == 0:
                return [torch.zeros(0, self.config.hidden_size, dtype=self.dtype) for _ in items]
            output = self.module(pixel_values=pixels, output_hidden_states=True)
            features = output.hidden_states[self.config.feature_layer]
            if self.config.post_layernorm:
                features = self.module.post_layernorm(features)
            if self.config.tower_type == "clip_vision_model" and self.config.drop_cls_token:
                features = features[:, 1:]
            per_item = list(features)  # [tokens, D] per image, in image order = sample order
        else:
            features, lengths = inputs["features"].to(self.dtype), inputs["lengths"]
            if features.shape[0] == 0:
                return [torch.zeros(0, self.config.hidden_size, dtype=self.dtype) for _ in items]
            max_frames = 2 * self.module.config.max_source_positions
            padded = torch.zeros(features.shape[0], max_frames, features.shape[2], dtype=self.dtype)
            for clip, length in enumerate(lengths.tolist()):
                padded[clip, :length] = features[clip, :length]
            output = self.module(padded.transpose(1, 2), output_hidden_states=True)
            hidden = output.hidden_states[self.config.feature_layer]
            per_item = [hidden[clip, : (length + 1) // 2] for clip, length in enumerate(lengths.tolist())]
        rows, start = [], 0
        for count in items:
            chunk = per_item[start : start + count]
            rows.append(torch.cat(chunk) if chunk else torch.zeros(0, self.config.hidden_size, dtype=self.dtype))
            start += count
        assert start == len(per_item), f"items_per_sample {items} for {len(per_item)} items"
        return rows


def _projection(kind: str, encoder_size: int, middle: int | None, language_size: int) -> nn.Sequential:
    if kind == "linear":
        return nn.Sequential(nn.Linear(encoder_size, language_size))
    middle = middle or language_size
    return nn.Sequential(nn.Linear(encoder_size, middle), nn.GELU(), nn.Linear(middle, language_size))


class HFReferenceModel:
    """The causal LM, the encoders and the projections, with every tensor under its mimo name.

    ``dtype``: float32 for the parity checks; float64 gives the exact result to tell rounding from a bug.
    """

    def __init__(self, cfg: MimoConfig, initial: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModelForCausalLM

        language = cfg.model.language
        assert getattr(language, "kind", None) == "hf" and language.dtype == "float32", "an fp32 HF language model"
        assert language.vocab_size == language.base_vocab_size, "the reference does not grow the vocabulary"
        self.lm = AutoModelForCausalLM.from_pretrained(
            language.hf, dtype=dtype, attn_implementation=language.attn_implementation
        )
        self.lm.train()
        self.encoders: dict[str, dict[str, _Encoder]] = {}
        self.projections: dict[str, nn.Sequential] = {}
        self.placeholders = {name: m.token_id for name, m in cfg.model.modalities.items()}
        for name, modality in cfg.model.modalities.items():
            prefix = f"modalities.{name}."
            self.encoders[name] = {
                enc: _Encoder(enc_cfg, f"{prefix}encoders.{enc}.", dtype) for enc, enc_cfg in modality.encoders.items()
            }
            projection = _projection(modality.projection.kind, modality.encoder_hidden_size,
                                     modality.projection.hidden_size, language.hidden_size).to(dtype)
            with torch.no_grad():
                for local, tensor in projection.state_dict(keep_vars=True).items():
                    tensor.copy_(initial[f"{prefix}projection.{local}"])
            self.projections[name] = projection
        for module in self._modules():
            for sub in module.modules():
                assert not isinstance(sub, nn.Dropout) or sub.p == 0, f"dropout {sub.p} in {type(module).__name__}"

    def _modules(self) -> list[nn.Module]:
        encoders = [e.module for encs in self.encoders.values() for e in encs.values()]
        return [self.lm, *encoders, *self.projections.values()]

    def named_tensors(self) -> list[tuple[str, Tensor]]:
        """Every tensor of the model under its mimo name; tied names appear twice with one tensor."""
        named = [(f"language.{n}", t) for n, t in self.lm.state_dict(keep_vars=True).items()]
        for name, encoders in self.encoders.items():
            for encoder in encoders.values():
                named += encoder.named_tensors()
            named += [(f"modalities.{name}.projection.{n}", t)
                      for n, t in self.projections[name].state_dict(keep_vars=True).items()]
        return named

    def trainable(self, freeze: list[str]) -> list[tuple[str, Tensor]]:
        """The distinct parameters that train: not frozen by HF, not under a frozen name."""
        frozen = tuple(("language." if f == "language" else f"modalities.{f}.") for f in freeze)
        seen, params = set(), []
        for name, tensor in self.named_tensors():
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad and not name.startswith(frozen):
                params.append((name, tensor))
        return params

    def weights(self) -> dict[str, Tensor]:
        return {name: t.detach().clone() for name, t in self.named_tensors()}

    def loss(self, batch: dict[str, Any]) -> Tensor:
        """The global per-token mean loss of ``batch`` (cross-entropy in fp32 or wider on the logits, masked)."""
        input_ids = batch["input_ids"]
        embeddings = self.lm.get_input_embeddings()(input_ids)
        for name, encoders in self.encoders.items():
            per_encoder = [e.rows_per_sample(batch["modality_inputs"][name][enc]) for enc, e in encoders.items()]
            rows = torch.cat([torch.cat(sample) for sample in zip(*per_encoder)])  # sample i: encoder 0, 1, ...
            positions = (input_ids == self.placeholders[name]).nonzero(as_tuple=True)  # row-major over [B, S]
            assert positions[0].numel() == rows.shape[0], f"{name}: {positions[0].numel()} placeholders, {rows.shape}"
            if rows.shape[0]:
                embeddings = embeddings.index_put(positions, self.projections[name](rows))
        logits = self.lm(inputs_embeds=embeddings, attention_mask=torch.ones_like(input_ids),
                         position_ids=batch["position_ids"], use_cache=False).logits
        labels = batch["labels"]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        per_token = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none",
                                    ignore_index=IGNORE_INDEX).view_as(labels)
        mask = batch[LOSS_MASK].to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum()


def hf_reference_run(
    raw_config: dict[str, Any], steps: int, *, initial: dict[str, Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> ReferenceResult:
    """Per-step losses and gradient norms, and the final weights (mimo names), of training with HF's forward.

    ``initial``: ``initial_weights(raw_config)`` when the caller has it already (only the projections are read).
    ``dtype=torch.float64`` computes the exact training (weights come back in float64): when an update check
    fails, compare mimo and the fp32 reference with it; if both are as far from it, the miss is fp32 rounding.
    """
    cfg = config_from_dict(copy.deepcopy(raw_config))
    model = HFReferenceModel(cfg, initial_weights(raw_config) if initial is None else initial, dtype)
    params = model.trainable(cfg.optim.freeze)
    optimizer = ReferenceOptimizer(cfg, params)
    dataset = SyntheticMimoDataset(cfg.data, cfg.model)
    order = MicrobatchLoader(dataset, global_batch_size=cfg.train.global_batch_size, num_microbatches=1,
                             seed=cfg.data.seed)
    losses, norms = [], []
    for _ in range(steps):
        (indices,) = order.step_indices()
        order.next_step()
        loss = model.loss(collate([dataset[i] for i in indices]))
        losses.append(loss.item())
        norms.append(optimizer.step(list(torch.autograd.grad(loss, [p for _, p in params], allow_unused=True))))
    return ReferenceResult(losses, model.weights(), norms)
