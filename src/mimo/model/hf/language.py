"""One pipeline stage of a Hugging Face causal language model, with the whole model's parameter names.

A stage holds ``model.embed_tokens`` (first stage), ``model.layers.<global index>`` for its layers,
``model.norm`` + ``lm_head`` (last stage) and, on every stage, ``model.rotary_emb``: rotary embeddings live on
the model, not on the layers, and have no saved weights. The union of the stages' state dicts is the HF model's
own, so a checkpoint or an export reloads with ``from_pretrained``.

Each layer gets the mask transformers itself builds (``create_causal_mask``, or the sliding-window one for the
layers whose ``layer_types`` say so), from the padding mask and the position ids, so eager and sdpa attention
agree with the HF model's forward. With tied embeddings and ``pp > 1`` the first and the last stage each hold a
copy; the trainer sums their gradients so the copies stay identical.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from mimo.model.compute import fp32_region, run_layer
from mimo.model.encoder_layers import check_layer_range, missing_part_error
from mimo.model.hf.language_config import HFLanguageConfig
from mimo.model.hf.tensor_parallel import decoder_layer_plan, parallelize, prefixed, tp_size
from mimo.model.hf.weights import WeightFiles, empty_parameters, materialize

__all__ = ["HFLanguageSlice", "IGNORE_INDEX", "check_structure", "per_token_loss"]

IGNORE_INDEX = -100
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_EXPECTED = ("model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb", "lm_head")


def _load_hf_config(config: HFLanguageConfig):  # -> transformers.PretrainedConfig
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(config.hf)
    hf_config._attn_implementation = config.attn_implementation
    hf_config.use_cache = False
    return hf_config


def _build_skeleton(config: HFLanguageConfig, hf_config) -> nn.Module:  # noqa: ANN001
    """The whole HF model with every parameter on the meta device (no memory, no reads)."""
    import transformers

    architecture = hf_config.architectures[0]
    model_class = getattr(transformers, architecture, None)
    if model_class is None:
        raise ValueError(f"model.language.hf={config.hf!r}: transformers has no class {architecture!r}")
    with empty_parameters():
        model = model_class(hf_config)
    found = [name for name in _EXPECTED if _has_path(model, name)]
    if len(found) != len(_EXPECTED):
        top = sorted(name for name, _ in model.named_children())
        inner = sorted(name for name, _ in model.model.named_children()) if hasattr(model, "model") else []
        raise ValueError(
            f"model.language.hf={config.hf!r} ({architecture}) lacks the expected structure "
            f"{', '.join(_EXPECTED)}; found {top} and model.{inner}"
        )
    return model


def check_structure(config: HFLanguageConfig) -> None:
    """ValueError unless the folder's architecture has the structure a stage split needs (meta device: free)."""
    _build_skeleton(config, _load_hf_config(config))


def _has_path(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


class HFLanguageSlice(nn.Module):
    """Layers ``layers`` of the HF causal LM in ``config.hf``, with the embedding and/or the head."""

    checkpoint_every: int = 0
    """Recompute the layers whose global index is a multiple of this in the backward (0: none; see
    ``mimo.model.compute``)."""

    passes_position_ids = True
    """Every stage needs the position ids (rotary embeddings, masks): the first stage sends them along."""

    def __init__(
        self, config: HFLanguageConfig, *, layers: range | None = None, has_embedding: bool = True,
        has_head: bool = True, device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_indices = check_layer_range(layers, config.num_layers, "language model")
        self.hf_config = _load_hf_config(config)
        whole = _build_skeleton(config, self.hf_config)
        self.model = nn.Module()
        self.model.embed_tokens = whole.model.embed_tokens if has_embedding else None
        self.model.layers = nn.ModuleDict({str(i): whole.model.layers[i] for i in self.layer_indices})
        self.model.norm = whole.model.norm if has_head else None
        self.model.rotary_emb = whole.model.rotary_emb
        self.lm_head = whole.lm_head if has_head else None
        del whole
        files = WeightFiles(config.hf)
        materialize(self, files, source_name=self._source_name(files), dtype=_DTYPES[config.dtype], device=device)
        self.model.rotary_emb.to(device)
        self._grow_vocabulary()
        if self.is_tied_here:
            self.lm_head.weight = self.model.embed_tokens.weight  # type: ignore[union-attr]
        self.files = files
        # One copy of the tied embedding on each end of a pipeline: the trainer sums their gradients.
        tied_apart = config.tie_word_embeddings and has_embedding != has_head
        self.tied_parameters: dict[str, str] = (
            {("model.embed_tokens.weight" if has_embedding else "lm_head.weight"): "model.embed_tokens.weight"}
            if tied_apart else {}
        )
        self._sliding = getattr(self.hf_config, "layer_types", None) or []

    def _source_name(self, files: WeightFiles):  # noqa: ANN202
        tied = self.config.tie_word_embeddings

        def source(name: str) -> str:
            # A tied model's file usually has no lm_head.weight: the head is the embedding.
            if name == "lm_head.weight" and tied and name not in files:
                return "model.embed_tokens.weight"
            return name

        return source

    @property
    def has_embedding(self) -> bool:
        return self.model.embed_tokens is not None

    @property
    def has_head(self) -> bool:
        return self.lm_head is not None

    @property
    def is_tied_here(self) -> bool:
        """Both tied copies live on this slice: they are one parameter, as in the HF model."""
        return self.config.tie_word_embeddings and self.has_embedding and self.has_head

    @torch.no_grad()
    def _grow_vocabulary(self) -> None:
        """Rows for the placeholder tokens the tokenizer lacked: the mean of the existing rows (the same on
        every rank and stage, and what LLaVA-style recipes use)."""
        extra = self.config.vocab_size - self.config.base_vocab_size
        if extra <= 0:
            return
        for owner, name in ((self.model.embed_tokens, "weight"), (self.lm_head, "weight")):
            if owner is None or (owner is self.lm_head and self.is_tied_here):
                continue
            old = getattr(owner, name)
            new_rows = old.mean(dim=0, keepdim=True).expand(extra, -1)
            setattr(owner, name, nn.Parameter(torch.cat([old, new_rows]), requires_grad=old.requires_grad))
        if self.model.embed_tokens is not None:
            self.model.embed_tokens.num_embeddings = self.config.vocab_size
        if self.lm_head is not None:
            self.lm_head.out_features = self.config.vocab_size
        self.hf_config.vocab_size = self.config.vocab_size

    def apply_tensor_parallel(self, mesh: DeviceMesh) -> None:
        """Split this slice over the 1-D ``("tp",)`` ``mesh`` in place (see ``mimo.model.hf.tensor_parallel``).

        Each layer's attention heads and MLP are split. Untied, the embedding is split by vocabulary rows
        (``RowwiseParallel``: each rank looks up its rows, an all-reduce sums them) and the head by vocabulary
        columns (``ColwiseParallel``, logits all-gathered): both are DTensor parameters, ``Shard(0)``, uneven when
        tp does not divide the vocabulary. Tied (here or across pipeline stages), both stay plain and replicated,
        so the tie and the trainer's summing of the tied copies' gradients work as without tp. Inputs and outputs
        stay plain tensors, the same on every rank of the mesh.
        """
        tp = tp_size(self, mesh, "model.language")
        self.config.check_tensor_parallel(tp)
        plan: dict[str, ParallelStyle] = {}
        for index in self.layer_indices:
            plan.update(prefixed(f"model.layers.{index}", decoder_layer_plan()))
        if not self.config.tie_word_embeddings:
            if self.has_embedding:
                plan["model.embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
            if self.has_head:
                plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
        parallelize(self, mesh, plan=plan, attentions=[layer.self_attn for layer in self.model.layers.values()])

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """``[B, S]`` token ids -> ``[B, S, H]`` (positions enter through the rotary embedding, per layer)."""
        del position_ids
        if self.model.embed_tokens is None:
            raise missing_part_error("HFLanguageSlice", "has_embedding", "embed")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size={self.config.vocab_size}), got "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}]")
        return self.model.embed_tokens(input_ids)

    def masks(self, hidden: Tensor, position_ids: Tensor, padding_mask: Tensor | None = None) -> dict[str, object]:
        """The attention masks transformers builds for this batch, by layer type."""
        from transformers.masking_utils import (
            create_causal_mask,
            create_sliding_window_causal_mask,
            find_packed_sequence_indices,
            packed_sequence_mask_function,
        )

        if padding_mask is None:
            # Right padding: with a causal mask no real token attends to a pad, so all-ones is exact.
            padding_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        kwargs = {"config": self.hf_config, "inputs_embeds": hidden, "attention_mask": padding_mask,
                  "cache": None, "position_ids": position_ids}
        packed = find_packed_sequence_indices(position_ids)
        if packed is not None:
            # Packed rows: transformers' own rule keeps attention inside each sequence.
            kwargs["and_mask_function"] = packed_sequence_mask_function(packed)
        masks = {"full_attention": create_causal_mask(**kwargs)}
        if "sliding_attention" in self._sliding:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return masks

    def forward(self, hidden: Tensor, *, position_ids: Tensor | None = None, labels: Tensor | None = None,
                padding_mask: Tensor | None = None) -> Tensor:
        """Run the held layers on ``[B, S, H]``; with the head, return per-token losses ``[B, S]`` (fp32)."""
        hidden = self._run_layers(hidden, position_ids, padding_mask)
        if self.lm_head is None:
            return hidden
        if labels is None:
            raise ValueError("the HFLanguageSlice with the head needs labels to return per-token losses")
        if tuple(labels.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"labels must be [B, S] = {list(hidden.shape[:2])}, got {list(labels.shape)}")
        return per_token_loss(self.head_logits(hidden), labels)

    def logits(self, hidden: Tensor, *, position_ids: Tensor | None = None,
               padding_mask: Tensor | None = None) -> Tensor:
        """Run the held layers, then the final norm and the head: ``[B, S, vocab]`` (for generation)."""
        return self.head_logits(self._run_layers(hidden, position_ids, padding_mask))

    def head_logits(self, hidden: Tensor) -> Tensor:
        """Final norm and head on hidden states that went through every layer."""
        if self.lm_head is None or self.model.norm is None:
            raise missing_part_error("HFLanguageSlice", "has_head", "compute logits")
        return self.lm_head(self.model.norm(hidden))

    def _run_layers(self, hidden: Tensor, position_ids: Tensor | None, padding_mask: Tensor | None) -> Tensor:
        if position_ids is None:
            raise ValueError("HFLanguageSlice needs position_ids on every stage (rotary embeddings)")
        masks = self.masks(hidden, position_ids, padding_mask)
        position_embeddings = self.model.rotary_emb(hidden, position_ids)
        for index, layer in self.model.layers.items():
            layer_type = self._sliding[int(index)] if self._sliding else "full_attention"
            hidden = run_layer(layer, int(index), self.checkpoint_every, hidden, attention_mask=masks[layer_type],
                               position_ids=position_ids, position_embeddings=position_embeddings, use_cache=False)
        return hidden


def per_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per token in fp32, 0 where ``labels == -100``.

    ``logsumexp - target logit`` keeps only the logits for the backward (``cross_entropy`` would also keep a
    full ``log_softmax`` copy); in fp32 ``.float()`` is free.
    """
    logits = logits.float()
    # fp32 whatever precision the layers ran in: no op of the loss may be autocast to bf16.
    with fp32_region(logits.device.type):
        return _per_token_loss(logits, labels)


def _per_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    valid = labels != IGNORE_INDEX
    targets = torch.where(valid, labels, torch.zeros_like(labels)).to(torch.long)
    if targets.numel() and int(targets.max()) >= logits.shape[-1]:
        raise ValueError(f"label {int(targets.max())} is out of range [0, vocab_size={logits.shape[-1]})")
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    losses = torch.logsumexp(logits, dim=-1) - target_logits
    return torch.where(valid, losses, torch.zeros_like(losses))
